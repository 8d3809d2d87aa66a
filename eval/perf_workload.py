"""What the perf study times each solution on: the problem's own inputs, scaled until they separate
solutions. HumanEval's asserts run in microseconds, so timing them times mostly the harness.

A problem's inputs: an EvalPlus record's base and plus inputs, else the literal arguments of every
`candidate(...)` call in HumanEval's test (161 of the 164 problems have them; the others are timed on
their tests, as before). Scaling repeats every sequence argument (a list, tuple or string) `factor`
times; numbers stay as they are (a scaled n would change what the problem computes, not how fast a
solution does it). The factor is calibrated once per problem on the canonical solution: doubled until
one pass over the scaled inputs takes at least `target_s`, stopping at the last factor the canonical
solution handled within `cap_s` without an error. Each solution is then timed on the same scaled
inputs, after its outputs on them are checked against the canonical solution's (a solution that
passed the tests but differs on the scaled inputs is not timed, and said so)."""

from __future__ import annotations

import ast
import base64
import json
import pickle
import re
from dataclasses import dataclass
from typing import Any

from eval import execution
from eval.datasets import Problem

# one source for the host (which scales the inputs it embeds) and the calibration program (which tries factors)
SCALE_SOURCE = """
def scale_args(args, factor):
    return [a * factor if isinstance(a, (list, tuple, str)) else a for a in args]
"""
_SCALE: dict[str, Any] = {}
exec(SCALE_SOURCE, _SCALE)  # noqa: S102 - our own constant, shared with the programs
scale_args = _SCALE["scale_args"]

_FACTOR = "SLIPSTREAM_FACTOR "
_CALIBRATE = """
def __slipstream_calibrate():
    import copy, json, pickle, base64, sys, time
{scale}
    inputs = pickle.loads(base64.b64decode({inputs!r}))
    fn = globals()[{entry_point!r}]
    scalable = any(isinstance(a, (list, tuple, str)) and len(a) > 0 for args in inputs for a in args)
    good, took = 1, None
    factor = 1
    while factor <= {max_factor}:
        scaled = [scale_args(a, factor) for a in inputs]
        copies = copy.deepcopy(scaled)
        started = time.perf_counter()
        try:
            for args in copies:
                fn(*args)
        except Exception:
            break
        elapsed = time.perf_counter() - started
        if elapsed > {cap_s}:
            break
        good, took = factor, elapsed
        if elapsed >= {target_s} or not scalable:
            break
        factor *= 2
    sys.stderr.write("{marker}" + json.dumps({{"factor": good, "seconds": took}}) + "\\n")
__slipstream_calibrate()
"""


@dataclass(frozen=True)
class Workload:
    task_id: str
    inputs: list[list[Any]] | None  # the scaled argument lists; None: the problem's tests are timed
    factor: int  # 1 for tests
    reference_s: float | None  # the canonical solution's one pass at calibration

    @property
    def kind(self) -> str:
        return "tests" if self.inputs is None else f"inputs x{self.factor}"


def problem_inputs(problem: Problem) -> list[list[Any]] | None:
    """The problem's argument lists: EvalPlus's base + plus inputs, or the literal arguments of the
    test's candidate(...) calls (in order, each distinct once); None where there are none."""
    if problem.inputs:
        return json.loads(problem.inputs) or None
    found, seen = [], set()
    try:
        tree = ast.parse(problem.test)
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "candidate" and not node.keywords:
            try:
                args = [ast.literal_eval(a) for a in node.args]
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                continue
            key = repr(args)
            if key not in seen:
                seen.add(key)
                found.append(args)
    return found or None


def embed(value: Any) -> str:
    """Python values (tuples, sets, inf included) as text a program turns back into them."""
    return base64.b64encode(pickle.dumps(value)).decode()


def calibrate(
    problems: list[Problem], limits: execution.Limits, target_s: float = 0.01, cap_s: float = 0.5, max_factor: int = 4096
) -> dict[str, Workload]:
    """Each problem's workload: its inputs scaled by the factor calibrated on its canonical solution."""
    programs, chosen = [], []
    indented = "\n".join("    " + line for line in SCALE_SOURCE.strip().splitlines())
    for problem in problems:
        inputs = problem_inputs(problem)
        if inputs is None:
            continue
        chosen.append((problem, inputs))
        harness = _CALIBRATE.format(
            scale=indented,
            inputs=embed(inputs),
            entry_point=problem.entry_point,
            max_factor=max_factor,
            cap_s=cap_s,
            target_s=target_s,
            marker=_FACTOR,
        )
        programs.append(f"{problem.prompt}{problem.canonical_solution}\n" + harness)
    workloads = {p.task_id: Workload(p.task_id, None, 1, None) for p in problems}
    for (problem, inputs), result in zip(chosen, execution.run_many(programs, limits, workers=1), strict=True):
        match = re.search(re.escape(_FACTOR) + r"(\{.*\})", result.stderr)
        if result.passed and match:
            found = json.loads(match.group(1))
            if found["seconds"] is not None:  # the canonical solution ran on the inputs at least once
                scaled = [scale_args(a, found["factor"]) for a in inputs]
                workloads[problem.task_id] = Workload(problem.task_id, scaled, found["factor"], found["seconds"])
    return workloads
