"""Tables and plots of evaluation results: JSON for machines, markdown for people, PNG to compare."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from eval.humaneval import RunSummary
    from eval.latency import CellResult


def write_humaneval_report(out: Path, summaries: list[RunSummary]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps([asdict(s) for s in summaries], indent=2) + "\n")
    ks = sorted({k for s in summaries for k in s.pass_at_k})
    header = ["model", "mode", "temperature", "samples/problem", *(f"pass@{k}" for k in ks), "generation s", "execution s",
              "executed/s", "box"]
    rows = [
        [s.model, s.mode, f"{s.temperature:g}" + (" (greedy)" if s.greedy else ""), str(s.samples_per_problem),
         *(f"{100 * s.pass_at_k[k]:.1f}%" if k in s.pass_at_k else "" for k in ks),
         f"{s.generation_s:.0f}", f"{s.execution_s:.1f}", f"{s.samples_per_s_executed:.1f}", s.box]
        for s in summaries
    ]
    problems = sorted({s.problems for s in summaries})
    lines = [
        "# HumanEval",
        "",
        f"{', '.join(map(str, problems))} problems; pass@k by the unbiased estimator (Chen et al. 2021), reported only "
        "for k up to the samples per problem; temperature 0 is greedy decoding, its own pass@1.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    _plot(out / "report.png", summaries, ks)


def _plot(path: Path, summaries: list[RunSummary], ks: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ks), figsize=(4.5 * len(ks), 3.6), squeeze=False)
    for ax, k in zip(axes[0], ks, strict=True):
        for model, mode in dict.fromkeys((s.model, s.mode) for s in summaries):
            points = sorted((s.temperature, s.pass_at_k[k]) for s in summaries
                            if (s.model, s.mode) == (model, mode) and k in s.pass_at_k)
            if points:
                label = model if mode == "completion" else f"{model} ({mode})"
                ax.plot([t for t, _ in points], [100 * v for _, v in points], marker="o", label=label)
        ax.set_title(f"pass@{k}")
        ax.set_xlabel("temperature")
        ax.set_ylabel("% of problems")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("HumanEval pass@k vs temperature")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def latency_markdown(results: list[CellResult]) -> str:
    """One row per cell of the sweep: TTFT, inter-token and end-to-end latency at p50/p95, tokens/s, errors."""

    def ms(values: dict[str, float], q: str) -> str:
        return f"{1000 * values[q]:.0f}" if q in values else "-"

    lines = ["# Latency", "",
             "Per cell: time to first token, inter-token latency and end-to-end time (ms, p50 / p95), aggregate "
             "completion tokens/s, error rate.", "",
             "| server | model | prompt | max | clients | t | TTFT p50 / p95 | ITL p50 / p95 | e2e p50 / p95 | tok/s | errors |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        c = r.cell
        lines.append(f"| {c.url} | {c.model} | {c.prompt_tokens} | {c.max_tokens} | {c.concurrency} | {c.temperature:g} | "
                     f"{ms(r.ttft_s, 'p50')} / {ms(r.ttft_s, 'p95')} | {ms(r.itl_s, 'p50')} / {ms(r.itl_s, 'p95')} | "
                     f"{ms(r.e2e_s, 'p50')} / {ms(r.e2e_s, 'p95')} | {r.throughput_tok_s:.1f} | {r.error_rate:.0%} |")
    return "\n".join(lines) + "\n"


def plot_latency(out: Path, results: list[CellResult]) -> None:
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
        points = sorted((r.cell.prompt_tokens, r) for r in base
                        if (r.cell.url, r.cell.model, r.cell.concurrency) == (url, model, lowest) and r.ttft_s)
        for ax, metric in zip(axes, ("ttft_s", "e2e_s"), strict=True):
            ax.plot([p for p, _ in points], [1000 * getattr(r, metric)["p50"] for _, r in points], marker="o",
                    label=label(url, model))
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
        points = sorted((r.cell.concurrency, r.throughput_tok_s) for r in base
                        if (r.cell.url, r.cell.model, r.cell.prompt_tokens) == (url, model, shortest))
        ax.plot([c for c, _ in points], [t for _, t in points], marker="o", label=label(url, model))
    ax.set_title(f"Throughput vs concurrency ({shortest}-token prompts)")
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("completion tokens / s")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "throughput_vs_concurrency.png", dpi=120)
    plt.close(fig)
