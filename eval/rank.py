"""Ranking samples without tests (Codex §3.3; Hassid et al. 2024): the best of k samples by mean
log-probability, by sum log-probability, and at random, as rank-score@k beside pass@k (the oracle).

A sample counts only when the model ended it (finish_reason "stop": EOS or a stop sequence); one cut
at max_tokens is discarded, as the papers discard generations without EOS. A problem whose samples are
all discarded scores 0. The log-probabilities are those of the generated tokens only (the prompt is
not scored); in instruct mode they cover the whole reply, prose and code fence included.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from eval import passk
from eval.runs import HumanEvalRun

RANKINGS = ("mean logprob", "sum logprob", "random")
KS = (1, 2, 5, 10)


@dataclass
class RankResult:
    run: str
    model: str
    temperature: float
    mode: str
    problems: int
    samples: int
    kept: int  # samples that ended by themselves
    rank_score: dict[str, dict[int, float]]  # ranking -> k -> score
    pass_at_k: dict[int, float]  # all samples, the unbiased estimator (what a test oracle would pick)


def ended(sample: dict) -> bool:
    return sample.get("finish_reason") == "stop" and sample.get("mean_logprob") is not None


def rank_run(run: HumanEvalRun, ks: tuple[int, ...] = KS) -> RankResult:
    problems = run.by_problem()
    least = min(len(s) for s in problems.values())
    ks = tuple(k for k in ks if k <= least)
    scores: dict[str, dict[int, list[float]]] = {r: {k: [] for k in ks} for r in RANKINGS}
    kept_total = 0
    for samples in problems.values():
        kept = [s for s in samples if ended(s)]
        kept_total += len(kept)
        passed = [s["passed"] for s in kept]
        keys = {
            "mean logprob": [s["mean_logprob"] for s in kept],
            "sum logprob": [s["sum_logprob"] for s in kept],
            "random": [0.0] * len(kept),  # all tied: every order equally likely, the expectation exactly
        }
        for ranking in RANKINGS:
            for k in ks:
                scores[ranking][k].append(passk.rank_score_at_k(passed, keys[ranking], k))
    counts = {t: (len(s), sum(x["passed"] for x in s)) for t, s in problems.items()}
    return RankResult(
        run=run.label,
        model=run.model,
        temperature=run.temperature,
        mode=run.mode,
        problems=len(problems),
        samples=sum(len(s) for s in problems.values()),
        kept=kept_total,
        rank_score={r: {k: float(np.mean(v)) for k, v in by_k.items()} for r, by_k in scores.items()},
        pass_at_k=passk.benchmark_pass_at_k(counts, ks),
    )


def write(out: Path, results: list[RankResult]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "rank.json").write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    lines = [
        "# Ranking without tests: rank-score@k",
        "",
        "Best of k samples picked by mean or sum log-probability of the generated tokens, or at random "
        "(Codex §3.3), among the samples that ended by themselves; pass@k over all samples is the oracle. "
        "Percent of problems.",
        "",
    ]
    for r in results:
        ks = sorted(r.pass_at_k)
        lines += [
            f"## {r.run}",
            "",
            f"{r.problems} problems, {r.samples} samples, {r.kept} ended by themselves ({100 * r.kept / max(r.samples, 1):.0f}%).",
            "",
            "| ranking | " + " | ".join(f"@{k}" for k in ks) + " |",
            "|---|" + "---|" * len(ks),
        ]
        for ranking in RANKINGS:
            lines.append(f"| {ranking} | " + " | ".join(f"{100 * r.rank_score[ranking][k]:.1f}" for k in ks) + " |")
        lines += ["| pass@k (oracle) | " + " | ".join(f"{100 * r.pass_at_k[k]:.1f}" for k in ks) + " |", ""]
    (out / "rank.md").write_text("\n".join(lines))
    _plot(out / "rank.png", results)


def _plot(path: Path, results: list[RankResult]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.6), squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        ks = sorted(r.pass_at_k)
        for ranking in RANKINGS:
            ax.plot(ks, [100 * r.rank_score[ranking][k] for k in ks], marker="o", label=ranking)
        ax.plot(ks, [100 * r.pass_at_k[k] for k in ks], linestyle="--", color="grey", label="pass@k (oracle)")
        ax.set_title(r.run, fontsize=9)
        ax.set_xlabel("k")
        ax.set_ylabel("% of problems")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("rank-score@k: the best of k samples by score")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
