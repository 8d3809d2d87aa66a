"""`slipstream eval latency`: a sweep of generation latency against one or several servers.

Cells: server x model x prompt length x max_tokens x concurrency x temperature. In each cell,
--warmup requests (not counted), then --requests streamed completions from `concurrency` clients at
once, each with its own stretch of real code as prompt (no two share a prefix, so no server-side
prompt cache flatters the numbers) and `ignore_eos` (llama.cpp's and vLLM's extension too) so that
every completion has the asked length. Per cell, from the client's side:

- TTFT: request sent -> first text chunk (prefill, queueing included);
- ITL: per request, (total - TTFT) / (completion tokens - 1): the mean inter-token latency;
- end-to-end latency: request sent -> end of stream;
- each at p50 / p95 / p99 over the cell's requests;
- tokens/s: all completion tokens of the cell over the cell's wall time (throughput), and per
  request (completion tokens - 1) / (total - TTFT) (the decode speed one client sees);
- error rate: requests that failed, over all requests.
Prompt lengths are targets in tokens, met with ~3.5 characters per token of code; the measured
prompt_tokens (from the server's usage) are reported beside them.
"""

from __future__ import annotations

import asyncio
import csv
import inspect
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from client.api import AsyncClient, Timing
from eval.html_page import write_study
from eval.load_generator import ClosedLoop
from eval.stats import percentiles

_CHARS_PER_TOKEN = 3.5


@dataclass(frozen=True)
class Cell:
    url: str
    model: str
    prompt_tokens: int
    max_tokens: int
    concurrency: int
    temperature: float


@dataclass
class CellResult:
    cell: Cell
    requests: int
    errors: int
    measured_prompt_tokens: float | None
    ttft_s: dict[str, float] = field(default_factory=dict)
    itl_s: dict[str, float] = field(default_factory=dict)
    e2e_s: dict[str, float] = field(default_factory=dict)
    throughput_tok_s: float = 0.0
    decode_tok_s_p50: float | None = None
    error_rate: float = 0.0
    first_error: str | None = None

    def flat(self) -> dict[str, Any]:
        row: dict[str, Any] = asdict(self.cell)
        row.update(
            requests=self.requests,
            errors=self.errors,
            error_rate=self.error_rate,
            measured_prompt_tokens=self.measured_prompt_tokens,
            throughput_tok_s=self.throughput_tok_s,
            decode_tok_s_p50=self.decode_tok_s_p50,
        )
        for name in ("ttft_s", "itl_s", "e2e_s"):
            for q, v in getattr(self, name).items():
                row[f"{name.removesuffix('_s')}_{q}_s"] = v
        return row


def corpus() -> str:
    """Real code to cut prompts from: the standard library's own sources, the same on every machine
    with this Python."""
    import argparse
    import textwrap
    import typing

    return "\n".join(inspect.getsource(m) for m in (textwrap, argparse, typing))


def prompt_for(length_tokens: int, index: int, text: str) -> str:
    size = int(length_tokens * _CHARS_PER_TOKEN)
    start = (index * 7919 * 13) % max(1, len(text) - size)  # a different stretch for every request
    return text[start : start + size]


async def run_cell(
    cell: Cell, requests: int, warmup: int, text: str, seed: int, progress: tqdm | None = None, timeout: float = 300.0
) -> CellResult:
    params: dict[str, Any] = {
        "model": cell.model,
        "max_tokens": cell.max_tokens,
        "temperature": cell.temperature,
        "ignore_eos": True,
        "seed": seed,
    }
    timings: list[Timing] = []
    errors: list[str] = []
    async with AsyncClient(cell.url, timeout=timeout, max_retries=0) as client:
        for i in range(warmup):
            try:
                await client.timed(prompt_for(cell.prompt_tokens, -1 - i, text), **params)
            except Exception:  # noqa: BLE001 - a failed warm-up shows again in the measured requests
                pass

        async def send(_client: int, ticket: int) -> None:
            try:
                timings.append(await client.timed(prompt_for(cell.prompt_tokens, ticket, text), **params))
            except Exception as exc:  # noqa: BLE001 - every failure counts, whatever its kind
                errors.append(f"{type(exc).__name__}: {exc}")
            if progress is not None:
                progress.update()

        wall = await ClosedLoop(cell.concurrency, total=requests).run(send)

    ok = [t for t in timings if t.ttft_s is not None]
    tokens = [t.completion_tokens if t.completion_tokens is not None else t.chunks for t in ok]
    itl = [(t.total_s - first) / (n - 1) for t, n in zip(ok, tokens, strict=True) if n > 1 and (first := t.ttft_s) is not None]
    prompts = [t.prompt_tokens for t in ok if t.prompt_tokens is not None]
    return CellResult(
        cell=cell,
        requests=requests,
        errors=len(errors) + len(timings) - len(ok),
        measured_prompt_tokens=float(np.median(prompts)) if prompts else None,
        ttft_s=percentiles([t.ttft_s for t in ok if t.ttft_s is not None]),
        itl_s=percentiles(itl),
        e2e_s=percentiles([t.total_s for t in ok]),
        throughput_tok_s=float(sum(tokens) / wall) if wall > 0 else 0.0,
        decode_tok_s_p50=float(np.median([1 / x for x in itl])) if itl else None,
        error_rate=(len(errors) + len(timings) - len(ok)) / requests,
        first_error=errors[0] if errors else None,
    )


async def served_models(url: str) -> list[str]:
    async with AsyncClient(url, max_retries=1) as client:
        return [m["id"] for m in await client.models()]


def sweep(
    urls: list[str],
    models: list[str] | None,
    prompt_tokens: list[int],
    max_tokens: list[int],
    concurrency: list[int],
    temperatures: list[float],
    out: Path,
    *,
    requests: int = 8,
    warmup: int = 1,
    seed: int = 0,
) -> list[CellResult]:
    text = corpus()
    cells = []
    for url in urls:
        available = asyncio.run(served_models(url))
        chosen = models or available
        missing = [m for m in chosen if m not in available]
        if missing:
            print(f"note: {url} does not serve {', '.join(missing)} (it serves {', '.join(available)}); skipped there")
        cells += [
            Cell(url, m, p, t, c, temp)
            for m in chosen
            if m in available
            for p in prompt_tokens
            for t in max_tokens
            for c in concurrency
            for temp in temperatures
        ]
    if not cells:
        raise ValueError("no cell to measure: none of the models is served at the given URLs")
    results = []
    with tqdm(total=len(cells) * requests, desc="latency", unit="request") as bar:
        for cell in cells:
            results.append(asyncio.run(run_cell(cell, requests, warmup, text, seed, bar)))
    write(out, results)
    return results


def write(out: Path, results: list[CellResult]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = [r.flat() for r in results]
    (out / "latency.json").write_text(json.dumps([{**asdict(r), "cell": asdict(r.cell)} for r in results], indent=2) + "\n")
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with (out / "latency.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    (out / "latency.md").write_text(markdown(results))
    _plots(out, results)
    write_study(out / "latency.md")


def markdown(results: list[CellResult]) -> str:
    """One row per cell of the sweep: TTFT, inter-token and end-to-end latency at p50/p95, tokens/s, errors."""

    def ms(values: dict[str, float], q: str) -> str:
        return f"{1000 * values[q]:.0f}" if q in values else "-"

    lines = [
        "# Latency",
        "",
        "Per cell: time to first token, inter-token latency and end-to-end time (ms, p50 / p95), aggregate "
        "completion tokens/s, error rate.",
        "",
        "| server | model | prompt | max | clients | t | TTFT p50 / p95 | ITL p50 / p95 | e2e p50 / p95 | tok/s | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c = r.cell
        lines.append(
            f"| {c.url} | {c.model} | {c.prompt_tokens} | {c.max_tokens} | {c.concurrency} | {c.temperature:g} | "
            f"{ms(r.ttft_s, 'p50')} / {ms(r.ttft_s, 'p95')} | {ms(r.itl_s, 'p50')} / {ms(r.itl_s, 'p95')} | "
            f"{ms(r.e2e_s, 'p50')} / {ms(r.e2e_s, 'p95')} | {r.throughput_tok_s:.1f} | {r.error_rate:.0%} |"
        )
    return "\n".join(lines) + "\n"


def _plots(out: Path, results: list[CellResult]) -> None:
    """latency_vs_prompt.png (TTFT and end-to-end p50 against prompt length, at the lowest
    concurrency) and throughput_vs_concurrency.png (tokens/s against concurrency, at the shortest
    prompt), one line per server and model, at the first max_tokens and temperature."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = results[0].cell
    base = [r for r in results if (r.cell.max_tokens, r.cell.temperature) == (first.max_tokens, first.temperature)]
    series = list(dict.fromkeys((r.cell.url, r.cell.model) for r in base))
    multi_url = len({u for u, _ in series}) > 1

    def label(url: str, model: str) -> str:
        return f"{model} @ {url}" if multi_url else model

    lowest = min(r.cell.concurrency for r in base)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for url, model in series:
        points = sorted(
            (r.cell.prompt_tokens, r) for r in base if (r.cell.url, r.cell.model, r.cell.concurrency) == (url, model, lowest) and r.ttft_s
        )
        for ax, metric in zip(axes, ("ttft_s", "e2e_s"), strict=True):
            ax.plot([p for p, _ in points], [1000 * getattr(r, metric)["p50"] for _, r in points], marker="o", label=label(url, model))
    for ax, title in zip(axes, ("time to first token (p50)", f"end-to-end, {first.max_tokens} tokens (p50)"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("prompt tokens")
        ax.set_ylabel("ms")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Latency vs prompt length (concurrency {lowest})")
    fig.tight_layout()
    fig.savefig(out / "latency_vs_prompt.png", dpi=120)
    plt.close(fig)

    shortest = min(r.cell.prompt_tokens for r in base)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for url, model in series:
        throughput = sorted(
            (r.cell.concurrency, r.throughput_tok_s)
            for r in base
            if (r.cell.url, r.cell.model, r.cell.prompt_tokens) == (url, model, shortest)
        )
        ax.plot([c for c, _ in throughput], [t for _, t in throughput], marker="o", label=label(url, model))
    ax.set_title(f"Throughput vs concurrency ({shortest}-token prompts)")
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("completion tokens / s")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "throughput_vs_concurrency.png", dpi=120)
    plt.close(fig)
