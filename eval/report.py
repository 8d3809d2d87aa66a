"""Tables and plots of evaluation results: JSON for machines, markdown for people, PNG to compare."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from eval.humaneval import RunSummary


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
