"""A real tritonserver for the tests, on three free ports: TritonServer directly, or the
`slipstream triton start` command as a child process. A port found free can be taken by another
process before tritonserver binds it (free_port closes its probe socket first): both start again on
other ports then, up to PORT_ATTEMPTS in all."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from server.triton.launch import Ports, PortTaken, TritonServer
from testkit.server_process import PORT_ATTEMPTS, ROOT, free_port


def free_ports() -> Ports:
    ports: list[int] = []
    while len(ports) < 3:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return Ports(*ports)


def start_triton(repository: Path, models: list[str], *, env: dict[str, str] | None = None, timeout: float = 120.0) -> TritonServer:
    for _ in range(PORT_ATTEMPTS - 1):
        try:
            return TritonServer(repository, models, free_ports(), env=env).start(timeout=timeout)
        except PortTaken:
            pass
    return TritonServer(repository, models, free_ports(), env=env).start(timeout=timeout)  # the last: its error goes up


class TritonCommand:
    """`slipstream triton start <args> --http-port ... --grpc-port ... --metrics-port ...` in a child
    process (its output in `log`), ready when it prints the line that says how to put the API in
    front; stopped by its own PID with SIGTERM (it stops its tritonserver then)."""

    READY = "put the API in front"

    def __init__(self, args: list[str], log: Path, timeout: float = 180.0, ports: Ports | None = None) -> None:
        """Given `ports` (a server restarted where its clients expect it), only those are tried."""
        self.log = log
        for _ in range(PORT_ATTEMPTS if ports is None else 1):
            self.ports = ports or free_ports()
            flags = ["--http-port", str(self.ports.http), "--grpc-port", str(self.ports.grpc), "--metrics-port", str(self.ports.metrics)]
            with log.open("w") as sink:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "slipstream.cli", "triton", "start", *args, *flags],
                    cwd=ROOT,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                )
            if self._wait_ready(timeout):
                return
        raise RuntimeError(f"a port was taken:\n{self.output()[-3000:]}")

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    def _wait_ready(self, timeout: float) -> bool:
        """True once ready; False where it ended because a port was taken (try others); else an error."""
        deadline = time.monotonic() + timeout
        while self.READY not in self.output():
            if self.process.poll() is not None:
                if re.search(r"port \d+ on 127\.0\.0\.1 is taken", self.output()):
                    return False
                raise RuntimeError(f"slipstream triton start exited with {self.process.returncode}:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"slipstream triton start not ready in {timeout} s:\n{self.output()[-3000:]}")
            time.sleep(0.3)
        return True

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 60.0) -> int:
        """Its exit status: 0 when it stopped its tritonserver cleanly (killed if it does not end in time)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()

    def __enter__(self) -> TritonCommand:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
