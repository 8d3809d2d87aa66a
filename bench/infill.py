"""llama.vim's traffic on /infill, through a real `slipstream serve` per bundled model.

    .venv/bin/python -m bench.infill [--models gemma3-270m smollm2-135m] [--words 40]

llama.vim keeps a ring of chunks from other files (input_extra), sends a warm-up (`n_predict: 0`) when
the ring changes, then a FIM request at each keystroke pause: the 256 lines before the cursor's line
(input_prefix), the line up to the cursor (prompt), the rest of the line and 64 lines after it
(input_suffix). Here a real file is retyped word by word with three 32-line chunks of two other real
files in the ring; each word's request is sent with the prefix cache (warm) and, alternating, with
`cache_prompt: false` (cold). Per request: the whole latency (llama.vim does not stream), the server's
timings.prompt_ms, tokens_cached / tokens_evaluated. Results: bench/results/infill.{json,md,png}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import httpx

from bench import results as results_file
from bench.decode import MODELS
from bench.machine import machine_info, wait_quiet
from bench.paths import ROOT
from eval.editor_sessions import default_files, read_files, sessions_of
from testkit.server_process import ServerProcess

PREFIX_LINES, SUFFIX_LINES, CHUNK_LINES, CHUNKS = 256, 64, 32, 3


def ring(texts: dict[str, str], skip: str) -> list[dict]:
    """Three chunks of the other files, as llama.vim's ring holds them."""
    chunks = []
    for name, text in texts.items():
        if name == skip:
            continue
        lines = text.splitlines(keepends=True)
        for start in (len(lines) // 4, len(lines) // 2):
            chunks.append({"filename": Path(name).name, "text": "".join(lines[start : start + CHUNK_LINES]), "time": 0})
    return chunks[:CHUNKS]


def fim_body(text: str, cursor: int, extra: list[dict], cache: bool) -> dict:
    """llama.vim's FIM request at the cursor (its autoload/llama.vim), greedy so the passes compare."""
    line_start = text.rfind("\n", 0, cursor) + 1
    line_end = text.find("\n", cursor)
    line_end = len(text) if line_end < 0 else line_end
    before = text[:line_start].splitlines(keepends=True)[-PREFIX_LINES:]
    after = text[line_end + 1 :].splitlines(keepends=True)[:SUFFIX_LINES]
    return {
        "id_slot": 0,
        "input_prefix": "".join(before),
        "prompt": text[line_start:cursor],
        "input_suffix": text[cursor:line_end] + "\n" + "".join(after),
        "input_extra": extra,
        "n_predict": 16,
        "stop": [],
        "n_indent": 0,
        "top_k": 40,
        "top_p": 0.90,
        "temperature": 0,
        "stream": False,
        "samplers": ["top_k", "top_p", "infill"],
        "cache_prompt": cache,
        "t_max_prompt_ms": 500,
        "t_max_predict_ms": 1000,
    }


def replay(url: str, text: str, extra: list[dict], cursors: tuple[int, ...], quiet: float) -> dict:
    with httpx.Client(base_url=url, timeout=600) as http:
        http.post(
            "/infill",
            json={"input_prefix": "", "input_suffix": "", "prompt": "", "input_extra": extra, "n_predict": 0, "cache_prompt": True},
        )  # llama.vim's warm-up
        runs: dict[str, list[dict]] = {"warm": [], "cold": []}
        for cursor in cursors:
            for kind in ("warm", "cold"):
                wait_quiet(quiet)
                start = time.perf_counter()
                got = http.post("/infill", json=fim_body(text, cursor, extra, kind == "warm")).json()
                runs[kind].append(
                    {
                        "latency_s": time.perf_counter() - start,
                        "prompt_ms": got["timings"]["prompt_ms"],
                        "cached": got["tokens_cached"],
                        "evaluated": got["tokens_evaluated"],
                    }
                )
    return {kind: summary(rows) for kind, rows in runs.items()} | {"runs": runs}


def summary(rows: list[dict]) -> dict:
    latency = sorted(r["latency_s"] for r in rows)
    return {
        "latency_p50_ms": 1000 * statistics.median(latency),
        "latency_p90_ms": 1000 * latency[min(len(latency) - 1, int(0.9 * len(latency)))],
        "prompt_ms_p50": statistics.median(r["prompt_ms"] for r in rows),
        "reused": sum(r["cached"] for r in rows) / max(1, sum(r["evaluated"] for r in rows)),
        "prompt_tokens_p50": statistics.median(r["evaluated"] for r in rows),
    }


def bench_model(name: str, args: argparse.Namespace) -> dict:
    texts = read_files(default_files())
    file = next(iter(texts))
    session = sessions_of(file, texts[file], 1, args.words, 6000)[0]
    with ServerProcess(ROOT / "model_repository", [name], threads=args.threads) as server:
        out = replay(server.url, texts[file], ring(texts, file), session.cursors, args.quiet_wait)
    w, c = out["warm"], out["cold"]
    print(
        f"[{name}] {args.words} words of {Path(file).name}, {w['prompt_tokens_p50']:.0f}-token prompts: latency p50 "
        f"{w['latency_p50_ms']:.0f} ms warm / {c['latency_p50_ms']:.0f} ms cold "
        f"({w['latency_p50_ms'] / c['latency_p50_ms']:.3f}x), {100 * w['reused']:.1f}% of prompt tokens reused",
        flush=True,
    )
    return out


def markdown(results: dict, info: dict, words: int) -> str:
    lines = [
        "# llama.vim's /infill traffic",
        "",
        f"{info['cpu']}, {info['cores']} cores; {words} words retyped, each request warm (prefix cache) and "
        "cold (`cache_prompt: false`), three other-file chunks in `input_extra`.",
        "",
        "| model | prompt tokens p50 | latency p50 warm / cold | ratio | p90 warm / cold | server prompt_ms p50 "
        "warm / cold | prompt tokens reused |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        w, c = r["warm"], r["cold"]
        lines.append(
            f"| {name} | {w['prompt_tokens_p50']:.0f} | {w['latency_p50_ms']:.0f} / {c['latency_p50_ms']:.0f} ms | "
            f"**{w['latency_p50_ms'] / c['latency_p50_ms']:.3f}** | {w['latency_p90_ms']:.0f} / "
            f"{c['latency_p90_ms']:.0f} ms | {w['prompt_ms_p50']:.0f} / {c['prompt_ms_p50']:.0f} ms | "
            f"{100 * w['reused']:.1f}% |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    names = list(results)
    results_file.side_by_side(
        ax, names, {phase: [results[n][phase]["latency_p50_ms"] for n in names] for phase in ("cold", "warm")}, "/infill latency p50, ms"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.infill", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--words", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quiet-wait", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    info = machine_info(args.threads)
    results = {name: bench_model(name, args) for name in args.models}
    results_file.write(
        args.out, "infill", {"machine": info, "models": results}, markdown(results, info, args.words), lambda path: plot(results, path)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
