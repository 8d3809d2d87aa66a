"""Every speed figure of the engine against its peers, in one process tree and one run.

    .venv/bin/python -m bench.suite [--models smollm2-135m gemma3-270m] [--repeats 3] [--tokens 64]

Paths, per bundled model (all on --threads cores, the same prompt ids):

- `engine int8`, `engine int4`, `engine gguf` (the GGUF's own blocks): server.engine in this process on
  the model_repository exports;
- `server int8`: a `slipstream serve` child on 127.0.0.1, over HTTP through client.api (streaming);
- `optimum`: optimum's ORTModelForCausalLM.generate on its own INT8 export (bench.decode's, cached);
- `torch`: transformers' generate on the fp32 checkpoint imported from the GGUF (cached);
- `llama.cpp Q8_0`, `llama.cpp Q4`: llama-cpp-python on a Q8_0 GGUF requantised from the shipped one
  (cached) and on the shipped GGUF itself (SmolLM2 Q4_1, Gemma-3 Q4_K_M). Optional: without the
  package those rows say so.

Cases: TTFT at prompt lengths 32, 512 and 1536 tokens; single-stream greedy decode tok/s (EOS ignored,
exactly --tokens tokens); n = 1, 4, 16, 64 samples of one prompt at temperature 0.8 (aggregate tok/s;
llama-cpp-python has no batch: its n samples run one after another; llama.cpp's own server with n
slots is bench.samples); 1, 4 and 16 concurrent
streaming clients on the server (aggregate tok/s, p50/p95 latency); the HTTP + SSE overhead over the
engine for a 128-token completion; the server's RSS (each export's, loaded alone); the machine's memory bandwidth, against which
single-stream decode is set (the floor: bytes of weights per token / bandwidth). Protocol: a discarded
warm-up per path and case, then --repeats rounds in alternating order, each run after a wait for a
quiet machine. Results: bench/results/suite.{json,md,png}; the targets of issue 4 are checked at the end.
The paths are in bench/suite_paths.py, the cases and their protocol in bench/suite_cases.py, the
report in bench/suite_report.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bench import results as results_file
from bench.machine import machine_info, memory_bandwidth_gb_s
from bench.paths import ROOT
from bench.suite_cases import bench_model
from bench.suite_report import markdown, plot, ratios

MODELS = ("smollm2-135m", "gemma3-270m")


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every server benchmark shares: clients' requests, threads, quiet wait, where."""
    parser.add_argument("--requests", type=int, default=2, help="requests each concurrent client sends")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quiet-wait", type=float, default=10.0)
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per request (decode, samples, clients)")
    add_run_flags(parser)
    args = parser.parse_args(argv)

    info = machine_info(args.threads)
    info["bandwidth_gb_s"] = memory_bandwidth_gb_s(args.threads)
    print(f"memory bandwidth: {info['bandwidth_gb_s']:.1f} GB/s (copy, {args.threads} threads)", flush=True)
    results = {}
    for name in args.models:
        results[name] = bench_model(name, args)
        results[name]["ratios"] = ratios(results[name], info["bandwidth_gb_s"], name)
    config = vars(args) | {"repository": str(args.repository), "out": str(args.out)}
    results_file.write(
        args.out,
        "suite",
        {"machine": info, "config": config, "models": results},
        markdown(results, info, args),
        lambda path: plot(results, path),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
