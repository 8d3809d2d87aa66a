"""The servers bench.editor replays against, each started fresh on 127.0.0.1 and stopped by its PID:
llama.cpp's own `llama-server` (plain, and with its draft-free speculation `--spec-type ngram-mod`),
llama-cpp-python's OpenAI server, and ours (with and without speculation). A peer that is not installed
or built says why, and the benchmark's rows say so."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.paths import ROOT
from testkit.server_process import ChildServer, ServerProcess, free_port

LLAMA_SERVER = "llama-server"
LLAMA_SERVER_NGRAM = "llama-server ngram-mod"
LLAMA_CPP_PYTHON = "llama-cpp-python server"
OURS = "slipstream"
OURS_SPECULATIVE = "slipstream speculative"
PEERS = (LLAMA_SERVER, LLAMA_SERVER_NGRAM, LLAMA_CPP_PYTHON)  # llama.cpp's: the reference is the best of them
SERVERS = (*PEERS, OURS, OURS_SPECULATIVE)
_INSTALL = "pip install 'llama-cpp-python[server]==0.3.36'"
_BUILT = ROOT / "bench" / ".cache" / "llama.cpp" / "build" / "bin" / "llama-server"


@dataclass(frozen=True)
class Launch:
    """What a server needs: the GGUF (llama.cpp's) or the model repository (ours), threads, context."""

    model: str
    gguf: Path | None
    repository: Path
    threads: int
    context: int


def llama_server_binary() -> Path | None:
    """$LLAMA_SERVER, else the one bench/build_llama_server.sh built, else one on PATH."""
    given = os.environ.get("LLAMA_SERVER")
    for candidate in (Path(given) if given else None, _BUILT, Path(found) if (found := shutil.which("llama-server")) else None):
        if candidate is not None and candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def missing(name: str) -> str | None:
    """Why this server cannot run here, or None."""
    if name in (LLAMA_SERVER, LLAMA_SERVER_NGRAM) and llama_server_binary() is None:
        return "llama.cpp's llama-server is not built (bench/build_llama_server.sh, or $LLAMA_SERVER)"
    if name == LLAMA_CPP_PYTHON:
        for module in ("llama_cpp", "sse_starlette", "starlette_context"):
            if importlib.util.find_spec(module) is None:
                return f"llama-cpp-python[server] is not installed (no {module}; {_INSTALL})"
    return None


class LlamaServer(ChildServer):
    """llama.cpp's own server: 4 slots by default, a slot picked by prompt similarity."""

    ready_path = "/health"

    def __init__(self, launch: Launch, speculative: bool, extra: tuple[str, ...] = ()) -> None:
        binary = llama_server_binary()
        assert binary is not None and launch.gguf is not None
        port = free_port()
        threads = str(launch.threads)
        args = [str(binary), "-m", str(launch.gguf), "-t", threads, "-tb", threads, "-c", str(launch.context)]
        args += ["--alias", launch.model, "--host", "127.0.0.1", "--port", str(port)]
        args += ["--spec-type", "ngram-mod"] if speculative else []
        args += list(extra)
        # the shared libraries it links sit beside it (a build tree moved keeps working)
        env = {"LD_LIBRARY_PATH": f"{binary.parent}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
        super().__init__(args, "llama-server", port, env)


class LlamaCppPythonServer(ChildServer):
    """`python -m llama_cpp.server`, its prompt reuse on as by default."""

    ready_path = "/v1/models"

    def __init__(self, launch: Launch) -> None:
        assert launch.gguf is not None
        port = free_port()
        threads = str(launch.threads)
        args = [sys.executable, "-m", "llama_cpp.server", "--model", str(launch.gguf), "--model_alias", launch.model]
        args += ["--n_threads", threads, "--n_threads_batch", threads, "--n_ctx", str(launch.context)]
        super().__init__([*args, "--host", "127.0.0.1", "--port", str(port)], "llama-cpp-server", port)


def start(name: str, launch: Launch) -> ChildServer:
    """The server `name` (one of SERVERS), started; wait_ready() before use, stop() after."""
    if name in (LLAMA_SERVER, LLAMA_SERVER_NGRAM):
        return LlamaServer(launch, speculative=name == LLAMA_SERVER_NGRAM)
    if name == LLAMA_CPP_PYTHON:
        return LlamaCppPythonServer(launch)
    env = {"SLIPSTREAM_SPECULATIVE": "true" if name == OURS_SPECULATIVE else "false"}
    return ServerProcess(launch.repository, [launch.model], env=env, threads=launch.threads)


__all__ = [
    "LLAMA_CPP_PYTHON",
    "LLAMA_SERVER",
    "LLAMA_SERVER_NGRAM",
    "OURS",
    "OURS_SPECULATIVE",
    "PEERS",
    "SERVERS",
    "Launch",
    "missing",
    "start",
]
