"""`slipstream eval load` and `eval editor`: traffic sent at any server (a bounded load test, editor
sessions replayed). "bench" means only the speed benchmarks, `python -m bench.*`; `slipstream bench`
says where its former commands went."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from client.cli import add_api_key_flag
from eval.cli_types import non_negative, positive


def _load(args: argparse.Namespace) -> int:
    from eval.load import LoadConfig, run

    config = LoadConfig(
        args.url,
        args.model,
        clients=args.clients,
        duration_s=args.duration,
        ramp_s=args.ramp,
        prompt_tokens=args.prompt_tokens,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
    )
    try:
        result = run(config, args.out)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print((args.out / "load.md").read_text())
    return 0 if result["passed"] else 1


def _editor(args: argparse.Namespace) -> int:
    from eval.editor import EditorError, ReplayConfig, Target, run

    urls, names, models = args.url or ["http://127.0.0.1:5000"], args.name or [], args.model or []
    if len(names) > len(urls) or len(models) not in (0, 1, len(urls)):
        print("error: give at most one --name per --url, and one --model for all servers or one per --url", file=sys.stderr)
        return 2
    targets = [
        Target(names[i] if i < len(names) else url, url, (models[i] if len(models) > 1 else models[0]) if models else None)
        for i, url in enumerate(urls)
    ]
    config = ReplayConfig(
        sessions=args.sessions, words=args.words, prompt_chars=args.prompt_chars, max_tokens=args.max_tokens, word_ms=args.word_ms
    )
    try:
        result = run(targets, args.files, config, args.out)
    except EditorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print((args.out / "editor.md").read_text())
    lost = sum(s["passes"][p]["lost"] for r in result["runs"] for s in r["servers"] for p in s["passes"])
    return 1 if lost else 0


def add_traffic_commands(kinds: argparse._SubParsersAction) -> None:
    """`eval load` and `eval editor`: traffic sent at any server. (The speed benchmarks of our own engine
    against its peers are `python -m bench.*`: "bench" means only those.)"""
    load = kinds.add_parser("load", help="ramp to N streaming clients for a fixed time; no request may be lost")
    load.add_argument("--url", default="http://127.0.0.1:5000")
    load.add_argument("--model", help="model name (default: the server's first)")
    load.add_argument("--clients", type=positive, default=32)
    load.add_argument("--duration", type=float, default=60.0, help="seconds of load after the start (default 60)")
    load.add_argument("--ramp", type=float, default=10.0, help="seconds over which clients join (default 10)")
    load.add_argument("--prompt-tokens", type=positive, default=128)
    load.add_argument("--max-tokens", type=positive, default=64)
    load.add_argument("--temperature", type=float, default=0.8)
    load.add_argument("--out", type=Path, default=Path("eval-runs/load"))
    add_api_key_flag(load)
    load.set_defaults(run=_load)

    ed = kinds.add_parser(
        "editor",
        help="replay editor sessions (a streaming request per typed word, cancelled at the "
        "next) against one or more servers, cold and warm; TTFT, latency, prompt reuse",
    )
    ed.add_argument(
        "--url",
        action="append",
        help="a server, repeatable (default http://127.0.0.1:5000); the first is the reference the others' ratios are taken over",
    )
    ed.add_argument("--name", action="append", help="the label of each --url in the report, in order (default: its URL)")
    ed.add_argument("--model", action="append", help="one model for all servers, or one per --url (default: each server's first)")
    ed.add_argument(
        "--files", type=Path, nargs="+", help="source files to retype (default: textwrap.py, npm's npm.js, regex.h where found)"
    )
    ed.add_argument("--sessions", type=positive, default=1, help="sessions per file (default 1)")
    ed.add_argument("--words", type=positive, default=62, help="words typed per session, a request each (default 62)")
    ed.add_argument(
        "--prompt-chars",
        type=positive,
        default=5000,
        help="characters of the file before the cursor in a prompt at most (default 5000, ~1.4k tokens)",
    )
    ed.add_argument("--max-tokens", type=positive, default=24)
    ed.add_argument(
        "--word-ms",
        type=non_negative,
        default=0.0,
        help="milliseconds between words; the request in "
        "flight is cancelled at the next word (default 0: each completion awaited, one at a time)",
    )
    ed.add_argument("--out", type=Path, default=Path("eval-runs/editor"))
    add_api_key_flag(ed)
    ed.set_defaults(run=_editor)


def add_renamed_bench_command(commands: argparse._SubParsersAction) -> None:
    """`slipstream eval load|editor` became `slipstream eval load|editor`: said so, not guessed."""
    old = commands.add_parser("bench", help="renamed: `slipstream eval load|editor` (speed benchmarks: python -m bench.*)")
    old.add_argument("rest", nargs=argparse.REMAINDER)
    old.set_defaults(run=_renamed)


def _renamed(args: argparse.Namespace) -> int:
    kind = args.rest[0] if args.rest else "load"
    print(
        f"error: `slipstream bench {kind}` is now `slipstream eval {kind}`; the speed benchmarks are "
        "`python -m bench.<name>` (bench/README.md)",
        file=sys.stderr,
    )
    return 2


__all__ = ["add_renamed_bench_command", "add_traffic_commands"]
