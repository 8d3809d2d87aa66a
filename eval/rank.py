"""Ranking samples without tests (Codex §3.3; Hassid et al. 2024): the best of k samples by mean
log-probability, by sum log-probability, and at random, as rank-score@k beside pass@k (the oracle).

A sample counts only when the model ended it (finish_reason "stop": EOS or a stop sequence); one cut
at max_tokens is discarded, as the papers discard generations without EOS. The k samples are drawn
from all n a problem has, and the best-scored among those of them that ended is submitted (none ended:
the problem scores 0); so k means the same on every problem, the discarded samples included in the
draw, rather than k clipped to each problem's ended samples. The log-probabilities are those of the
generated tokens only (the prompt is not scored); in instruct mode they cover the whole reply, prose
and code fence included.

Each rank-score carries a 95% bootstrap interval over problems, and mean log-probability is compared
with the random pick on the same problems (paired bootstrap: the difference, its interval, p).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from eval import passk
from eval.html_page import write_study
from eval.runs import HumanEvalRun
from eval.stats import bootstrap_interval, paired_bootstrap

FIELDS = {"mean logprob": "mean_logprob", "sum logprob": "sum_logprob", "random": "random"}  # ranking -> sample field
RANKINGS = tuple(FIELDS)
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
    rank_score_interval: dict[str, dict[int, list[float]]] = field(default_factory=dict)  # 95% bootstrap over problems
    # mean logprob minus random on the same problems, per k: {"difference", "low", "high", "p"}
    mean_over_random: dict[int, dict[str, float]] = field(default_factory=dict)


def ended(sample: dict) -> bool:
    return sample.get("finish_reason") == "stop" and sample.get("mean_logprob") is not None


def problem_rank_scores(samples: list[dict], key: str, k: int) -> float:
    """One problem's rank-score@k by a sample field (mean_logprob, sum_logprob, a ranker's; "random": all
    tied): k drawn from all its samples, those that did not end (or have no score) ranked below every one
    that did and never submitted (scored -inf, counted as failing)."""
    usable = [ended(s) and (key == "random" or s.get(key) is not None) for s in samples]
    passed = [bool(s["passed"]) and ok for s, ok in zip(samples, usable, strict=True)]
    scores = [(0.0 if key == "random" else float(s[key])) if ok else -math.inf for s, ok in zip(samples, usable, strict=True)]
    return passk.rank_score_at_k(passed, scores, k)


def rank_run(run: HumanEvalRun, ks: tuple[int, ...] = KS, extra: dict[str, str] | None = None) -> RankResult:
    """extra: more rankings by name -> sample field (a second model's scores: eval/ranker.py)."""
    problems = run.by_problem()
    least = min(len(s) for s in problems.values())
    ks = tuple(k for k in ks if k <= least)
    fields = FIELDS | (extra or {})
    scores = {r: {k: [problem_rank_scores(samples, key, k) for samples in problems.values()] for k in ks} for r, key in fields.items()}
    kept_total = sum(ended(s) for samples in problems.values() for s in samples)
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
        rank_score_interval={r: {k: list(bootstrap_interval(v)) for k, v in by_k.items()} for r, by_k in scores.items()},
        mean_over_random={k: asdict(paired_bootstrap(scores["mean logprob"][k], scores["random"][k])) for k in ks},
    )


def write(out: Path, results: list[RankResult]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "rank.json").write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    lines = [
        "# Ranking without tests: rank-score@k",
        "",
        "Best of k samples picked by mean or sum log-probability of the generated tokens, or at random "
        "(Codex §3.3): k drawn from all of a problem's samples, the best of those that ended by themselves "
        "submitted (none: 0); pass@k over all samples is the oracle. Percent of problems, 95% bootstrap "
        "interval over problems in brackets; the last row is mean logprob minus random on the same problems "
        "(paired bootstrap interval and p).",
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
        for ranking in r.rank_score:
            lines.append(f"| {ranking} | " + " | ".join(_cell(r, ranking, k) for k in ks) + " |")
        lines += ["| pass@k (oracle) | " + " | ".join(f"{100 * r.pass_at_k[k]:.1f}" for k in ks) + " |"]
        if r.mean_over_random:
            lines.append(
                "| mean logprob - random (paired) | "
                + " | ".join(_paired(r.mean_over_random[k]) if k in r.mean_over_random else "" for k in ks)
                + " |"
            )
        lines.append("")
    (out / "rank.md").write_text("\n".join(lines))
    _plot(out / "rank.png", results)
    write_study(out / "rank.md")


def _cell(r: RankResult, ranking: str, k: int) -> str:
    interval = r.rank_score_interval.get(ranking, {}).get(k)
    return f"{100 * r.rank_score[ranking][k]:.1f}" + (f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]" if interval else "")


def _paired(d: dict[str, float]) -> str:
    return f"{100 * d['difference']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}] p={d['p']:.3f}"


def _plot(path: Path, results: list[RankResult]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.6), squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        ks = sorted(r.pass_at_k)
        for ranking in r.rank_score:
            values = [100 * r.rank_score[ranking][k] for k in ks]
            spans = [r.rank_score_interval.get(ranking, {}).get(k, [v / 100, v / 100]) for k, v in zip(ks, values, strict=True)]
            errors = [
                [v - 100 * lo for v, (lo, _) in zip(values, spans, strict=True)],
                [100 * hi - v for v, (_, hi) in zip(values, spans, strict=True)],
            ]
            ax.errorbar(ks, values, yerr=errors, marker="o", capsize=3, label=ranking)
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
