"""A second model as the ranker, over a real server: each sample's completion scored by the ranker's
log-probabilities through echo, cached beside the run, used by `eval rank` and by `eval budget` (which
pays for the ranker's reading of each sample)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from client.api import Client
from tests.conftest import ROOT, TINY, TINY_LLAMA
from tests.test_eval_humaneval import lines

# short prompts: a HumanEval prompt overflows the tiny models' 128 positions, and a ranker must hold what it scores
PROMPTS = ["def f(a, b):\n    ", "def f(xs):\n    return [", "import os\n\ndef f():\n"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slipstream.cli", "eval", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def runs(duo_server, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ranked")
    rows = [{"task_id": f"Short/{i}", "prompt": p, "entry_point": "f", "test": "def check(f):\n    f\n"} for i, p in enumerate(PROMPTS)]
    (folder / "short.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for model in (TINY_LLAMA, TINY):
        done = cli(
            "humaneval", "--url", duo_server.url, "--model", model, "--problems", str(folder / "short.jsonl"),
            "--temperatures", "0", "--max-tokens", "8", "--out", str(folder / "runs"),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    return folder / "runs"


def test_the_ranker_scores_each_completion_by_its_own_log_probabilities(duo_server, runs: Path) -> None:
    done = cli("rank", str(runs), "--ranker", TINY_LLAMA, "--url", duo_server.url)
    assert done.returncode == 0, done.stderr[-3000:]
    for model in (TINY_LLAMA, TINY):
        samples = lines(runs / model / "t0" / "samples.jsonl")
        cache = runs / model / "t0" / f"ranker-{TINY_LLAMA}.jsonl"
        scored = {(r["task_id"], r["sample"]): r for r in lines(cache)}
        assert set(scored) == {(s["task_id"], s["sample"]) for s in samples}
        same = 0
        for s in samples:
            row = scored[(s["task_id"], s["sample"])]
            assert row["ranker"] == TINY_LLAMA and row["tokens"] > 0 and row["mean_logprob"] <= 0
            if model == TINY_LLAMA and row["tokens"] == s["completion_tokens"]:
                # the Llama's greedy text, read back by the Llama: the same tokens, the same log-probabilities
                assert row["mean_logprob"] == pytest.approx(s["mean_logprob"], abs=1e-3)
                same += 1
            if model == TINY:  # another model's text: the Llama's view of it, not the CodeGen's own
                assert row["mean_logprob"] != pytest.approx(s["mean_logprob"], abs=1e-3)
        assert model == TINY or same >= 2  # most greedy texts tokenise back the same (a run of newlines need not)
    ranked = {r["model"]: r for r in json.loads((runs / "rank.json").read_text())}
    assert f"{TINY_LLAMA} mean logprob" in ranked[TINY]["rank_score"]
    # a second rank reads the cache: nothing asked again
    before = (runs / TINY / "t0" / f"ranker-{TINY_LLAMA}.jsonl").read_bytes()
    again = cli("rank", str(runs), "--ranker", TINY_LLAMA, "--url", duo_server.url)
    assert again.returncode == 0 and (runs / TINY / "t0" / f"ranker-{TINY_LLAMA}.jsonl").read_bytes() == before


def test_budget_with_a_ranker_pays_for_its_reading_of_each_sample(duo_server, runs: Path, tmp_path: Path) -> None:
    done = cli("budget", str(runs), "--url", duo_server.url, "--ranker", TINY_LLAMA, "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "budget.json").read_text())
    with Client(duo_server.url) as client:
        parameters = {m["id"]: m["parameters"] for m in client.models()}
    assert result["ranker"] == TINY_LLAMA
    for cost in result["costs"]:
        assert cost["ranker_flops"] == pytest.approx(2 * parameters[TINY_LLAMA] * (cost["prompt_tokens"] + cost["generated_tokens"]))
        assert cost["ranker_seconds"] > 0
    for curves in result["curves"].values():
        assert all(rk <= k for c in curves for rk, k in zip(c["rank_k"], c["k"], strict=True))
        # the cheapest sample's budget buys that sample, not its ranking too: ranked, nothing is submitted
        cheapest = next(c for c in curves if c["k"][0] == 1)
        assert cheapest["units"][0] == 1.0 and cheapest["rank_k"][0] == 0 and cheapest["rank_score"][0] == 0.0
    assert f"by {TINY_LLAMA}'s mean log-probability" in (tmp_path / "budget.md").read_text()
    flops_only = cli("budget", str(runs), "--flops-only", "--ranker", TINY_LLAMA, "--parameters", f"{TINY}=1e6")
    assert flops_only.returncode == 1 and "--ranker scores the samples on a server" in flops_only.stderr


def test_the_ranker_refuses_an_instruct_run(duo_server, runs: Path, tmp_path: Path) -> None:
    instruct = tmp_path / "instruct"
    done = cli(
        "humaneval", "--url", duo_server.url, "--model", TINY_LLAMA, "--mode", "instruct", "--limit", "1",
        "--temperatures", "0", "--max-tokens", "4", "--out", str(instruct),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    refused = cli("rank", str(instruct), "--ranker", TINY, "--url", duo_server.url)
    assert refused.returncode == 1 and "the ranker scores completion-mode runs" in refused.stderr
