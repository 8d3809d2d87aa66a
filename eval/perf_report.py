"""The perf study's report: perf.md (the workloads, the runs' ratios with intervals and paired
comparisons, the noise) and its plots (success rate against run time; per-problem distributions)."""

from __future__ import annotations

from pathlib import Path


def markdown(result: dict) -> str:
    c, noise = result["config"], result["noise"]
    failed = [s for s in result["solutions"] if s["error"]]
    kinds: dict[str, int] = {}
    for _task, kind in dict.fromkeys((s["task_id"], s.get("workload", "tests")) for s in result["solutions"]):
        kind = "tests" if kind == "tests" else "scaled inputs"
        kinds[kind] = kinds.get(kind, 0) + 1
    workloads = ", ".join(f"{n} problems on {kind}" for kind, n in kinds.items())
    lines = [
        "# Run time of the generated code",
        "",
        f"Each solution that passed its tests, timed on its problem's inputs scaled until the canonical solution's pass "
        f"takes {1000 * c.get('target_s', 0.01):.0f} ms (its outputs on them checked against the canonical solution's; "
        f"problems without literal inputs on their tests): {workloads}. {c['warmup']} warm-up passes, calibrated rounds "
        f"of at least {1000 * c['min_round_s']:.0f} ms, up to {c['rounds']} rounds with GC off, pinned to one core, in the "
        f"{result['box']} box; {c['repeats']} repetitions round-robin within each problem, a solution's time the "
        "minimum of its per-repetition medians. Normalised within each problem by a fixed reference, the canonical "
        "solution (below 1 is faster): a run's figure is the geometric mean over problems, with its 95% bootstrap "
        "interval over problems; 'against' is the run over the same model's lowest temperature on the problems both "
        "timed (paired bootstrap).",
        "",
        f"Noise: coefficient of variation across repetitions, median {_pct(noise['cv_median'])}, p90 "
        f"{_pct(noise['cv_p90'])}, max {_pct(noise['cv_max'])} over {noise['solutions']} solutions.",
        "",
        "| run | success rate | timed samples | problems | time / canonical (geomean) | 95% interval | against the lowest temperature |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        ratio = f"{r['ratio_geomean']:.3f}" if r["ratio_geomean"] is not None else "-"
        interval = f"[{r['ratio_interval'][0]:.3f}, {r['ratio_interval'][1]:.3f}]" if r.get("ratio_interval") else "-"
        cells = [r["run"], f"{100 * r['success_rate']:.1f}%", str(r["timed_samples"]), str(r["problems"]), ratio, interval]
        lines.append("| " + " | ".join([*cells, _against(r.get("against"))]) + " |")
    if failed:
        lines += [
            "",
            f"{len(failed)} solutions could not be timed (they pass once but not when called repeatedly, or "
            "ran past the limit): " + "; ".join(f"{s['task_id']}: {s['error']}" for s in failed[:5]),
        ]
    return "\n".join(lines) + "\n"


def _against(paired: dict | None) -> str:
    if not paired:
        return "-"
    verdict = "" if paired["significant"] else ", within the noise"
    return (
        f"x{paired['ratio']:.3f} [{paired['low']:.3f}, {paired['high']:.3f}] p={paired['p']:.3f} on {paired['problems']} problems{verdict}"
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def plots(out: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for model in dict.fromkeys(r["model"] for r in result["runs"]):
        points = sorted(
            (r["temperature"], r["ratio_geomean"], r["success_rate"])
            for r in result["runs"]
            if r["model"] == model and r["ratio_geomean"] is not None
        )
        if not points:
            continue
        spans = {r["temperature"]: r.get("ratio_interval") for r in result["runs"] if r["model"] == model}
        xs = [p[1] for p in points]
        below = [x - (spans[t] or [x, x])[0] for (t, _, _), x in zip(points, xs, strict=True)]
        above = [(spans[t] or [x, x])[1] - x for (t, _, _), x in zip(points, xs, strict=True)]
        ax.errorbar(xs, [100 * p[2] for p in points], xerr=[below, above], marker="o", capsize=3, label=model)
        for t, x, y in points:
            ax.annotate(f"t={t:g}", (x, 100 * y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("run time / canonical solution (geometric mean)")
    ax.set_ylabel("success rate (% of samples)")
    ax.set_title("Success rate vs run time of the code", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "perf.png", dpi=120)
    plt.close(fig)

    tasks = list(dict.fromkeys(s["task_id"] for s in result["solutions"] if not s["canonical"] and s.get("ratio")))
    if not tasks:
        return
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(tasks) + 1.5), 3.8))
    data = [[s["ratio"] for s in result["solutions"] if s["task_id"] == t and not s["canonical"] and s.get("ratio")] for t in tasks]
    ax.boxplot(data, showfliers=True)
    ax.set_xticks(range(1, len(tasks) + 1), [t.split("/")[-1] for t in tasks], fontsize=7)
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("problem")
    ax.set_ylabel("run time / canonical")
    ax.set_title("Per-problem distribution of the samples' run times", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "perf_problems.png", dpi=120)
    plt.close(fig)
