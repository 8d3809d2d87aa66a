"""The run time of generated code (Coignion, Quinton, Rouvoy, EASE 2024): every sample that passed
its tests, timed on those tests, normalised within its problem, compared across models and temperatures.

Timing, the way pytest-benchmark and pyperf do it: each measurement is a program of its own in the
same box as execution (eval/execution.py), pinned to one core, that runs the problem's check() on the
solution: warm-up calls, then a calibrated number of calls per round (rounds of at least
`min_round_s`), `rounds` rounds with the garbage collector off; it reports the minimum and the median
per call. The solution's own output is discarded while it is timed. Every solution of a problem (the
canonical one first, then the samples in a fixed order) is measured once per repetition, the
repetitions one after another (round-robin), so that a slow spell of the machine hits them alike; a
solution's time is the minimum over repetitions of its median, and the spread across repetitions
(coefficient of variation) is reported as the noise. Identical completions of a problem are measured
once and shared.

Normalisation within each problem, so that a slow problem does not dominate: the ratio to the
canonical solution's time (aggregated across problems by geometric mean) and the z-score among all
measured solutions of the problem (every model and temperature; 0 where a problem has one solution).
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from eval import execution
from eval.datasets import Problem
from eval.runs import HumanEvalRun, problems_of

_RESULT = "SLIPSTREAM_PERF "

_HARNESS = """
def __slipstream_perf():
    import gc, json, os, sys, time
    try:
        os.sched_setaffinity(0, {{{core}}})
    except (AttributeError, OSError):
        pass
    clock = time.perf_counter
    call = lambda: check({entry_point})
    out, sys.stdout = sys.stdout, open(os.devnull, "w")
    try:
        for _ in range({warmup}):
            call()
        loops = 1
        while True:  # calibrate: a round of at least min_round_s
            started = clock()
            for _ in range(loops):
                call()
            took = clock() - started
            if took >= {min_round_s} or loops >= {max_loops}:
                break
            loops = min({max_loops}, max(loops * 2, int(loops * {min_round_s} / max(took, 1e-9) * 1.2)))
        rounds = max(3, min({rounds}, int({budget_s} / max(took, 1e-9))))
        times = []
        gc.collect()
        gc.disable()
        try:
            for _ in range(rounds):
                started = clock()
                for _ in range(loops):
                    call()
                times.append((clock() - started) / loops)
        finally:
            gc.enable()
    finally:
        sys.stdout = out
    times.sort()
    median = times[len(times) // 2] if len(times) % 2 else (times[len(times) // 2 - 1] + times[len(times) // 2]) / 2
    sys.stderr.write("{marker}" + json.dumps({{"min": times[0], "median": median, "loops": loops, "rounds": rounds}}) + "\\n")
__slipstream_perf()
"""


@dataclass(frozen=True)
class TimingConfig:
    rounds: int = 7
    warmup: int = 2
    min_round_s: float = 0.01
    max_loops: int = 100_000
    budget_s: float = 2.0  # rounds are cut to fit this
    repeats: int = 3
    timeout_s: float = 30.0


@dataclass
class Solution:
    task_id: str
    completion: str
    canonical: bool
    samples: list[dict] = field(default_factory=list)  # (run, sample) that wrote this completion
    medians: list[float] = field(default_factory=list)  # per repetition, seconds per check() call
    minimums: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def seconds(self) -> float | None:
        return min(self.medians) if self.medians and not self.error else None

    @property
    def cv(self) -> float | None:
        if len(self.medians) < 2 or self.error:
            return None
        return statistics.stdev(self.medians) / statistics.mean(self.medians)


def harness(problem: Problem, completion: str, core: int, config: TimingConfig) -> str:
    return f"{problem.prompt}{completion}\n{problem.test}\n" + _HARNESS.format(
        core=core,
        entry_point=problem.entry_point,
        warmup=config.warmup,
        min_round_s=config.min_round_s,
        max_loops=config.max_loops,
        rounds=config.rounds,
        budget_s=config.budget_s,
        marker=_RESULT,
    )


def parse(result: execution.Result) -> tuple[float, float] | str:
    """(min, median) seconds per call, or why there is none."""
    match = re.search(re.escape(_RESULT) + r"(\{.*\})", result.stderr)
    if result.status == "timeout":
        return "timed out while being timed"
    if not result.passed or not match:
        lines = result.stderr.strip().splitlines()
        return f"failed while being timed: {lines[-1] if lines else result.status}"
    found = json.loads(match.group(1))
    return found["min"], found["median"]


def collect(runs: list[HumanEvalRun], problems: dict[str, Problem], include_timeouts: bool) -> dict[str, list[Solution]]:
    """Per problem, its canonical solution and each distinct passing completion with the samples that wrote it."""
    chosen: dict[str, dict[str, Solution]] = {}
    for run in runs:
        for sample in run.samples:
            ok = sample["passed"] or (include_timeouts and sample["result"] == "timed out")
            if not ok:
                continue
            task = sample["task_id"]
            if task not in chosen:
                canonical = problems[task].canonical_solution
                chosen[task] = {canonical: Solution(task, canonical, canonical=True)}
            solution = chosen[task].setdefault(sample["completion"], Solution(task, sample["completion"], False))
            solution.samples.append(
                {"run": run.label, "model": run.model, "temperature": run.temperature, "mode": run.mode, "sample": sample["sample"]}
            )
    return {t: list(s.values()) for t, s in sorted(chosen.items(), key=lambda kv: _task_number(kv[0]))}


def _task_number(task_id: str) -> int:
    tail = task_id.rsplit("/", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def measure(solutions: dict[str, list[Solution]], problems: dict[str, Problem], config: TimingConfig, core: int | None = None) -> None:
    """Time every solution config.repeats times, round-robin within each problem, one program at a time."""
    core = sorted(os.sched_getaffinity(0))[-1] if core is None else core
    limits = execution.Limits(timeout=config.timeout_s, cpu_seconds=int(config.timeout_s) + 5)
    order = [(s, problems[s.task_id]) for group in solutions.values() for _ in range(config.repeats) for s in group]
    with tqdm(total=len(order), desc="time solutions", unit="run") as bar:
        # one worker: programs run one after another, in this order, never two at once
        def record(i: int, result: execution.Result) -> None:
            solution = order[i][0]
            found = parse(result)
            if isinstance(found, str):
                solution.error = solution.error or found
            else:
                solution.minimums.append(found[0])
                solution.medians.append(found[1])
            bar.update()

        execution.run_many([harness(p, s.completion, core, config) for s, p in order], limits, workers=1, on_result=record)


def normalise(group: list[Solution]) -> dict[int, dict[str, float | None]]:
    """Per solution (by position in group): ratio to the canonical time and z-score among the problem's
    measured solutions (the canonical one included). Solutions without a time are left out."""
    timed = {i: s.seconds for i, s in enumerate(group) if s.seconds is not None}
    canonical = next((s.seconds for s in group if s.canonical), None)
    values = list(timed.values())
    mean = statistics.mean(values) if values else 0.0
    spread = statistics.pstdev(values) if len(values) > 1 else 0.0
    out = {}
    for i, t in timed.items():
        out[i] = {
            "ratio": t / canonical if canonical else None,  # the canonical one could not be timed
            "z": (t - mean) / spread if spread > 0 else 0.0,
        }
    return out


def summarise(runs: list[HumanEvalRun], solutions: dict[str, list[Solution]]) -> list[dict]:
    """Per run: success rate (passing samples / samples), solutions timed, geometric-mean ratio to the
    canonical solution, mean z-score, problems covered."""
    per_run: dict[str, dict[str, Any]] = {r.label: {"ratio": [], "z": [], "problems": set()} for r in runs}
    for group in solutions.values():
        for i, norm in normalise(group).items():
            for sample in group[i].samples:
                entry = per_run[sample["run"]]
                if norm["ratio"] is not None:
                    entry["ratio"].append(norm["ratio"])
                entry["z"].append(norm["z"])
                entry["problems"].add(group[i].task_id)
    rows = []
    for run in runs:
        entry = per_run[run.label]
        passed = sum(s["passed"] for s in run.samples)
        rows.append(
            {
                "run": run.label,
                "model": run.model,
                "temperature": run.temperature,
                "mode": run.mode,
                "success_rate": passed / len(run.samples),
                "timed_samples": len(entry["z"]),
                "problems": len(entry["problems"]),
                "ratio_geomean": math.exp(statistics.mean(math.log(r) for r in entry["ratio"])) if entry["ratio"] else None,
                "z_mean": statistics.mean(entry["z"]) if entry["z"] else None,
            }
        )
    return rows


def study(
    runs: list[HumanEvalRun],
    out: Path,
    config: TimingConfig | None = None,
    include_timeouts: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    config = config or TimingConfig()
    problems = problems_of(runs)
    solutions = collect(runs, problems, include_timeouts)
    if not solutions:
        raise ValueError("no sample passed its tests: nothing to time")
    count = sum(len(g) for g in solutions.values())
    log(execution.box_line(execution.detect_box()))
    log(
        f"timing {count} distinct solutions ({len(solutions)} canonical) of {len(solutions)} problems, "
        f"{config.repeats} repetitions each, on core {sorted(os.sched_getaffinity(0))[-1]}"
    )
    measure(solutions, problems, config)
    rows = summarise(runs, solutions)
    cvs = [s.cv for g in solutions.values() for s in g if s.cv is not None]
    detail = []
    for group in solutions.values():
        norms = normalise(group)
        for i, s in enumerate(group):
            detail.append(
                {
                    "task_id": s.task_id,
                    "canonical": s.canonical,
                    "samples": s.samples,
                    "seconds": s.seconds,
                    "medians": s.medians,
                    "minimums": s.minimums,
                    "cv": s.cv,
                    "error": s.error,
                    **norms.get(i, {}),
                }
            )
    noise = {
        "solutions": len(cvs),
        "cv_median": statistics.median(cvs) if cvs else None,
        "cv_p90": sorted(cvs)[int(0.9 * (len(cvs) - 1))] if cvs else None,
        "cv_max": max(cvs) if cvs else None,
    }
    result = {"config": asdict(config), "box": execution.detect_box(), "runs": rows, "noise": noise, "solutions": detail}
    out.mkdir(parents=True, exist_ok=True)
    (out / "perf.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "perf.md").write_text(markdown(result))
    _plots(out, result)
    return result


def markdown(result: dict) -> str:
    c, noise = result["config"], result["noise"]
    failed = [s for s in result["solutions"] if s["error"]]
    lines = [
        "# Run time of the generated code",
        "",
        f"Each solution that passed its tests, timed on them: {c['warmup']} warm-up calls, calibrated rounds of at "
        f"least {1000 * c['min_round_s']:.0f} ms, up to {c['rounds']} rounds with GC off, pinned to one core, in the "
        f"{result['box']} box; {c['repeats']} repetitions round-robin within each problem, a solution's time the "
        "minimum of its per-repetition medians. Normalised within each problem: ratio to the canonical solution "
        "(geometric mean across problems; below 1 is faster) and z-score among the problem's solutions.",
        "",
        f"Noise: coefficient of variation across repetitions, median {_pct(noise['cv_median'])}, p90 "
        f"{_pct(noise['cv_p90'])}, max {_pct(noise['cv_max'])} over {noise['solutions']} solutions.",
        "",
        "| run | success rate | timed samples | problems | time / canonical (geomean) | mean z |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        ratio = f"{r['ratio_geomean']:.3f}" if r["ratio_geomean"] is not None else "-"
        z = f"{r['z_mean']:+.3f}" if r["z_mean"] is not None else "-"
        lines.append(f"| {r['run']} | {100 * r['success_rate']:.1f}% | {r['timed_samples']} | {r['problems']} | {ratio} | {z} |")
    if failed:
        lines += [
            "",
            f"{len(failed)} solutions could not be timed (they pass once but not when called repeatedly, or "
            "ran past the limit): " + "; ".join(f"{s['task_id']}: {s['error']}" for s in failed[:5]),
        ]
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _plots(out: Path, result: dict) -> None:
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
        ax.plot([p[1] for p in points], [100 * p[2] for p in points], marker="o", label=model)
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
    ax.set_xlabel("HumanEval problem")
    ax.set_ylabel("run time / canonical")
    ax.set_title("Per-problem distribution of the samples' run times", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "perf_problems.png", dpi=120)
    plt.close(fig)
