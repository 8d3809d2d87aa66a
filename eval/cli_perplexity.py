"""`slipstream eval perplexity`: per-language perplexity through echo, over a fetched set or folders."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from client.cli import add_api_key_flag
from eval.cli_types import pairs, positive


def _perplexity(args: argparse.Namespace) -> int:
    import httpx

    from client.api import APIError
    from eval import perplexity_set
    from eval.perplexity import run

    languages: dict[str, Path] = {}
    try:
        if args.fetch_set:
            rows = perplexity_set.fetch(args.fetch_set, args.fetch_languages, files=args.files)
            print(f"perplexity set: {args.fetch_set / 'SOURCES.md'} ({sum('error' not in r for r in rows)} of {len(rows)} languages)")
            if not args.model:
                return 0 if all("error" not in r for r in rows) else 1
        for folder in filter(None, (args.fetch_set, args.set)):
            languages |= perplexity_set.languages_in(folder)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    languages |= {lang: Path(folder) for lang, folder in args.lang}
    if not args.model:
        print("error: give --model (the models to measure)", file=sys.stderr)
        return 1
    if not languages:
        print(
            "error: give --set DIR (from --fetch-set DIR) or --lang LANGUAGE=FOLDER (e.g. --lang python=/usr/lib/python3.11)",
            file=sys.stderr,
        )
        return 1
    try:
        run(
            args.url,
            args.model,
            languages,
            args.out,
            files=args.files,
            method=args.method,
            window_tokens=args.window,
            overlap=args.overlap,
            prefix=args.first_token_prefix,
        )
    except (APIError, httpx.HTTPError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"perplexity: {args.out / 'perplexity.md'}")
    return 0


def add_perplexity_command(kinds: argparse._SubParsersAction) -> None:
    pp = kinds.add_parser("perplexity", help="perplexity per language over folders of source files (echo + logprobs)")
    pp.add_argument("--url", default="http://127.0.0.1:5000")
    pp.add_argument("--model", action="append", help="model name, repeatable")
    pp.add_argument(
        "--fetch-set",
        type=Path,
        metavar="DIR",
        help="download a set of PolyCoder's 12 languages from Debian, npm and PyPI packages into DIR (then measure it, "
        "if --model is given)",
    )
    pp.add_argument("--fetch-languages", type=lambda t: [v for v in t.split(",") if v], help="comma-separated: fetch only these")
    pp.add_argument("--set", type=Path, metavar="DIR", help="measure a set fetched before (DIR/<language>/)")
    pp.add_argument(
        "--lang",
        type=pairs,
        action="append",
        default=[],
        metavar="LANGUAGE=FOLDER",
        help="a Pygments language name and a folder of its files, repeatable",
    )
    pp.add_argument("--files", type=positive, default=20, help="files per language (default 20)")
    pp.add_argument(
        "--method",
        choices=("polycoder", "windows"),
        default="polycoder",
        help="polycoder (default, the paper's): every Pygments token, the first token scored, rolling windows at the "
        "model's whole context; windows: whitespace tokens left out, --window tokens with --overlap repeated",
    )
    pp.add_argument("--window", type=positive, help="model tokens per window at most (polycoder: the model's context; windows: 512)")
    pp.add_argument("--overlap", type=float, help="windows method: share of each window repeated as context (default 0.25)")
    pp.add_argument(
        "--first-token-prefix",
        default="<|endoftext|>",
        help="polycoder method: the token scored before a file's first where the model has no BOS (default <|endoftext|>)",
    )
    pp.add_argument("--out", type=Path, default=Path("eval-runs/perplexity"))
    add_api_key_flag(pp)
    pp.set_defaults(run=_perplexity)
