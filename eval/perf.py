"""The run time of generated code (Coignion, Quinton, Rouvoy, EASE 2024): every sample that passed
its tests, timed, normalised within its problem by a fixed reference, compared across models and
temperatures.

What is timed (eval/perf_workload.py): the problem's own inputs scaled until one pass of the canonical
solution takes at least `target_s` (10 ms), after the solution's outputs on them are checked against
the canonical solution's; a problem without literal inputs is timed on its tests (check()).

Timing, the way pytest-benchmark and pyperf do it: each measurement is a program of its own in the
same box as execution (eval/execution.py), pinned to one core: warm-up passes, then a calibrated
number of passes per round (rounds of at least `min_round_s`, the inputs copied before the clock
starts), `rounds` rounds with the garbage collector off; it reports the minimum and the median per
pass. The solution's own output is discarded while it is timed. Every solution of a problem (the
canonical one first, then the samples in a fixed order) is measured once per repetition, the
repetitions one after another (round-robin), so that a slow spell of the machine hits them alike; a
solution's time is the minimum over repetitions of its median, and the spread across repetitions
(coefficient of variation) is reported as the noise. Identical completions are measured once.

Normalisation within each problem by a fixed reference, the canonical solution: a sample's ratio to
its time, so that adding runs to the folder changes no other run's figure (a z-score among every
run's solutions would). A run's figure: the geometric mean over problems of its per-problem geometric
mean ratio, with a 95% bootstrap interval over problems; each run is compared with the same model's
lowest temperature on the problems both timed (paired bootstrap of the log ratios).
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
from eval.html_page import write_study
from eval.perf_report import markdown, plots
from eval.perf_workload import Workload, calibrate, embed
from eval.runs import HumanEvalRun, problems_of
from eval.stats import bootstrap_interval, paired_bootstrap

_RESULT = "SLIPSTREAM_PERF "

# a workload of inputs: prepare copies (untimed), then one pass calls the solution on every input
_INPUTS = """
    import base64, copy, pickle
    inputs = pickle.loads(base64.b64decode({inputs!r}))
    reference = {{}}
    exec(compile({reference!r}, "<canonical solution>", "exec"), reference)
    expected_of, solution = reference[{entry_point!r}], globals()[{entry_point!r}]  # not a bare name: the harness has locals

    def same(got, want):
        if got == want:
            return True
        if isinstance(want, float) and isinstance(got, float):
            return abs(got - want) <= 1e-6 + 1e-7 * abs(want)
        if isinstance(want, (list, tuple)) and type(got) is type(want) and len(got) == len(want):
            return all(same(g, w) for g, w in zip(got, want))
        return False

    mutates = False
    for index, args in enumerate(inputs):  # untimed: the same outputs as the canonical solution's
        given = copy.deepcopy(args)
        if not same(solution(*given), expected_of(*copy.deepcopy(args))):
            sys.stderr.write("{marker}" + json.dumps({{"differs": index}}) + "\\n")
            return
        mutates = mutates or given != args
    # a solution that changes its inputs gets fresh copies each pass (made before the clock starts), as
    # many passes a round as 64 MB of copies allow; one that does not is called on the same inputs
    size = max(1, len(pickle.dumps(inputs)))
    most = max(1, (64 << 20) // (3 * size))
    prepare = (lambda loops: [copy.deepcopy(inputs) for _ in range(min(loops, most))]) if mutates else (lambda loops: [inputs] * loops)

    def run(batch):
        for copies in batch:
            for args in copies:
                solution(*args)
"""
# the problem's tests: nothing to prepare, one pass is check()
_TESTS = """
    prepare = lambda loops: [None] * loops

    def run(batch):
        for _ in batch:
            check(globals()[{entry_point!r}])
"""
_HARNESS = """
def __slipstream_perf():
    import gc, json, os, sys, time
    try:
        os.sched_setaffinity(0, {{{core}}})
    except (AttributeError, OSError):
        pass
    clock = time.perf_counter
    out, sys.stdout = sys.stdout, open(os.devnull, "w")
    try:
{workload}
        run(prepare({warmup}))
        loops = 1
        while True:  # calibrate: a round of at least min_round_s
            batch = prepare(loops)
            started = clock()
            run(batch)
            took = clock() - started
            if took >= {min_round_s} or loops >= {max_loops} or len(batch) < loops:
                break
            loops = min({max_loops}, max(loops * 2, int(loops * {min_round_s} / max(took, 1e-9) * 1.2)))
        rounds = max(3, min({rounds}, int({budget_s} / max(took, 1e-9))))
        times = []
        gc.collect()
        gc.disable()
        try:
            for _ in range(rounds):
                batch = prepare(loops)
                started = clock()
                run(batch)
                times.append((clock() - started) / len(batch))
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
    target_s: float = 0.01  # a pass of the canonical solution over the scaled inputs (eval/perf_workload.py)
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


def harness(problem: Problem, completion: str, core: int, config: TimingConfig, workload: Workload | None = None) -> str:
    """The measurement program of one solution: on the workload's inputs, or on the problem's tests."""
    if workload is None or workload.inputs is None:
        body = _TESTS.format(entry_point=problem.entry_point)
    else:
        body = _INPUTS.format(
            inputs=embed(workload.inputs),
            reference=problem.prompt + problem.canonical_solution,
            entry_point=problem.entry_point,
            marker=_RESULT,
        )
    body = "\n".join("    " + line if line.strip() else line for line in body.strip("\n").splitlines())
    return f"{problem.prompt}{completion}\n{problem.test}\n" + _HARNESS.format(
        core=core,
        workload=body,
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
    if "differs" in found:
        return f"differs from the canonical solution on scaled input {found['differs']}"
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


def measure(
    solutions: dict[str, list[Solution]],
    problems: dict[str, Problem],
    config: TimingConfig,
    workloads: dict[str, Workload] | None = None,
    core: int | None = None,
) -> None:
    """Time every solution config.repeats times, round-robin within each problem, one program at a time."""
    workloads = workloads or {}
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

        programs = [harness(p, s.completion, core, config, workloads.get(s.task_id)) for s, p in order]
        execution.run_many(programs, limits, workers=1, on_result=record)


def normalise(group: list[Solution]) -> dict[int, dict[str, float | None]]:
    """Per solution (by position in group): its ratio to the canonical solution's time, None where the
    canonical one could not be timed. Solutions without a time are left out."""
    canonical = next((s.seconds for s in group if s.canonical), None)
    return {i: {"ratio": s.seconds / canonical if canonical else None} for i, s in enumerate(group) if s.seconds is not None}


def problem_log_ratios(runs: list[HumanEvalRun], solutions: dict[str, list[Solution]]) -> dict[str, dict[str, float]]:
    """Per run, per problem: the mean log ratio of its timed samples (each sample counts, so a completion
    written twice weighs twice)."""
    logs: dict[str, dict[str, list[float]]] = {r.label: {} for r in runs}
    for task, group in solutions.items():
        for i, norm in normalise(group).items():
            if norm["ratio"] is None:
                continue
            for sample in group[i].samples:
                logs[sample["run"]].setdefault(task, []).append(math.log(norm["ratio"]))
    return {run: {task: statistics.mean(values) for task, values in tasks.items()} for run, tasks in logs.items()}


def summarise(runs: list[HumanEvalRun], solutions: dict[str, list[Solution]]) -> list[dict]:
    """Per run: success rate (passing samples / samples), samples timed, the geometric mean over problems
    of its ratio to the canonical solution with a 95% bootstrap interval over problems, problems covered,
    and the paired comparison with the same model's lowest temperature."""
    logs = problem_log_ratios(runs, solutions)
    timed = {r.label: 0 for r in runs}
    for group in solutions.values():
        for i in normalise(group):
            for sample in group[i].samples:
                timed[sample["run"]] += 1
    rows = []
    for run in runs:
        per_problem = logs[run.label]
        values = list(per_problem.values())
        interval = [math.exp(v) for v in bootstrap_interval(values)] if values else None
        baseline = min((r for r in runs if (r.model, r.mode) == (run.model, run.mode)), key=lambda r: r.temperature)
        rows.append(
            {
                "run": run.label,
                "model": run.model,
                "temperature": run.temperature,
                "mode": run.mode,
                "success_rate": sum(s["passed"] for s in run.samples) / len(run.samples),
                "timed_samples": timed[run.label],
                "problems": len(per_problem),
                "ratio_geomean": math.exp(statistics.mean(values)) if values else None,
                "ratio_interval": interval,
                "against": _paired(run.label, baseline.label, logs) if baseline.label != run.label else None,
            }
        )
    return rows


def _paired(run: str, baseline: str, logs: dict[str, dict[str, float]]) -> dict[str, Any] | None:
    """This run's ratio over the baseline run's on the problems both timed: exp of the mean difference of
    their per-problem log ratios, its paired bootstrap interval and p."""
    common = sorted(set(logs[run]) & set(logs[baseline]))
    if not common:
        return None
    paired = paired_bootstrap([logs[run][t] for t in common], [logs[baseline][t] for t in common])
    return {
        "baseline": baseline,
        "problems": len(common),
        "ratio": math.exp(paired.difference),
        "low": math.exp(paired.low),
        "high": math.exp(paired.high),
        "p": paired.p,
        "significant": paired.significant,
    }


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
    limits = execution.Limits(timeout=config.timeout_s, cpu_seconds=int(config.timeout_s) + 5)
    workloads = calibrate([problems[t] for t in solutions], limits, target_s=config.target_s)
    scaled = [w for w in workloads.values() if w.inputs is not None]
    log(
        f"workloads: {len(scaled)} problems on their inputs scaled (factor median "
        f"{statistics.median(w.factor for w in scaled) if scaled else '-'}), {len(workloads) - len(scaled)} on their tests"
    )
    log(
        f"timing {count} distinct solutions ({len(solutions)} canonical) of {len(solutions)} problems, "
        f"{config.repeats} repetitions each, on core {sorted(os.sched_getaffinity(0))[-1]}"
    )
    measure(solutions, problems, config, workloads)
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
                    "workload": workloads[s.task_id].kind,
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
    plots(out, result)
    write_study(out / "perf.md")
    return result
