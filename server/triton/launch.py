"""A real tritonserver on this machine, from the nvidia-pytriton wheel's bundled binary (python backend
only), bound to 127.0.0.1, serving model_repository/.

The wheel's layout and what the binary needs (shared/reference/models-and-stack.md): the python
backend's stub for this Python version copied beside the backend library, the wheel's libraries and
this interpreter's libpython on LD_LIBRARY_PATH, and this environment's bin first on PATH so that the
stub imports this environment's packages (it ignores PYTHONPATH). A stub that cannot start makes the
server hang rather than exit, so start-up has its own timeout and shows the server's log.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


class TritonUnavailable(RuntimeError):
    """tritonserver is not installed here, or did not become ready."""


class PortTaken(TritonUnavailable):
    """One of the server's ports was bound by another process."""

    def __init__(self, port: int) -> None:
        super().__init__(
            f"port {port} on 127.0.0.1 is taken by another process: tritonserver could not bind it "
            "(choose another with --http-port, --grpc-port or --metrics-port)"
        )
        self.port = port


# tritonserver's line for a port it could not bind; the metrics service's failure does not stop it,
# so start() looks for this line itself
_TAKEN = re.compile(r"failed to start \w+ service: Unavailable - Socket '[^']*:(\d+)' already in use")


@dataclass(frozen=True)
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002


def _wheel() -> Path:
    spec = importlib.util.find_spec("pytriton")  # finds the package without importing it (or its deps)
    if spec is None or not spec.submodule_search_locations:
        raise TritonUnavailable("tritonserver comes from the nvidia-pytriton wheel: pip install --no-deps nvidia-pytriton==0.7.0")
    root = Path(next(iter(spec.submodule_search_locations)))
    if not (root / "tritonserver" / "bin" / "tritonserver").is_file():
        raise TritonUnavailable(f"{root} has no tritonserver binary (nvidia-pytriton 0.7.0 bundles one)")
    return root


def _backends(into: Path) -> Path:
    """A backend directory holding the python backend with the stub for this interpreter's version."""
    server = _wheel() / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = server / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonUnavailable(f"the wheel has no python backend stub for Python {version}")
    python = into / "python"
    python.mkdir(parents=True, exist_ok=True)
    for source in (server / "backends" / "python").iterdir():
        if source.is_file():
            shutil.copy2(source, python / source.name)
    shutil.copy2(stub, python / stub.name)
    return into


class TritonServer:
    """tritonserver as a child process, stopped by its own PID; its log goes to `log`."""

    def __init__(
        self, repository: Path, models: list[str], ports: Ports | None = None, log: Path | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.repository, self.models, self.ports = repository.resolve(), models, ports or Ports()
        self._env = env or {}  # over this process's environment: the engine's SLIPSTREAM_* settings
        self._workdir = Path(tempfile.mkdtemp(prefix="slipstream-triton-"))
        self.log = log or self._workdir / "tritonserver.log"
        # shared-memory regions of this server's stubs carry this prefix, so leftovers are findable
        self.shm_prefix = f"slipstream{os.getpid()}x{self.ports.grpc}_"
        self.process: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.http}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.metrics}/metrics"

    def command(self) -> list[str]:
        binary = _wheel() / "tritonserver" / "bin" / "tritonserver"
        args = [
            str(binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={_backends(self._workdir / 'backends')}",
            "--disable-auto-complete-config",
            "--model-control-mode=explicit",
            "--http-address=127.0.0.1",
            f"--http-port={self.ports.http}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.ports.grpc}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.ports.metrics}",
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",
            "--exit-on-error=true",
            "--strict-readiness=true",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
        ]
        return args + [f"--load-model={name}" for name in self.models]

    def environment(self) -> dict[str, str]:
        libs = [str(_wheel().parent / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR") or ""]
        env = {**os.environ, **self._env}
        env["LD_LIBRARY_PATH"] = os.pathsep.join([p for p in libs if p] + [env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    def start(self, timeout: float = 120.0) -> TritonServer:
        missing = [m for m in self.models if not (self.repository / m / "config.pbtxt").is_file()]
        if missing:
            raise TritonUnavailable(f"no config.pbtxt for {', '.join(missing)} in {self.repository}: export them first")
        with self.log.open("w") as sink:
            self.process = subprocess.Popen(
                self.command(), stdout=sink, stderr=subprocess.STDOUT, env=self.environment(), start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            taken = _TAKEN.search(self.log_tail(100_000))
            if taken:
                self.stop()
                raise PortTaken(int(taken.group(1)))
            if self.process.poll() is not None:
                raise TritonUnavailable(f"tritonserver exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.ready() and self._metrics_ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise TritonUnavailable(f"tritonserver was not ready in {timeout:.0f} s:\n{self.log_tail()}")

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.http_url}/v2/health/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def _metrics_ready(self) -> bool:
        """Its own metrics answer on the metrics port (and not another process's server)."""
        try:
            response = httpx.get(self.metrics_url, timeout=2)
        except httpx.TransportError:
            return False
        return response.status_code == 200 and "nv_" in response.text

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.is_file() else "(no log)"

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (Triton finishes in-flight requests and unloads the models), then SIGKILL to the
        server and its stubs (they share its process group) if it does not end in time."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    pass
            try:  # the server, if still there, and stubs that outlived it: all in its own process group
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
        shutil.rmtree(self._workdir / "backends", ignore_errors=True)
        for region in self.shm_regions():  # a stub killed mid-flight leaves its region behind
            region.unlink(missing_ok=True)

    def shm_regions(self) -> list[Path]:
        """Shared-memory regions of this server's python stubs still in /dev/shm."""
        shm = Path("/dev/shm")
        return sorted(shm.glob(f"{self.shm_prefix}*")) if shm.is_dir() else []

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
