"""Probe (not a test): what the GGUF block forms of server.models.gguf_blocks cost in MatMulNBits.

One K x N weight (Gemma-3-270M's 640 x 2048 MLP shape), 2 intra-op threads, M = 1 (decode) and 16,
per form: 4-bit symmetric blocks of 32 (Q4_0's form); the same plus the offsets correction (Q4_1, Q4_K);
8-bit blocks of 32 (Q8_0, Q5_0, Q5_1, Q5_K); 8-bit blocks of 16 (Q6_K); each at accuracy_level 0 (fp32
activations) and 4 (int8 activations where MLAS has the kernel); and plain fp32 MatMul. Prints a table
with the CPU's name and how much CPU the rest of the shared machine took meanwhile; writes
bench/results/gguf_blocks.{json,md,png}.

    .venv/bin/python -m bench.gguf_blocks_probe
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from bench import results as results_file
from bench.machine import Busy, wait_quiet
from bench.paths import ROOT
from server.models.gguf_blocks import Blocks, matmul_nodes

K, N, THREADS, MS = 640, 2048, 2, (1, 16)
CALL_BUDGET_S, ROUNDS = 0.9, 3  # seconds per form and M, over interleaved rounds: the probe takes about 25 s


def _blocks(bits: int, block: int, offsets: bool, rng: np.random.Generator) -> Blocks:
    codes = rng.integers(0, 256, (N, K // block, block * bits // 8), dtype=np.uint8)
    scales = rng.uniform(1e-3, 1e-2, (N, K // block)).astype(np.float32)
    extra = rng.uniform(-0.05, 0.0, (N, K // 32)).astype(np.float32) if offsets else None
    zero = 0 if offsets and bits == 4 else 1 << (bits - 1)
    return Blocks(bits, block, codes, scales, extra, "probe", zero)


def _session(nodes: list[onnx.NodeProto], tensors: list[TensorProto]) -> ort.InferenceSession:
    graph = helper.make_graph(
        nodes,
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", N])],
        tensors,
    )
    model = helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _batch(session: ort.InferenceSession, x: np.ndarray) -> int:
    """Calls that take about 5 ms, after a warm-up (prepacked weights, thread pool spun up)."""
    for _ in range(20):
        session.run(None, {"x": x})
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < 0.02:
        session.run(None, {"x": x})
        calls += 1
    return max(1, int(calls * 0.005 / (time.perf_counter() - start)))


def _fastest_us(session: ort.InferenceSession, x: np.ndarray, batch: int, seconds: float) -> float:
    """The fastest batch's per-call time: others' load on the shared machine only ever adds time."""
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        for _ in range(batch):
            session.run(None, {"x": x})
        best = min(best, (time.perf_counter() - t0) / batch)
    return best * 1e6


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main() -> None:
    rng = np.random.default_rng(0)
    forms = {
        "4-bit sym, block 32": _blocks(4, 32, False, rng),
        "4-bit + offsets correction": _blocks(4, 32, True, rng),
        "8-bit, block 32": _blocks(8, 32, False, rng),
        "8-bit, block 16": _blocks(8, 16, False, rng),
    }
    sessions: dict[str, ort.InferenceSession] = {}
    for label, blocks in forms.items():
        for level in (0, 4):
            sessions[f"{label}, acc {level}"] = _session(*matmul_nodes("x", "y", "w", blocks, accuracy_level=level))
    weight = numpy_helper.from_array(rng.standard_normal((K, N)).astype(np.float32), "w")
    sessions["fp32 MatMul"] = _session([helper.make_node("MatMul", ["x", "w"], ["y"])], [weight])

    waited = wait_quiet(10.0)
    gauge = Busy()
    inputs = {m: np.random.default_rng(m).standard_normal((m, K)).astype(np.float32) for m in MS}
    cases = [(label, m, session, _batch(session, inputs[m])) for label, session in sessions.items() for m in MS]
    best: dict[tuple[str, int], float] = {}
    for _ in range(ROUNDS):  # interleaved, so a burst of someone else's work hits one round, not one form
        for label, m, session, batch in cases:
            us = _fastest_us(session, inputs[m], batch, CALL_BUDGET_S / ROUNDS)
            best[label, m] = min(best.get((label, m), us), us)
    rows = [(label, [best[label, m] for m in MS]) for label in sessions]
    others = gauge.others()

    cpu = _cpu_name()
    lines = [
        f"MatMulNBits probe: K={K} N={N}, {THREADS} threads, onnxruntime {ort.__version__}",
        f"CPU: {cpu} ({len(Path('/proc/cpuinfo').read_text().split('processor')) - 1} logical)",
        f"others' CPU during the run: {others:.2f} cores (waited {waited:.1f} s for a quiet machine)",
        "",
        f"| form | {' | '.join(f'M={m} us/call' for m in MS)} |",
        f"|---|{'---|' * len(MS)}",
    ]
    lines += [f"| {label} | {' | '.join(f'{t:.1f}' for t in times)} |" for label, times in rows]
    data = {
        "cpu": cpu,
        "onnxruntime": ort.__version__,
        "K": K,
        "N": N,
        "threads": THREADS,
        "others_cores": others,
        "us_per_call": {label: dict(zip((f"M={m}" for m in MS), times, strict=True)) for label, times in rows},
    }

    def plot(path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.barh([label for label, _ in rows], [times[0] for _, times in rows])
        ax.set_xscale("log")
        ax.set_xlabel(f"us per call, M={MS[0]} (log scale)")
        ax.set_title(f"MatMulNBits forms of GGUF blocks, K={K} N={N}; {cpu}")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)

    results_file.write(ROOT / "bench" / "results", "gguf_blocks", data, "\n".join(lines) + "\n", plot)


if __name__ == "__main__":
    main()
