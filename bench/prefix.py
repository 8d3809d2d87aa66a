"""What the prefix cache and chunked prefill buy, through a real `slipstream serve` per bundled model.

    .venv/bin/python -m bench.prefix [--models gemma3-270m smollm2-135m] [--repeats 5]

- Reuse: a 1,500-token prompt whose first 1,490 tokens a request before it sent (the editor's case:
  the file up to the cursor, a word further on), TTFT warm against the same prompt cold
  (`cache_prompt: false`), alternating, each pair after a wait for a quiet machine.
- Chunked prefill: a stream decoding 96 tokens while a 4,000-token prompt arrives; the gaps between
  the stream's tokens (p50, p99, the longest) with prefill_chunk_tokens 512 and with chunking off
  (one chunk of the whole prompt), each on its own server.
Results: bench/results/prefix.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx

from bench import results as results_file
from bench.decode import MODELS
from bench.machine import machine_info, wait_quiet
from bench.paths import ROOT
from testkit.server_process import ServerProcess

PROMPT_TOKENS, SHARED_TOKENS = 1500, 1490
LONG_PROMPT_TOKENS, STREAM_TOKENS = 4000, 96


def encode(model: str, text: str) -> list[int]:
    """Token ids of `text` by the model's own tokenizer (the server adds its prefix to an id prompt)."""
    from tokenizers import Tokenizer

    from server.models.store import model_dir, read_manifest

    manifest = read_manifest(ROOT / "model_repository", model)
    tokenizer = Tokenizer.from_file(str(model_dir(ROOT / "model_repository", model) / manifest.tokenizer_file))
    return tokenizer.encode(text, add_special_tokens=False).ids


def ttft(url: str, model: str, ids: list[int], cache_prompt: bool) -> tuple[float, int]:
    """(seconds to the first streamed text, cached prompt tokens) of a greedy 4-token completion."""
    body = {
        "model": model,
        "prompt": ids,
        "max_tokens": 4,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        "cache_prompt": cache_prompt,
    }
    start, first, cached = time.perf_counter(), None, 0
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=600) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                cached = chunk["usage"]["prompt_tokens_details"]["cached_tokens"]
            elif first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                first = time.perf_counter()
    return (first or time.perf_counter()) - start, cached


def reuse_case(url: str, model: str, ids: list[int], repeats: int, quiet: float) -> dict:
    cold, warm, cached = [], [], []
    for round_ in range(repeats + 1):  # round 0: the warm-up
        shared = ids[:SHARED_TOKENS] if not round_ else [(ids[0] + round_) % 1000] + ids[1:SHARED_TOKENS]
        prompt = shared + ids[SHARED_TOKENS:PROMPT_TOKENS]
        wait_quiet(quiet)
        ttft(url, model, shared, cache_prompt=True)  # what the editor sent a word before
        wait_quiet(quiet)
        seconds, reused = ttft(url, model, prompt, cache_prompt=True)
        wait_quiet(quiet)
        cold_s, _ = ttft(url, model, prompt, cache_prompt=False)
        if round_:
            warm.append(seconds)
            cold.append(cold_s)
            cached.append(reused)
    return {
        "cold_ttft_s": statistics.median(cold),
        "warm_ttft_s": statistics.median(warm),
        "warm_over_cold": statistics.median(warm) / statistics.median(cold),
        "cached_tokens": cached,
        "runs": {"cold": cold, "warm": warm},
    }


def gaps_case(url: str, model: str, ids: list[int], quiet: float) -> dict:
    """The gaps between a stream's tokens while another request's long prompt is prefilled."""
    wait_quiet(quiet)
    stamps: list[float] = []
    body = {
        "model": model,
        "prompt": ids[:64],
        "max_tokens": STREAM_TOKENS,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "cache_prompt": False,
    }
    started = threading.Event()

    def stream() -> None:
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=600) as response:
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    stamps.append(time.perf_counter())
                    if len(stamps) == 8:
                        started.set()

    reader = threading.Thread(target=stream)
    reader.start()
    started.wait(120)
    long_body = {"model": model, "prompt": ids[:LONG_PROMPT_TOKENS], "max_tokens": 1, "cache_prompt": False}
    httpx.post(f"{url}/v1/completions", json=long_body, timeout=600)
    reader.join()
    gaps = sorted(b - a for a, b in zip(stamps, stamps[1:], strict=False))
    return {
        "p50_ms": 1000 * gaps[len(gaps) // 2],
        "p99_ms": 1000 * gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))],
        "max_ms": 1000 * gaps[-1],
        "tokens": len(stamps),
    }


def bench_model(name: str, args: argparse.Namespace) -> dict:
    out: dict = {}
    repository = ROOT / "model_repository"
    with ServerProcess(repository, [name], threads=args.threads) as server:
        ids = encode(name, Path(textwrap.__file__).read_text() * 8)
        out["reuse"] = reuse_case(server.url, name, ids, args.repeats, args.quiet_wait)
        print(
            f"[{name}] 1,500-token prompt, 1,490 cached: TTFT {1000 * out['reuse']['warm_ttft_s']:.0f} ms warm, "
            f"{1000 * out['reuse']['cold_ttft_s']:.0f} ms cold ({out['reuse']['warm_over_cold']:.3f}x)",
            flush=True,
        )
        out["gaps_chunked"] = gaps_case(server.url, name, ids, args.quiet_wait)
        out["rss_mb"] = server.rss_bytes()[0] / 2**20
    with ServerProcess(
        repository, [name], threads=args.threads, env={"SLIPSTREAM_PREFILL_CHUNK_TOKENS": str(2 * LONG_PROMPT_TOKENS // 64 * 64)}
    ) as server:
        out["gaps_unchunked"] = gaps_case(server.url, name, ids, args.quiet_wait)
    for key in ("gaps_chunked", "gaps_unchunked"):
        g = out[key]
        print(f"[{name}] {key}: gaps p50 {g['p50_ms']:.0f} ms, p99 {g['p99_ms']:.0f} ms, max {g['max_ms']:.0f} ms", flush=True)
    return out


def markdown(results: dict, info: dict) -> str:
    lines = [
        "# Prefix cache and chunked prefill",
        "",
        f"{info['cpu']}, {info['cores']} cores; one `slipstream serve` per case, streaming over HTTP.",
        "",
        f"| model | TTFT cold, {PROMPT_TOKENS} tokens | TTFT warm, {SHARED_TOKENS} cached | warm / cold | "
        f"stream gaps while a {LONG_PROMPT_TOKENS}-token prompt goes in: chunked p50 / p99 / max | unchunked "
        "p50 / p99 / max | server RSS |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        c, u = r["gaps_chunked"], r["gaps_unchunked"]
        lines.append(
            f"| {name} | {1000 * r['reuse']['cold_ttft_s']:.0f} ms | {1000 * r['reuse']['warm_ttft_s']:.0f} ms | "
            f"**{r['reuse']['warm_over_cold']:.3f}** | {c['p50_ms']:.0f} / {c['p99_ms']:.0f} / {c['max_ms']:.0f} "
            f"ms | {u['p50_ms']:.0f} / {u['p99_ms']:.0f} / {u['max_ms']:.0f} ms | {r['rss_mb']:.0f} MB |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (reuse, gaps) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(results)
    results_file.side_by_side(
        reuse,
        names,
        {phase: [1000 * results[n]["reuse"][f"{phase}_ttft_s"] for n in names] for phase in ("cold", "warm")},
        f"TTFT, ms ({PROMPT_TOKENS}-token prompt)",
    )
    results_file.side_by_side(
        gaps,
        names,
        {
            "chunked": [results[n]["gaps_chunked"]["max_ms"] for n in names],
            "one chunk": [results[n]["gaps_unchunked"]["max_ms"] for n in names],
        },
        "longest gap between a stream's tokens, ms",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.prefix", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quiet-wait", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    info = machine_info(args.threads)
    results = {name: bench_model(name, args) for name in args.models}
    results_file.write(args.out, "prefix", {"machine": info, "models": results}, markdown(results, info), lambda path: plot(results, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
