"""The API with the embedded engine against the API in front of Triton (the same engine in Triton's
python backend), on the same model, in one run.

    .venv/bin/python -m bench.triton [--model smollm2-135m] [--repeats 5] [--tokens 128]

Both APIs are `slipstream serve` children on 127.0.0.1 with the same threads; the Triton one talks
gRPC to a tritonserver child (`slipstream triton start`'s launcher) serving the same
model_repository. Cases, in alternating order after a warm-up: one streaming client (TTFT and
end-to-end latency of a --tokens completion, greedy, EOS ignored) and --clients concurrent streaming
clients (aggregate tok/s, p50/p95 latency). Only one of the two engines decodes at a time (the
other is idle), so they do not compete for the cores. Results: bench/results/triton.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

from bench import api_pair
from bench.machine import machine_info
from bench.suite import add_run_flags
from bench.suite_paths import Server

EMBEDDED, TRITON = "embedded", "triton"


def main(argv: list[str] | None = None) -> int:
    from server.engine import Prompter
    from testkit.triton_process import start_triton

    parser = argparse.ArgumentParser(prog="python -m bench.triton", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--clients", type=int, default=16)
    add_run_flags(parser)
    args = parser.parse_args(argv)

    prompter = Prompter(args.repository, args.model)
    ids = (prompter.encode(Path(textwrap.__file__).read_text()))[:128]
    triton = start_triton(args.repository, [args.model], timeout=300)
    servers: dict[str, Server] = {}
    try:
        servers[EMBEDDED] = Server(args.repository, args.model, args.threads)
        servers[TRITON] = Server(
            args.repository,
            args.model,
            args.threads,
            env={"SLIPSTREAM_BACKEND": "triton", "SLIPSTREAM_TRITON_URL": json.dumps([triton.grpc_url])},
        )
        single, many = api_pair.measure(args, servers, ids)
    finally:
        for server in servers.values():
            server.close()
        triton.stop()
    result = {
        "single": single,
        "clients": many,
        "triton_extra_latency_single": single[TRITON]["total_s_median"] / single[EMBEDDED]["total_s_median"] - 1,
        "triton_extra_ttft_single": single[TRITON]["ttft_ms_median"] / single[EMBEDDED]["ttft_ms_median"] - 1,
        "triton_over_embedded_clients_tok_s": many[TRITON]["aggregate_tok_s"] / many[EMBEDDED]["aggregate_tok_s"],
    }
    info = machine_info(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    config = vars(args) | {"repository": str(args.repository), "out": str(args.out)}
    (args.out / "triton.json").write_text(json.dumps({"machine": info, "config": config, "result": result}, indent=2) + "\n")
    lines = [
        f"Embedded engine vs Triton backend, {args.model}, {args.tokens}-token completions, {args.repeats} rounds, "
        f"{args.threads} threads; {info['cpu']}; {info['date']}.",
        "",
    ]
    lines += api_pair.table(single, many, args.clients)
    lines += [
        "",
        f"Triton's extra latency at one client: {result['triton_extra_latency_single'] * 100:+.1f}% end to end, "
        f"{result['triton_extra_ttft_single'] * 100:+.1f}% TTFT (target: at most +10%); at {args.clients} clients "
        f"Triton's throughput is {result['triton_over_embedded_clients_tok_s']:.2f}x the embedded one's.",
    ]
    (args.out / "triton.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
