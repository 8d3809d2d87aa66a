"""`slipstream serve` as a child process on 127.0.0.1: for the tests and the benchmarks, which talk to a
real server over HTTP and stop it by its own PID. ChildServer is any such server (bench.editor starts
llama.cpp's through it)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PORT_ATTEMPTS = 3  # ports tried by a server whose free port another process took before it bound


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ChildServer:
    """A server in a child process on 127.0.0.1 (its output in a log file in the temp folder), ready when
    `ready_path` answers 200, stopped by its own PID."""

    ready_path = "/ready"

    def __init__(self, args: list[str], log_name: str, port: int, env: dict[str, str] | None = None) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(tempfile.gettempdir()) / f"{log_name}-{self.port}.log"
        with self.log.open("w") as sink:
            self.process = subprocess.Popen(args, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until `ready_path` answers 200; a server that exits or never gets ready is stopped and its log shown."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}{self.ready_path}", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"server not ready in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def __enter__(self) -> ChildServer:
        self.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def rss_bytes(self) -> tuple[int, int]:
        """(resident, peak resident) memory of the server process, from /proc."""
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines())
        return tuple(int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM"))  # type: ignore[return-value]


class ServerProcess(ChildServer):
    """A real `slipstream serve` process on 127.0.0.1, stopped by its own PID."""

    def __init__(
        self,
        repository: Path,
        models: list[str],
        env: dict[str, str] | None = None,
        threads: int = 2,
        port: int | None = None,
        flags: list[str] | None = None,
    ) -> None:
        self._given_port = port is not None  # a given port: a server restarted where its clients expect it
        self._repository, self._models, self._env, self._threads = repository, models, env, threads
        self._flags = flags or []  # more of serve's flags (--ray local, ...)
        self._launch(port or free_port())

    def _launch(self, port: int) -> None:
        args = [
            sys.executable,
            "-m",
            "slipstream.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--model-repository",
            str(self._repository),
            "--no-export-missing",
            "--threads",
            str(self._threads),
        ]
        for model in self._models:
            args += ["--model", model]
        args += self._flags
        super().__init__(args, "slipstream-server", port, self._env)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """As ChildServer's; a free port taken by another process between free_port() and the bind (it
        closes its probe socket first) is tried again on another, up to PORT_ATTEMPTS in all."""
        for attempt in range(PORT_ATTEMPTS):
            try:
                return super().wait_ready(timeout)
            except RuntimeError:
                taken = "address already in use" in self.log.read_text(errors="replace").lower()
                if self._given_port or not taken or attempt == PORT_ATTEMPTS - 1:
                    raise
                self._launch(free_port())

    def __enter__(self) -> ServerProcess:
        self.wait_ready()
        return self

    def access_log(self) -> list[dict]:
        """Its access log so far: the JSON lines it writes on stdout, each an object alone on its line
        (nothing before it), one per request."""
        lines = self.log.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{") and '"route"' in line]
