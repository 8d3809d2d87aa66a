"""`slipstream`: one command, with subcommands defined beside the part they belong to (serve, export
and models in server/cli.py, triton in server/triton/cli.py, complete in client/cli.py, eval in
eval/cli.py)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from client.api import ENV_KEYS
from client.cli import add_complete_command
from eval.cli import add_eval_commands
from eval.cli_traffic import add_renamed_bench_command
from server.cli import add_server_commands
from server.triton.cli import add_triton_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slipstream", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add_server_commands(commands)
    add_triton_commands(commands)
    add_complete_command(commands)
    add_eval_commands(commands)
    add_renamed_bench_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args: Any = build_parser().parse_args(argv)
    if getattr(args, "api_key", None):  # --api-key: every client the command makes reads it from there
        os.environ[ENV_KEYS[0]] = args.api_key
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
