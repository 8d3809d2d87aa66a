"""Where a decode step's time goes: ONNX Runtime's own profiler over the engine's graph.

    .venv/bin/python -m bench.profile [--models smollm2-135m gemma3-270m] [--variants "" -int4] [--batches 1 16]

For each export and batch size: a 64-token prompt is prefilled and copied into the batch's rows,
--warmup steps are decoded unprofiled in effect (their events are dropped), then --steps steps are
profiled. It reports the wall time per step, the share of each operator type in the kernels' time,
the kernels' total against the wall time (the rest: ONNX Runtime's dispatch and our Python between
steps), and for MatMulNBits (the weight-only quantised matmuls) the multiply-adds per second and the
weight bytes per second it reached: set against the machine's copy bandwidth (bench.suite), they say
whether a step is bound by memory or by the kernel's arithmetic. Writes bench/results/profile.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from bench.machine import machine_info
from bench.paths import ROOT

PROMPT_TOKENS = 64


def matmul_nbits_shapes(onnx_file: Path) -> dict[str, tuple[int, int, int]]:
    """MatMulNBits node name -> (K, N, bytes of its weights, scales and zero points)."""
    import onnx

    model = onnx.load(str(onnx_file), load_external_data=False)
    sizes = {}
    for init in model.graph.initializer:
        count = int(np.prod(init.dims)) if init.dims else 1
        sizes[init.name] = count * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
    out = {}
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: a.i for a in node.attribute}
            out[node.name] = (attrs["K"], attrs["N"], sum(sizes.get(i, 0) for i in node.input[1:]))
    return out


def profile(onnx_file: Path, threads: int, batch: int, warmup: int, steps: int) -> dict:
    from server.engine import Runner

    runner = Runner(onnx_file, threads, profile_prefix=os.path.join(tempfile.mkdtemp(), "ort"))
    ids = list(range(1000, 1000 + PROMPT_TOKENS))
    logits, cache = runner.prefill(ids)
    cache = cache.repeat(batch) if batch > 1 else cache
    tokens = [int(logits[-1].argmax())] * batch
    for _ in range(warmup):
        logits, cache = runner.decode(tokens, cache)
        tokens = [int(t) for t in logits.argmax(-1)]
    started = time.perf_counter()
    for _ in range(steps):
        logits, cache = runner.decode(tokens, cache)
        tokens = [int(t) for t in logits.argmax(-1)]
    wall = (time.perf_counter() - started) / steps
    trace = json.loads(Path(runner.session.end_profiling()).read_text())
    # the profiler's timestamps count from the session's start: find it from the last model runs
    runs = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
    measured = runs[-steps:]
    windows = [(e["ts"], e["ts"] + e["dur"]) for e in measured]
    by_op: dict[str, float] = defaultdict(float)
    by_node: dict[str, float] = defaultdict(float)
    nodes = 0
    for e in trace:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        if not any(a <= e["ts"] < b for a, b in windows):
            continue
        by_op[e["args"]["op_name"]] += e["dur"]
        by_node[e["name"].removesuffix("_kernel_time")] += e["dur"]
        nodes += 1
    kernels_us = sum(by_op.values())
    run_us = sum(b - a for a, b in windows)
    shapes = matmul_nbits_shapes(onnx_file)
    mm_us = by_op.get("MatMulNBits", 0.0)
    macs = sum(k * n for k, n, _ in shapes.values()) * batch * steps
    weight_bytes = sum(b for _, _, b in shapes.values()) * steps
    return {
        "batch": batch,
        "steps": steps,
        "wall_ms_per_step": 1000 * wall,
        "tok_s": batch / wall,
        "run_ms_per_step": run_us / 1000 / steps,
        "kernels_ms_per_step": kernels_us / 1000 / steps,
        "nodes_per_step": nodes / steps,
        "outside_run_share": 1 - run_us / 1e6 / (wall * steps),
        "share": {op: t / kernels_us for op, t in sorted(by_op.items(), key=lambda kv: -kv[1])},
        "matmul_nbits": {
            "nodes": len(shapes),
            "ms_per_step": mm_us / 1000 / steps,
            "gmac_s": macs / (mm_us / 1e6) / 1e9 if mm_us else None,
            "weight_gb_s": weight_bytes / (mm_us / 1e6) / 1e9 if mm_us else None,
            "weight_mb": sum(b for _, _, b in shapes.values()) / 1e6,
            "slowest": sorted(((n, t / steps / 1000) for n, t in by_node.items() if n in shapes), key=lambda x: -x[1])[:3],
        },
        "started_after_warmup": warmup,
    }


def markdown(results: dict, info: dict) -> str:
    lines = [
        "# Decode step profile (ONNX Runtime profiler)",
        "",
        f"{info.get('cpu', '?')}, {info.get('cores', '?')} cores; prompt {PROMPT_TOKENS} tokens copied into each row.",
        "",
        "| export | batch | ms/step | tok/s | kernels / step | outside ORT run | nodes | MatMulNBits share | "
        "MatMulNBits GMAC/s | MatMulNBits weight GB/s | next ops |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        for r in rows:
            mm = r["matmul_nbits"]
            rest = ", ".join(f"{op} {100 * s:.0f}%" for op, s in list(r["share"].items())[1:4])
            lines.append(
                f"| {name} | {r['batch']} | {r['wall_ms_per_step']:.1f} | {r['tok_s']:.0f} | {r['kernels_ms_per_step']:.1f} ms | "
                f"{100 * r['outside_run_share']:.0f}% | {r['nodes_per_step']:.0f} | {100 * r['share'].get('MatMulNBits', 0):.0f}% | "
                f"{mm['gmac_s'] or 0:.1f} | {mm['weight_gb_s'] or 0:.1f} | {rest} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--variants", nargs="+", default=["", "-int4"], help='store name suffixes ("": int8)')
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    from server.models import store

    results: dict[str, list[dict]] = {}
    for model in args.models:
        for variant in args.variants:
            name = model + variant
            if not (args.repository / name / "manifest.json").is_file():
                print(f"{name}: not exported (slipstream export {model}{' --precision int4' if variant else ''}); skipped")
                continue
            onnx_file = store.model_dir(args.repository, name) / store.read_manifest(args.repository, name).onnx_file
            for batch in args.batches:
                row = profile(onnx_file, args.threads, batch, args.warmup, args.steps)
                results.setdefault(name, []).append(row)
                mm = row["matmul_nbits"]
                print(
                    f"{name} batch {batch}: {row['wall_ms_per_step']:.1f} ms/step, MatMulNBits "
                    f"{100 * row['share'].get('MatMulNBits', 0):.0f}% at {mm['gmac_s'] or 0:.1f} GMAC/s, "
                    f"{mm['weight_gb_s'] or 0:.1f} GB/s of weights",
                    flush=True,
                )
    info = machine_info(0)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "profile.json").write_text(json.dumps({"machine": info, "results": results}, indent=2) + "\n")
    (args.out / "profile.md").write_text(markdown(results, info))
    print(f"results: {args.out / 'profile.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
