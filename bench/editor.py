"""The editor replay (`slipstream eval editor`'s) against our server and llama.cpp's, per bundled model.

    .venv/bin/python -m bench.editor [--models gemma3-270m smollm2-135m] [--sessions 1] [--words 62]

For each model, one server at a time, each started fresh (so that its first pass is cold) and stopped
before the next starts: llama.cpp's OpenAI-compatible server (`python -m llama_cpp.server`, from
`llama-cpp-python[server]==0.3.36`, on the GGUF the bundled model's package ships, --threads threads,
its prompt reuse on as by default), then `slipstream serve` on the model_repository export. Both get
the same sessions (eval/editor_sessions.py, the default files) through the same client. llama.cpp's is
the reference: the ratios read ours over theirs. Where llama_cpp's server is not installed or does not
start, its rows say so and ours still run. Results: bench/results/editor.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from bench.machine import Busy, machine_info, wait_quiet
from bench.paths import ROOT
from eval import editor_report
from eval.editor import EditorError, ReplayConfig, Target, prepare, replay_server
from eval.editor_sessions import Session
from testkit.server_process import ChildServer, ServerProcess, free_port

MODELS = ("gemma3-270m", "smollm2-135m")
LLAMA_CPP = "llama.cpp server"
OURS = "slipstream"
_INSTALL = "pip install 'llama-cpp-python[server]==0.3.36'"


class LlamaCppServer(ChildServer):
    """`python -m llama_cpp.server` on 127.0.0.1, stopped by its own PID."""

    ready_path = "/v1/models"

    def __init__(self, gguf: Path, alias: str, threads: int, context: int) -> None:
        port = free_port()
        super().__init__(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(gguf),
                "--model_alias",
                alias,
                "--n_threads",
                str(threads),
                "--n_threads_batch",
                str(threads),
                "--n_ctx",
                str(context),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            "llama-cpp-server",
            port,
        )


def llama_cpp_server_missing() -> str | None:
    """Why llama.cpp's server cannot run here, or None."""
    for module in ("llama_cpp", "sse_starlette", "starlette_context"):
        if importlib.util.find_spec(module) is None:
            return f"llama-cpp-python[server] is not installed (no {module}; {_INSTALL})"
    return None


def _cpu_s(pid: int) -> float:
    """CPU seconds a process has used, its threads included (utime + stime in /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _replay(
    target: Target, server: ChildServer, sessions: list[Session], texts: dict[str, str], config: ReplayConfig, quiet_wait: float
) -> dict:
    """Both passes against one started server, after a wait for a quiet machine; the cores the server
    used and those the rest of the machine took meanwhile (Busy counts the server as another process)."""
    waited = wait_quiet(quiet_wait)
    gauge, server_cpu, start = Busy(), _cpu_s(server.process.pid), time.perf_counter()
    entry = asyncio.run(replay_server(target, sessions, texts, config)).entry()
    server_cores = (_cpu_s(server.process.pid) - server_cpu) / (time.perf_counter() - start)
    entry |= {"server_cores": server_cores, "others_cores": max(0.0, gauge.others() - server_cores), "waited_s": waited}
    if server.process.poll() is not None:  # its requests are lost from then on: say why
        entry["exited"] = f"exited during the replay with {server.process.returncode} (log: {server.log})"
    return entry


def bench_model(name: str, sessions: list[Session], texts: dict[str, str], config: ReplayConfig, args: argparse.Namespace) -> dict:
    from server.models.catalog import lookup

    servers: list[dict] = []
    missing = llama_cpp_server_missing()
    if missing:
        print(f"[{name}] {LLAMA_CPP}: {missing}", flush=True)
        servers.append({"name": LLAMA_CPP, "unavailable": missing})
    else:
        with tempfile.TemporaryDirectory() as tmp:
            gguf = lookup(name).locate_gguf(Path(tmp))
            peer = LlamaCppServer(gguf, name, args.threads, args.context)
            try:
                peer.wait_ready(timeout=300)
                entry = _replay(Target(LLAMA_CPP, peer.url, name), peer, sessions, texts, config, args.quiet_wait)
                servers.append(entry | {"gguf": gguf.name})
            except (RuntimeError, TimeoutError, EditorError) as exc:
                print(f"[{name}] {LLAMA_CPP} did not run: {exc}", flush=True)
                servers.append({"name": LLAMA_CPP, "unavailable": f"did not run: {exc}"})
            finally:
                peer.stop()
    ours = ServerProcess(args.repository, [name], threads=args.threads)
    try:
        ours.wait_ready(timeout=600)
        servers.append(
            _replay(Target(OURS, ours.url, name), ours, sessions, texts, config, args.quiet_wait) | {"rss_bytes_after": ours.rss_bytes()[0]}
        )
    finally:
        ours.stop()
    return {"label": name, "servers": servers}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.editor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--files", type=Path, nargs="+", help="default: textwrap.py, npm.js, regex.h where found")
    parser.add_argument("--sessions", type=int, default=1, help="sessions per file")
    parser.add_argument("--words", type=int, default=62, help="words typed per session, a request each")
    parser.add_argument("--prompt-chars", type=int, default=5000)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--word-ms", type=float, default=0.0, help="0: each completion awaited, one at a time")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--context", type=int, default=4096, help="llama.cpp's n_ctx")
    parser.add_argument("--quiet-wait", type=float, default=10.0)
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    for name in args.models:
        if not (args.repository / name / "manifest.json").is_file():
            parser.error(f"export {name} first: slipstream export {name}")

    config = ReplayConfig(
        sessions=args.sessions, words=args.words, prompt_chars=args.prompt_chars, max_tokens=args.max_tokens, word_ms=args.word_ms
    )
    try:
        texts, sessions = prepare(args.files, config)
    except EditorError as exc:
        parser.error(str(exc))
    runs = [bench_model(name, sessions, texts, config, args) for name in args.models]
    machine = {k: v for k, v in machine_info(0).items() if k != "torch_default_threads"}  # no torch here
    data = editor_report.result(runs, config=asdict(config) | {"threads": args.threads}, sessions=sessions, machine=machine)
    editor_report.write(args.out, data)
    print(editor_report.markdown(data))
    print(f"results: {args.out / 'editor.json'}, editor.md, editor.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
