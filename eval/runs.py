"""The HumanEval runs under a folder, as written by `slipstream eval humaneval`: every sample with its
verdict, so that budget curves, rankings and the perf study read the same records."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.datasets import Problem, humaneval_file, load_problems
from eval.generate import read_jsonl
from eval.manifest import file_hash


@dataclass
class HumanEvalRun:
    model: str
    temperature: float
    mode: str
    folder: Path
    samples: list[dict[str, Any]]  # samples.jsonl rows with `passed` and `result` from results.jsonl
    problems_file: Path | None = None  # the --problems file its manifest names; None: HumanEval's own
    tokens_per_s: float = 0.0  # the generation's own aggregate rate (summary.json; 0 where not recorded)

    @property
    def label(self) -> str:
        kind = "" if self.mode == "completion" else f" ({self.mode})"
        return f"{self.model}{kind} t={self.temperature:g}"

    def by_problem(self) -> dict[str, list[dict[str, Any]]]:
        problems: dict[str, list[dict[str, Any]]] = {}
        for sample in sorted(self.samples, key=lambda s: s["sample"]):
            problems.setdefault(sample["task_id"], []).append(sample)
        return problems


class RunsError(ValueError):
    """The folder holds no finished HumanEval run, or one whose files disagree."""


def load_runs(root: Path) -> list[HumanEvalRun]:
    """Every finished run (a folder with summary.json) under root, samples joined with their verdicts;
    a sample without a verdict is an error (the run was not finished: run the same humaneval command)."""
    if not root.is_dir():
        raise RunsError(f"{root} is not a folder")
    runs = []
    for summary_path in sorted(root.rglob("summary.json")):
        folder = summary_path.parent
        summary = json.loads(summary_path.read_text())
        verdicts = {(r["task_id"], r["sample"]): r for r in read_jsonl(folder / "results.jsonl")}
        samples = []
        for row in read_jsonl(folder / "samples.jsonl"):
            verdict = verdicts.get((row["task_id"], row["sample"]))
            if verdict is None:
                continue  # a sample beyond the run's n or --limit (humaneval scores only its own)
            samples.append(row | {"passed": bool(verdict["passed"]), "result": verdict["result"]})
        if not samples:
            raise RunsError(f"{folder}: summary.json but no executed sample: run `slipstream eval humaneval` again")
        run = HumanEvalRun(summary["model"], float(summary["temperature"]), summary.get("mode", "completion"), folder, samples)
        run.problems_file = _problems_file(folder)
        run.tokens_per_s = float(summary.get("tokens_per_s") or 0.0)
        runs.append(run)
    if not runs:
        raise RunsError(f"no HumanEval run under {root} (looked for */summary.json from `slipstream eval humaneval`)")
    return runs


def _problems_file(folder: Path) -> Path | None:
    """The problems file a run's manifest names (None for HumanEval's own, or a run from before manifests)."""
    path = folder / "manifest.json"
    if not path.is_file():
        return None
    dataset = json.loads(path.read_text()).get("dataset", {})
    held = dataset.get("path")
    # HumanEval's own file, wherever its package was installed when the run was made (folders move)
    if held is None or Path(held).resolve() == humaneval_file().resolve() or dataset.get("sha256") == _humaneval_sha256():
        return None
    if not Path(held).is_file():
        raise RunsError(f"{folder}: its problems file {held} is gone: put it back, the studies need its tests and prompts")
    return Path(held)


def problems_of(runs: list[HumanEvalRun]) -> dict[str, Problem]:
    """Every problem the runs were generated from, by task_id, read from each run's own problems file."""
    problems: dict[str, Problem] = {}
    for source in dict.fromkeys(run.problems_file for run in runs):
        for problem in load_problems(source):
            held = problems.setdefault(problem.task_id, problem)
            if held != problem:
                raise RunsError(f"the runs come from problem sets that disagree on {problem.task_id}: study them apart")
    return problems


@functools.cache
def _humaneval_sha256() -> str:
    return file_hash(humaneval_file())
