"""The budget study's report: budget.md (costs, and per axis who wins at which budget, with intervals,
the lead's paired test and the no-test rank-score) and budget.png (score against budget, error bars)."""

from __future__ import annotations

from pathlib import Path


def _pct(value: float, interval: list[float] | None) -> str:
    return f"{100 * value:.1f}%" + (f" [{100 * interval[0]:.0f}, {100 * interval[1]:.0f}]" if interval else "")


def markdown(result: dict) -> str:
    time_at = result.get("time_at", "best")
    timing = (
        "time(k) = P / prefill tok/s + k·G / decode tok/s at the best batch size"
        if time_at == "best"
        else "time(k) = k·G / the run's own aggregate tok/s (the batch it really used, prefill folded in; not the paper's setting)"
    )
    lines = [
        "# pass@k under a budget (Hassid et al. 2024)",
        "",
        f"flops(k) = 2·N·(P + k·G); {timing}. "
        "N parameters, P prompt tokens per problem (one shared prefill), G generated tokens per sample. "
        "Budgets in units of the cheapest model's one-sample cost; k = 0 scores 0; "
        + (
            "k up to half the samples drawn per problem, as the paper estimates it; * marks a budget that would buy more."
            if result.get("k_limit", "half") == "half"
            else "k up to every sample drawn (--k-up-to-n, not the paper's setting); * marks a budget that would buy more."
        )
        + " Each cell: pass@k with its 95% bootstrap interval over problems, and rank-score@k (the best of the k "
        + (
            f"by {result['ranker']}'s mean log-probability of each completion, no tests; the ranker's reading of each sample "
            "is paid for: 2·N_ranker·(P + G) FLOPs, (P + G) / its prefill tok/s, so the ranked k may be smaller)."
            if result.get("ranker")
            else "by the model's own mean log-probability, no tests)."
        )
        + (
            " Completion-mode and instruct-mode runs are compared together (--across-modes, not the paper's setting), each "
            "at its own prompt's cost."
            if result.get("across_modes")
            else ""
        )
        + " The lead: the winner minus the runner-up on the same problems "
        "(paired bootstrap); a lead whose interval holds 0 is within the noise.",
        "",
        "| run | N | P | G | prefill tok/s | decode tok/s (batch) | run tok/s | FLOPs/sample | s/sample |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["costs"]:
        r = c["rates"]
        rate = f"{r['prefill_tok_s']:.0f} | {r['decode_tok_s']:.1f} ({r['best_batch']})" if r else "- | -"
        flops1 = 2 * c["parameters"] * (c["prompt_tokens"] + c["generated_tokens"])
        if time_at == "run" and c.get("run_tok_s"):
            secs = f"{c['generated_tokens'] / c['run_tok_s']:.2f}"
        else:
            secs = f"{c['prompt_tokens'] / r['prefill_tok_s'] + c['generated_tokens'] / r['decode_tok_s']:.2f}" if r else "-"
        run_rate = f"{c['run_tok_s']:.0f}" if c.get("run_tok_s") else "-"
        lines.append(
            f"| {c['run']} | {c['parameters'] / 1e6:.0f}M | {c['prompt_tokens']:.0f} | "
            f"{c['generated_tokens']:.0f} | {rate} | {run_rate} | {flops1:.2e} | {secs} |"
        )
    for key, rows in result["winners"].items():
        runs = list(rows[0]["entries"])
        curves = {c["run"]: c for c in result["curves"][key]}
        lines += [
            "",
            f"## Who wins: {key}",
            "",
            "| budget (units) | " + " | ".join(runs) + " | winner | lead (paired) |",
            "|---|" + "---|" * (len(runs) + 2),
        ]
        for i, row in enumerate(rows):
            cells = []
            for run, (k, score, capped) in row["entries"].items():
                curve = curves[run]
                interval = curve.get("score_interval", [None] * (i + 1))[i]
                ranked = ""
                if curve.get("rank_score"):
                    rank_k = curve.get("rank_k", [k] * (i + 1))[i]
                    ranked = f"; ranked{'' if rank_k == k else f' k={rank_k}'} {100 * curve['rank_score'][i]:.1f}%"
                cells.append(f"k={k}{'*' if capped else ''} {_pct(score, interval)}{ranked}")
            lead = row.get("lead")
            said = (
                f"{100 * lead['difference']:+.1f} [{100 * lead['low']:+.1f}, {100 * lead['high']:+.1f}] p={lead['p']:.3f}"
                + ("" if lead["significant"] else " (within the noise)")
                if lead
                else "-"
            )
            lines.append(f"| {row['units']:.2f} | " + " | ".join(cells) + f" | {', '.join(row['winner']) or '-'} | {said} |")
    return "\n".join(lines) + "\n"


def plot(path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(result["curves"])
    fig, axes = plt.subplots(1, len(keys), figsize=(4.8 * len(keys), 3.8), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for curve in result["curves"][key]:
            values = [100 * s for s in curve["score"]]
            line = ax.step(curve["units"], values, where="post", marker=".", label=f"{curve['run']} pass@k")[0]
            spans = curve.get("score_interval") or []
            if spans:
                low, high = [100 * s[0] for s in spans], [100 * s[1] for s in spans]
                ax.fill_between(curve["units"], low, high, step="post", alpha=0.15, color=line.get_color())
            if curve.get("rank_score"):
                ranked = [100 * s for s in curve["rank_score"]]
                ax.step(curve["units"], ranked, where="post", linestyle=":", color=line.get_color(), label=f"{curve['run']} ranked")
        axis, temperature = key.split("@")
        ax.set_title(f"pass_{'flops' if axis == 'flops' else 'time'}@budget, {temperature}", fontsize=10)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"budget ({'FLOPs' if axis == 'flops' else 'seconds'}, units of the cheapest sample)")
        ax.set_ylabel("% of problems")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
