"""`slipstream complete PROMPT`: print a completion from a running server as it streams."""

from __future__ import annotations

import argparse
import sys

import httpx

from client.api import ENV_KEYS, APIError, Client


def _complete(args: argparse.Namespace) -> int:
    params = {"max_tokens": args.max_tokens}
    if args.temperature is not None:
        params["temperature"] = args.temperature
    if args.model:
        params["model"] = args.model
    if args.stop:
        params["stop"] = args.stop
    try:
        with Client(args.url, timeout=args.timeout) as client:
            if args.no_stream:
                print(client.complete(args.prompt, **params)["choices"][0]["text"])
                return 0
            sys.stdout.write(args.prompt)
            for chunk in client.stream(args.prompt, **params):
                for choice in chunk["choices"]:
                    sys.stdout.write(choice["text"])
                    sys.stdout.flush()
            sys.stdout.write("\n")
    except APIError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    except (httpx.TransportError, OSError) as exc:
        print(f"\nerror: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    return 0


def add_api_key_flag(parser: argparse.ArgumentParser) -> None:
    """--api-key for a command that talks to a server; slipstream/cli.py hands it to every client made."""
    parser.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help=f"the server's API key, sent as a bearer (default: ${ENV_KEYS[0]}, then ${ENV_KEYS[1]}; "
        "a flag shows in `ps`, the variables do not)",
    )


def add_complete_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("complete", help="complete a prompt against a running server, streaming")
    parser.add_argument("prompt")
    parser.add_argument("--url", default="http://127.0.0.1:5000")
    parser.add_argument("--model", default=None)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--stop", action="append", default=None)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--no-stream", action="store_true")
    add_api_key_flag(parser)
    parser.set_defaults(run=_complete)
