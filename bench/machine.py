"""The machine under a benchmark: what it is, how busy the rest of it is, how fast its memory moves.

Not run on its own: bench.decode, bench.suite, bench.llamacpp, bench.kvcache, bench.profile,
bench.revisions and bench.triton import it. machine_info records the CPU, cores, load and package
versions a result was measured with; Busy gauges the CPU other processes (and the hypervisor's steal)
took during a run, and wait_quiet waits for a quiet machine before one, since the machine is shared;
memory_bandwidth_gb_s measures copy bandwidth and weight_bytes_per_token the bytes of weights one
decode step reads, the two that make single-stream decode's bandwidth floor.
"""

from __future__ import annotations

import datetime
import os
import platform
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def machine_info(torch_default: int) -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("onnxruntime", "optimum", "optimum-onnx", "transformers", "torch", "numpy", "tokenizers"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch_default_threads": torch_default,
        "load_average_at_start": os.getloadavg(),
        "versions": versions,
    }


class Busy:
    """CPU the rest of the machine took, in cores: other processes' busy time (/proc/stat less this
    process's own) plus steal (time the hypervisor gave our virtual CPUs to someone else)."""

    _HZ = os.sysconf("SC_CLK_TCK")

    def __init__(self) -> None:
        self._start = self._now()

    @staticmethod
    def _now() -> tuple[float, float, float, float]:
        # cpu  user nice system idle iowait irq softirq steal guest guest_nice (guest is inside user)
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        busy = f[0] + f[1] + f[2] + f[5] + f[6]
        own = os.times()
        return busy / Busy._HZ, f[7] / Busy._HZ, own.user + own.system, time.perf_counter()

    def others(self) -> float:
        busy, steal, own, wall = self._now()
        b0, s0, o0, w0 = self._start
        return max(0.0, (busy - b0) - (own - o0) + (steal - s0)) / (wall - w0)


def wait_quiet(limit_s: float, below: float = 0.2, window_s: float = 0.5, windows: int = 2) -> float:
    """Wait (at most limit_s) until other processes used under `below` cores for `windows` windows in
    a row; returns the seconds waited. The machine is shared: a run during someone's test suite
    measures the test suite."""
    start, calm = time.perf_counter(), 0
    while calm < windows and time.perf_counter() - start < limit_s:
        gauge = Busy()
        time.sleep(window_s)
        calm = calm + 1 if gauge.others() < below else 0
    return time.perf_counter() - start


def memory_bandwidth_gb_s(threads: int, mb: int = 512, repeats: int = 7) -> float:
    """Best copy bandwidth (bytes read + bytes written per second) with `threads` threads each copying
    its own share of `mb` MB: numpy releases the GIL for the copy, as ONNX Runtime's threads read weights."""
    import numpy as np

    size = mb * 2**20 // 8 // threads
    sources = [np.ones(size) for _ in range(threads)]
    targets = [np.empty(size) for _ in range(threads)]
    best = float("inf")
    for _ in range(repeats):
        barrier = threading.Barrier(threads + 1)
        workers = [
            threading.Thread(target=lambda s=s, t=t, b=barrier: (b.wait(), np.copyto(t, s))) for s, t in zip(sources, targets, strict=True)
        ]
        for w in workers:
            w.start()
        start = time.perf_counter()
        barrier.wait()
        for w in workers:
            w.join()
        best = min(best, time.perf_counter() - start)
    return 2 * size * 8 * threads / best / 1e9


def weight_bytes_per_token(onnx_file: Path) -> int:
    """Bytes of initializers one decode step reads: all but those read only through Gather (embedding
    tables: one row per token). A table tied to the LM head is read whole, so it counts."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    model = onnx.load(str(onnx_file), load_external_data=False)
    consumers: dict[str, list] = {}
    graphs = [model.graph]
    while graphs:  # subgraphs too (If branches of merged decoders)
        graph = graphs.pop()
        for node in graph.node:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
            graphs.extend(a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH)

    def gathered_only(name: str) -> bool:
        # constant-folded reshapes (Transpose, Cast, ...) on the way to a Gather keep it row-wise
        uses = consumers.get(name, [])
        return bool(uses) and all(
            (node.op_type == "Gather" and node.input[0] == name) or (node.op_type in _FOLDED and gathered_only(node.output[0]))
            for node in uses
        )

    total = 0
    for init in model.graph.initializer:
        if not gathered_only(init.name):
            count = 1
            for dim in init.dims:
                count *= dim
            total += count * tensor_dtype_to_np_dtype(init.data_type).itemsize
    return total


_FOLDED = frozenset({"Transpose", "Cast", "Reshape", "Identity"})
