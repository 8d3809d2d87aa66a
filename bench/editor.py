"""The editor replay (`slipstream eval editor`'s) against our server and llama.cpp's, per bundled model
and typing pace, speculation on and off.

    .venv/bin/python -m bench.editor [--models gemma3-270m smollm2-135m] [--paces 0 250 400 800]
        [--servers ...] [--sessions 1] [--words 62]

For each model and pace, one server at a time, each started fresh (so that its first pass is cold) and
stopped before the next starts (bench/editor_peers.py): llama.cpp's own `llama-server` on the GGUF the
bundled model's package ships, plain and with `--spec-type ngram-mod` (built by
bench/build_llama_server.sh), llama-cpp-python's server (`llama-cpp-python[server]==0.3.36`), then
`slipstream serve` on the model_repository export without and with `speculative`. All get the same
sessions (eval/editor_sessions.py, the default files) through the same client. Pace 0: each completion
awaited before the next word (request latency); a pace of P ms: a word every P ms, the request in flight
cancelled at the next word as Copilot and Continue do, and the share of suggestions that completed (shown)
before the next word. The reference of each run's ratios is the best llama.cpp configuration that ran
(lowest warm latency p50 at pace 0, largest warm shown share at a pace). Where a peer is not installed or
does not start, its rows say so and the others still run. Results: bench/results/editor.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

from bench.editor_peers import OURS, PEERS, SERVERS, Launch, missing, start
from bench.machine import Busy, machine_info, wait_quiet
from bench.paths import ROOT
from eval import editor_report
from eval.editor import EditorError, ReplayConfig, Target, prepare, replay_server
from eval.editor_sessions import Session
from testkit.server_process import ChildServer

MODELS = ("gemma3-270m", "smollm2-135m")
PACES = (0.0, 250.0, 400.0, 800.0)


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
    gauge, server_cpu, start_s = Busy(), _cpu_s(server.process.pid), time.perf_counter()
    entry = asyncio.run(replay_server(target, sessions, texts, config)).entry()
    server_cores = (_cpu_s(server.process.pid) - server_cpu) / (time.perf_counter() - start_s)
    entry |= {"server_cores": server_cores, "others_cores": max(0.0, gauge.others() - server_cores), "waited_s": waited}
    if server.process.poll() is not None:  # its requests are lost from then on: say why
        entry["exited"] = f"exited during the replay with {server.process.returncode} (log: {server.log})"
    return entry


def _serve(name: str, launch: Launch, sessions: list[Session], texts: dict[str, str], config: ReplayConfig, quiet_wait: float) -> dict:
    why = missing(name)
    if why:
        print(f"[{launch.model}] {name}: {why}", flush=True)
        return {"name": name, "unavailable": why}
    server = start(name, launch)
    try:
        server.wait_ready(timeout=600)
        entry = _replay(Target(name, server.url, launch.model), server, sessions, texts, config, quiet_wait)
        if name.startswith(OURS):
            entry["rss_bytes_after"] = server.rss_bytes()[0]
        return entry | ({"gguf": launch.gguf.name} if name in PEERS and launch.gguf else {})
    except (RuntimeError, TimeoutError, EditorError) as exc:
        print(f"[{launch.model}] {name} did not run: {exc}", flush=True)
        return {"name": name, "unavailable": f"did not run: {exc}"}
    finally:
        server.stop()


def _best_peer_first(servers: list[dict], paced: bool) -> list[dict]:
    """The best llama.cpp configuration that ran first (the report's reference), then the others in order."""

    def score(entry: dict) -> float:
        warm = entry["passes"]["warm"]
        if paced:
            return -warm["completed"] / max(warm["requests"], 1)
        return warm["latency_ms"]["p50"] if warm["latency_ms"] else float("inf")

    ran = [s for s in servers if s["name"] in PEERS and "passes" in s]
    if not ran:
        return servers
    best = min(ran, key=score)
    return [best, *(s for s in servers if s is not best)]


def bench_model(name: str, sessions: list[Session], texts: dict[str, str], config: ReplayConfig, args: argparse.Namespace) -> list[dict]:
    from server.models.catalog import lookup

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        gguf = lookup(name).locate_gguf(Path(tmp)) if any(s in PEERS for s in args.servers) else None
        launch = Launch(name, gguf, args.repository, args.threads, args.context)
        for pace in args.paces:
            paced = replace(config, word_ms=pace)
            servers = [_serve(s, launch, sessions, texts, paced, args.quiet_wait) for s in args.servers]
            label = f"{name}, " + (f"a word every {pace:g} ms" if pace else "each completion awaited")
            runs.append({"label": label, "model": name, "word_ms": pace, "servers": _best_peer_first(servers, pace > 0)})
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.editor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=SERVERS)
    parser.add_argument("--paces", type=float, nargs="+", default=list(PACES), help="ms per word; 0: each completion awaited")
    parser.add_argument("--files", type=Path, nargs="+", help="default: textwrap.py, npm.js, regex.h where found")
    parser.add_argument("--sessions", type=int, default=1, help="sessions per file")
    parser.add_argument("--words", type=int, default=62, help="words typed per session, a request each")
    parser.add_argument("--prompt-chars", type=int, default=5000)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--context", type=int, default=8192, help="llama.cpp's n_ctx")
    parser.add_argument("--quiet-wait", type=float, default=10.0)
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    for name in args.models:
        if not (args.repository / name / "manifest.json").is_file():
            parser.error(f"export {name} first: slipstream export {name}")

    config = ReplayConfig(sessions=args.sessions, words=args.words, prompt_chars=args.prompt_chars, max_tokens=args.max_tokens)
    try:
        texts, sessions = prepare(args.files, config)
    except EditorError as exc:
        parser.error(str(exc))
    runs = [run for name in args.models for run in bench_model(name, sessions, texts, config, args)]
    machine = {k: v for k, v in machine_info(0).items() if k != "torch_default_threads"}  # no torch here
    data = editor_report.result(runs, config=asdict(config) | {"threads": args.threads}, sessions=sessions, machine=machine)
    editor_report.write(args.out, data)
    print(editor_report.markdown(data))
    print(f"results: {args.out / 'editor.json'}, editor.md, editor.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
