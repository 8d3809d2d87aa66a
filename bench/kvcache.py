"""What a decode step pays for its KV cache: the in-place cache (buffers bound as the graph's past and
present, GroupQueryAttention appends to them) against the copying one (past in, past + new out).

    .venv/bin/python -m bench.kvcache [--models smollm2-135m gemma3-270m] [--contexts 128 512 1536] [--batches 1 16]

For each model, context length L (tokens already in the cache) and batch B (rows, each holding L
tokens), both runners of the same export decode --steps steps from the same cache, in alternating
order, --repeats times; the figure is the median milliseconds per step. `copied MB/step` is what the
copying path moves that the in-place one does not: the whole cache, read and written once per step.
Results: bench/results/kvcache.{json,md}.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import textwrap
import time
from pathlib import Path

from bench.machine import Busy, machine_info, wait_quiet
from bench.paths import ROOT

MODELS = ("smollm2-135m", "gemma3-270m")
PATHS = ("in place", "copying")


def step_ms(runner, cache, tokens: list[int], steps: int) -> float:
    """Median ms of `steps` decode steps from a private copy of `cache` (the in-place path writes into
    its buffers; the copy keeps every run starting from the same state)."""
    cache = cache.keep(list(range(cache.batch)))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        logits, cache = runner.decode(tokens, cache)
        times.append(time.perf_counter() - start)
        tokens = [int(t) for t in logits.argmax(axis=1)]
    return statistics.median(times[1:]) * 1e3  # the first step may move the buffers: not a steady step


def bench_model(name: str, args: argparse.Namespace) -> list[dict]:
    from server.engine import Engine, Runner

    engine = Engine.load(args.repository, name, args.threads)
    in_place = engine.runner
    if not in_place.share_buffer:
        raise SystemExit(f"{name}'s graph has no GroupQueryAttention: its cache is always copied")
    copying = Runner(args.repository / name / engine.manifest.onnx_file, args.threads, share_buffer=False)
    text = Path(textwrap.__file__).read_text()  # real code (the standard library's), repeated as needed
    ids = (engine.prompter.encode(text) * 8)[: max(args.contexts)]
    rows = []
    for length in args.contexts:
        logits, one = in_place.prefill(ids[:length])
        first = int(logits[-1].argmax())
        for batch in args.batches:
            cache = one.repeat(batch)
            per_token = sum(v[0].nbytes for v in cache.past().values()) // cache.length
            times: dict[str, list[float]] = {p: [] for p in PATHS}
            others = []
            for round_ in range(args.repeats):
                for path in PATHS if round_ % 2 == 0 else PATHS[::-1]:
                    gc.collect()
                    wait_quiet(args.quiet_wait)
                    gauge = Busy()
                    runner = in_place if path == "in place" else copying
                    times[path].append(step_ms(runner, cache, [first] * batch, args.steps))
                    others.append(gauge.others())
            row = {
                "model": name,
                "context": length,
                "batch": batch,
                "ms_per_step": {p: statistics.median(t) for p, t in times.items()},
                "runs_ms": times,
                "copied_mb_per_step": 2 * per_token * length * batch / 1e6,
                "others_cores_median": statistics.median(others),
            }
            row["copying_over_in_place"] = row["ms_per_step"]["copying"] / row["ms_per_step"]["in place"]
            rows.append(row)
            print(
                f"[{name}] L={length:5d} B={batch:3d}  in place {row['ms_per_step']['in place']:7.2f} ms  "
                f"copying {row['ms_per_step']['copying']:7.2f} ms  ({row['copying_over_in_place']:.2f}x, "
                f"{row['copied_mb_per_step']:.0f} MB copied/step; others {row['others_cores_median']:.2f} cores)",
                flush=True,
            )
        del one
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kvcache", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--contexts", nargs="+", type=int, default=[128, 512, 1536])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quiet-wait", type=float, default=10.0)
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    missing = [m for m in args.models if not (args.repository / m / "manifest.json").is_file()]
    if missing:
        parser.error(f"export {', '.join(missing)} first (slipstream export NAME)")
    info = machine_info(1)
    rows = [row for name in args.models for row in bench_model(name, args)]
    args.out.mkdir(parents=True, exist_ok=True)
    config = vars(args) | {"repository": str(args.repository), "out": str(args.out)}
    (args.out / "kvcache.json").write_text(json.dumps({"machine": info, "config": config, "rows": rows}, indent=2) + "\n")
    lines = [
        f"Decode step, KV cache in place vs copied; {args.threads} threads; median of {args.repeats} runs of "
        f"{args.steps} steps; {info['cpu']}; {info['date']}.",
        "",
        "| model | context | batch | in place ms/step | copying ms/step | copying / in place | copied MB/step | others' CPU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['context']} | {r['batch']} | {r['ms_per_step']['in place']:.2f} | "
            f"{r['ms_per_step']['copying']:.2f} | **{r['copying_over_in_place']:.2f}x** | "
            f"{r['copied_mb_per_step']:.0f} | {r['others_cores_median']:.2f} |"
        )
    (args.out / "kvcache.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
