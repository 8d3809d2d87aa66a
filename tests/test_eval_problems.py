"""`--problems FILE`: HumanEval- and EvalPlus-format JSONL the tests write, read with clear errors,
executed for real (EvalPlus's base and plus inputs against the canonical solution's outputs), and
end to end through `slipstream eval humaneval` against a real server."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from hashlib import sha256
from pathlib import Path

import pytest

from eval import execution
from eval.datasets import ProblemsError, humaneval, humaneval_file, load_problems
from eval.humaneval import execute, problem_counts
from tests.conftest import ROOT, TINY
from tests.test_eval_humaneval import eval_humaneval, lines

ADD = {
    "task_id": "Plus/add",
    "prompt": "def add(a, b):\n",
    "entry_point": "add",
    "canonical_solution": "    return a + b\n",
    "base_input": [[1, 2], [3, 4]],
    "plus_input": [[-1, -1], [10**6, 1]],
    "atol": 0,
}
HALF = {
    "task_id": "Plus/half",
    "prompt": "def half(x):\n",
    "entry_point": "half",
    "canonical_solution": "    return x / 2\n",
    "base_input": [[1.0]],
    "plus_input": [[3.0], [1e300]],
    "atol": 0,
}
# HumanEval's find_zero: any root is right, judged by poly(xs, x) ~ 0 rather than by equality
FIND_ZERO = next(p for p in humaneval() if p.entry_point == "find_zero")


def eval_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slipstream.cli", "eval", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def write(path: Path, rows: list[dict]) -> Path:
    text = "".join(json.dumps(row) + "\n" for row in rows)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def test_humaneval_format_files_read_as_humaneval_reads_its_own(tmp_path: Path) -> None:
    own = humaneval(3)
    rows = [
        {"task_id": p.task_id, "prompt": p.prompt, "entry_point": p.entry_point, "canonical_solution": p.canonical_solution, "test": p.test}
        for p in own
    ]
    for name in ("three.jsonl", "three.jsonl.gz"):
        assert load_problems(write(tmp_path / name, rows)) == own
    assert load_problems(tmp_path / "three.jsonl", limit=2) == own[:2]
    plus = load_problems(write(tmp_path / "plus.jsonl", [ADD, HALF]))
    assert [p.plus for p in plus] == [True, True] and "def check(candidate)" in plus[0].test


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "no problems in it"),
        ('{"task_id": "a", "prompt": "x"\n', ":1: not JSON"),
        ("[1, 2]\n", ":1: a record must be a JSON object"),
        ('\n{"task_id": "a", "prompt": "x", "entry_point": "f"}\n', ":2: a HumanEval-format record lacks test"),
        (
            json.dumps({k: v for k, v in ADD.items() if k != "canonical_solution"}) + "\n",
            "an EvalPlus-format record lacks canonical_solution",
        ),
        (json.dumps(ADD | {"plus_input": [1, 2]}) + "\n", "plus_input must be a list of argument lists"),
        (json.dumps(ADD | {"atol": -1}) + "\n", "atol must be a number >= 0"),
        (json.dumps(ADD | {"entry_point": 3}) + "\n", "entry_point must be text"),
        (json.dumps(ADD) + "\n" + json.dumps(ADD) + "\n", ":2: task_id 'Plus/add' appears twice"),
    ],
)
def test_a_bad_problems_file_is_named_with_its_line(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(
        ProblemsError, match=f"bad.jsonl{'' if error.startswith(':') else '.*'}{error}".replace("[", r"\[").replace("]", r"\]")
    ):
        load_problems(path)
    with pytest.raises(ProblemsError, match="no such problems file"):
        load_problems(tmp_path / "missing.jsonl")


def test_evalplus_verdicts_compare_with_the_canonical_solution_on_base_and_plus_inputs(tmp_path: Path) -> None:
    problems = load_problems(write(tmp_path / "plus.jsonl", [ADD, HALF]))
    zero = {
        "task_id": "Plus/find_zero",
        "prompt": FIND_ZERO.prompt,
        "entry_point": "find_zero",
        "canonical_solution": FIND_ZERO.canonical_solution,
        "base_input": [[[1, 2]], [[-6, 11, -6, 1]]],
        # roots 1, 2, 3 and 1, -1: the reference's bisection finds 1 and -1, the candidate below 3 and 1
        "plus_input": [[[1, 0, -1, 0]]],
        "atol": 1e-4,
    }
    problems += load_problems(write(tmp_path / "zero.jsonl", [zero]))
    by_id = {p.task_id: p for p in problems}
    completions = [
        ("Plus/add", "    return a + b\n", True, True),
        ("Plus/add", "    return a + b if a >= 0 else 0\n", True, False),  # right on the base inputs only
        ("Plus/add", "    return 3\n", False, False),
        ("Plus/half", "    return x * 0.5 + 1e-12\n", True, True),  # within the float tolerance
        ("Plus/half", "    return x // 2\n", False, False),  # 0.0 for 0.5
        ("Plus/half", "    return round(x / 2, 1)\n", True, True),  # 1.5 stays 1.5; 5e299 rounds to itself
        ("Plus/find_zero", "    return 3.0 if len(xs) == 4 and xs[0] == -6 else (-0.5 if len(xs) == 2 else 1.0)\n", True, True),
        ("Plus/find_zero", "    return 0.0\n", False, False),
    ]
    samples = [{"task_id": task, "sample": i, "completion": text} for i, (task, text, _, _) in enumerate(completions)]
    results, executed, _ = execute(by_id, samples, tmp_path / "results.jsonl", execution.DEFAULT_LIMITS, workers=2)
    assert executed == len(samples)
    verdicts = {r["sample"]: (r["base_passed"], r["passed"]) for r in results}
    assert verdicts == {i: (base, plus) for i, (_, _, base, plus) in enumerate(completions)}
    assert problem_counts(problems, results) == {"Plus/add": (3, 1), "Plus/half": (3, 2), "Plus/find_zero": (2, 1)}
    assert problem_counts(problems, results, "base_passed") == {"Plus/add": (3, 2), "Plus/half": (3, 2), "Plus/find_zero": (2, 1)}


def test_eval_humaneval_runs_a_problems_file_and_reports_base_and_plus(tiny_server, tmp_path: Path) -> None:
    # each prompt holds the whole function and ends in a comment that the model's one greedy token
    # continues, so the verdicts are the prompt's; the reference is prompt + canonical_solution, which
    # defines the function again, rightly
    rows = [
        ADD
        | {"prompt": "def add(a, b):\n    return a + b if a >= 0 else 0  #", "canonical_solution": "\ndef add(a, b):\n    return a + b\n"},
        HALF | {"prompt": "def half(x):\n    return x * 0.5  #", "canonical_solution": "\ndef half(x):\n    return x / 2\n"},
    ]
    problems = write(tmp_path / "tiny-plus.jsonl", rows)
    out = tmp_path / "runs"
    done = eval_humaneval(tiny_server.url, out, "--problems", str(problems), "--temperatures", "0", "--max-tokens", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    run = out / TINY / "t0"
    verdicts = {r["task_id"]: (r["base_passed"], r["passed"]) for r in lines(run / "results.jsonl")}
    assert verdicts == {"Plus/add": (True, False), "Plus/half": (True, True)}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["dataset"] == "tiny-plus" and summary["problems"] == 2
    assert summary["pass_at_k"] == {"1": 0.5} and summary["pass_at_k_base"] == {"1": 1.0}
    assert "(base inputs only: pass@1 1.000)" in done.stdout
    held = json.loads((run / "manifest.json").read_text())["dataset"]
    assert held["file"] == "tiny-plus.jsonl" and held["path"] == str(problems.resolve())
    report = (out / "report.md").read_text()
    assert report.startswith("# tiny-plus") and "pass@1 (base + plus)" in report and "pass@1 (base)" in report
    assert "| tiny-plus | tiny-codegen | completion | 0 (greedy) | 1 | 50.0% [0.0, 100.0] | 100.0% [100.0, 100.0] |" in report

    # the studies read the problems back from the file the manifest names
    flops = tmp_path / "budget"
    budget = eval_cli("budget", str(out), "--flops-only", "--parameters", f"{TINY}=1000", "--out", str(flops))
    assert budget.returncode == 0, budget.stderr[-3000:]
    assert json.loads((flops / "budget.json").read_text())["costs"][0]["prompt_tokens"] > 0

    # the same folder with HumanEval's problems: refused, the dataset named; nothing written
    before = (run / "samples.jsonl").read_bytes()
    other = eval_humaneval(tiny_server.url, out, "--temperatures", "0", "--max-tokens", "1")
    assert other.returncode == 1 and "dataset: {'file': 'tiny-plus.jsonl'" in other.stderr and "HumanEval.jsonl.gz" in other.stderr
    assert (run / "samples.jsonl").read_bytes() == before

    # a HumanEval run moved from another machine: its manifest names a package path that is gone here,
    # but the file's hash says HumanEval, so the studies read the problems from this machine's package
    from eval.runs import RunsError, load_runs, problems_of

    moved = out / TINY / "t0-moved"
    shutil.copytree(run, moved)
    (moved / "samples.jsonl").write_text("")
    record = json.loads((run / "manifest.json").read_text())
    record["dataset"] = {
        "file": "HumanEval.jsonl.gz",
        "sha256": sha256(humaneval_file().read_bytes()).hexdigest(),
        "path": "/gone/HumanEval.jsonl.gz",
    }
    (moved / "manifest.json").write_text(json.dumps(record))
    (moved / "samples.jsonl").write_text(
        (run / "samples.jsonl").read_text().replace("Plus/add", "HumanEval/0").replace("Plus/half", "HumanEval/1")
    )
    (moved / "results.jsonl").write_text(
        (run / "results.jsonl").read_text().replace("Plus/add", "HumanEval/0").replace("Plus/half", "HumanEval/1")
    )
    [moved_run] = [r for r in load_runs(out) if r.folder == moved]
    assert moved_run.problems_file is None and "HumanEval/0" in problems_of([moved_run])
    record["dataset"] |= {"file": "other.jsonl", "sha256": "0" * 64, "path": "/gone/other.jsonl"}
    (moved / "manifest.json").write_text(json.dumps(record))
    with pytest.raises(RunsError, match="its problems file /gone/other.jsonl is gone"):
        load_runs(out)
    shutil.rmtree(moved)

    # a bad file: a clear error before anything is asked of the server
    bad = write(tmp_path / "bad.jsonl", [{"task_id": "x", "prompt": "def f():\n"}])
    refused = eval_humaneval(tiny_server.url, tmp_path / "never", "--problems", str(bad))
    assert refused.returncode == 1 and "bad.jsonl:1: a HumanEval-format record lacks entry_point, test" in refused.stderr
    assert not (tmp_path / "never").exists()


def test_the_perf_workload_is_a_problems_own_inputs(tmp_path: Path) -> None:
    from eval.perf_workload import problem_inputs, scale_args

    [plus] = load_problems(write(tmp_path / "plus.jsonl", [ADD]))
    assert problem_inputs(plus) == [[1, 2], [3, 4], [-1, -1], [10**6, 1]]  # EvalPlus: base, then plus
    # HumanEval: the literal arguments of the test's candidate(...) calls, in order, each once
    zero = humaneval(1)[0]
    found = problem_inputs(zero)
    assert found is not None and len(found) == 7 and found[0] == [[1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3]
    assert problem_inputs(FIND_ZERO) is None  # its test draws random polynomials: timed on the test itself
    # scaling repeats sequences, never numbers
    assert scale_args([[1, 2], "ab", (3,), 7, 0.5], 3) == [[1, 2] * 3, "ababab", (3, 3, 3), 7, 0.5]
