"""The research studies end to end: `slipstream eval perf / budget / rank / perplexity / report` on run
folders of real HumanEval problems, real execution of the code, real server processes (tiny models)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from client.api import Client
from eval import execution, perplexity
from eval.datasets import humaneval
from eval.humaneval import execute, run_dir
from tests.conftest import ROOT, TINY, TINY_LLAMA, ServerProcess

PROBLEM = humaneval(1)[0]  # HumanEval/0, has_close_elements
CANONICAL = PROBLEM.canonical_solution
SLOW = "    sum(range(300000))  # a few ms of waste per call\n" + CANONICAL
# passes its tests once, fails when they are run again: timing must say so, not time it
STATEFUL = "    _calls.append(1)\n    if len(_calls) > 12:\n        raise RuntimeError('stateful')\n" + CANONICAL + "\n_calls = []\n"
WRONG = "    return True\n"
# passes the tests, but not on inputs longer than theirs: not timed, said so
LONG_WRONG = "    if len(numbers) > 1000:\n        return False\n" + CANONICAL
# sorts its argument in place: called on a fresh copy each pass (the copies made before the clock starts)
MUTATES = "    numbers.sort()\n" + CANONICAL


def slipstream(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "slipstream.cli", "eval", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def write_run(
    out: Path, model: str, temperature: float, completions: list[tuple[str, str]], execute_them: bool = True, tokens_per_s: float = 0.0
) -> Path:
    """A run folder as `eval humaneval` writes it, from (task_id, completion) pairs; verdicts by real execution."""
    folder = run_dir(out, model, temperature)
    folder.mkdir(parents=True)
    samples, index = [], {}
    for task, completion in completions:
        i = index[task] = index.get(task, -1) + 1
        samples.append(
            {
                "task_id": task,
                "completion": completion,
                "sample": i,
                "model": model,
                "temperature": temperature,
                "top_p": 0.95,
                "seed": 0,
                "prompt_format": "raw",
                "mode": "completion",
                "finish_reason": "stop" if i % 3 else "length",
                "completion_tokens": 20 + 5 * i,
                "prompt_tokens": 120,
                "mean_logprob": -0.1 * (i + 1),
                "sum_logprob": -0.1 * (i + 1) * (20 + 5 * i),
                "latency_s": 0.1,
            }
        )
    (folder / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    problems = {p.task_id: p for p in humaneval()}
    execute(problems, samples, folder / "results.jsonl", execution.DEFAULT_LIMITS, workers=1)
    summary = {"model": model, "temperature": temperature, "mode": "completion", "tokens_per_s": tokens_per_s}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_perf_times_passing_samples_against_the_canonical_solution(tmp_path: Path) -> None:
    task = PROBLEM.task_id
    completions = [(task, CANONICAL), (task, SLOW), (task, STATEFUL), (task, SLOW), (task, WRONG), (task, LONG_WRONG), (task, MUTATES)]
    # HumanEval/47's function is called median, a name the timing harness uses for its own figures
    median = next(p for p in humaneval() if p.entry_point == "median")
    write_run(tmp_path, "m", 0.2, [*completions, (median.task_id, median.canonical_solution)])
    done = slipstream("perf", str(tmp_path), "--repeats", "2", "--rounds", "3", "--min-round-ms", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "perf.json").read_text())
    assert f"generated code runs in the {result['box']} box" in done.stdout and result["box"] != "none"
    assert f"{result['box']} box" in (tmp_path / "perf.md").read_text()
    [timed_median] = [s for s in result["solutions"] if s["task_id"] == median.task_id]
    assert timed_median["error"] is None and timed_median["ratio"] == 1.0
    result["solutions"] = [s for s in result["solutions"] if s["task_id"] == task]
    by_code = {s["samples"][0]["sample"] if s["samples"] else "canonical": s for s in result["solutions"]}
    # the sample identical to the canonical solution is timed with it, once; the two slow ones once, together
    assert set(by_code) == {0, 1, 2, 5, 6} and [x["sample"] for x in by_code[1]["samples"]] == [1, 3]
    canonical, slow, stateful = by_code[0], by_code[1], by_code[2]
    assert by_code[5]["error"] == "differs from the canonical solution on scaled input 0" and by_code[5]["seconds"] is None
    assert by_code[6]["error"] is None and by_code[6]["seconds"] > 0
    assert canonical["canonical"] and canonical["ratio"] == 1.0 and len(canonical["medians"]) == 2
    assert slow["ratio"] > 20 and slow["seconds"] > 5 * 7 * 1e-4  # 7 inputs a pass, each call summing 300k numbers
    # the test's 7 literal inputs, repeated until the canonical solution's pass is long enough (its early
    # exit on a repeated number keeps it short: the factor reaches its cap)
    assert {s["workload"] for s in result["solutions"]} == {"inputs x4096"}
    assert "2 problems on scaled inputs" in (tmp_path / "perf.md").read_text()
    assert stateful["error"].startswith("failed while being timed") and stateful["seconds"] is None
    assert 0 <= canonical["cv"] < 1 and result["noise"]["solutions"] == 4  # HumanEval/47 counted too
    (row,) = result["runs"]
    assert row["timed_samples"] == 5 and row["success_rate"] == pytest.approx(7 / 8)  # WRONG fails
    # per problem first (HumanEval/0: the geometric mean of its 4 timed samples; HumanEval/47: 1), then across them
    first = (1 * slow["ratio"] ** 2 * by_code[6]["ratio"]) ** (1 / 4)
    assert row["ratio_geomean"] == pytest.approx((first * 1.0) ** (1 / 2)) and row["problems"] == 2
    assert "could not be timed" in (tmp_path / "perf.md").read_text()
    assert (tmp_path / "perf.png").stat().st_size > 1000 and (tmp_path / "perf_problems.png").stat().st_size > 1000


def test_rank_and_report_from_a_run_folder(tmp_path: Path) -> None:
    task = PROBLEM.task_id
    write_run(tmp_path, "m", 0.8, [(task, WRONG), (task, CANONICAL), (task, WRONG), (task, SLOW)])
    done = slipstream("rank", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    (result,) = json.loads((tmp_path / "rank.json").read_text())
    # finish "length" on samples 0 and 3 (every third): kept 1 (passes, mean -0.2) and 2 (fails, mean -0.3)
    assert result["kept"] == 2 and result["pass_at_k"]["1"] == pytest.approx(0.5)
    # k = 2 drawn from all 4: {0,1} 1, {0,2} 0, {0,3} none ended: 0, {1,2} 1 (by score; 0.5 at random), {1,3} 1, {2,3} 0
    assert result["rank_score"]["mean logprob"]["2"] == pytest.approx(3 / 6)
    assert result["rank_score"]["random"]["2"] == pytest.approx(2.5 / 6)
    assert result["rank_score"]["mean logprob"]["1"] == pytest.approx(1 / 4)  # only sample 1 both ended and passes
    low, high = result["rank_score_interval"]["mean logprob"]["2"]
    assert low == high == pytest.approx(0.5)  # one problem: every resample is itself
    assert result["mean_over_random"]["2"]["difference"] == pytest.approx(0.5 / 6)
    assert "mean logprob - random (paired)" in (tmp_path / "rank.md").read_text()
    page = slipstream("report", str(tmp_path))
    assert page.returncode == 0, page.stderr
    index = (tmp_path / "index.md").read_text()
    assert "## Ranking without tests" in index and "![rank.png](rank.png)" in index and "[rank.json](rank.json)" in index
    empty = slipstream("rank", str(tmp_path / "nothing"))
    assert empty.returncode == 1 and "is not a folder" in empty.stderr


def test_budget_curves_with_rates_measured_on_the_server(duo_server, tmp_path: Path) -> None:
    task = PROBLEM.task_id
    write_run(tmp_path, TINY, 0.8, [(task, CANONICAL), (task, WRONG)] * 2, tokens_per_s=100.0)
    write_run(tmp_path, TINY_LLAMA, 0.8, [(task, WRONG), (task, CANONICAL)], tokens_per_s=50.0)
    refused = slipstream("budget", str(tmp_path), "--flops-only")
    assert refused.returncode == 1 and "no parameter count for" in refused.stderr
    done = slipstream("budget", str(tmp_path), "--url", duo_server.url)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "budget.json").read_text())
    with Client(duo_server.url) as client:
        served = {m["id"]: m["parameters"] for m in client.models()}
    for cost in result["costs"]:
        assert cost["parameters"] == served[cost["model"]] and cost["prompt_tokens"] == 120
        rates = cost["rates"]
        assert rates["prefill_tok_s"] > 0 and rates["best_batch"] in (1, 2, 4, 8, 16, 32, 64)
        assert sorted(map(int, rates["by_batch"])) == [1, 2, 4, 8, 16, 32, 64]  # up to the server's 64 rows
        assert rates["decode_tok_s"] == max(rates["by_batch"].values())
    assert set(result["curves"]) == {"flops@t0.8", "seconds@t0.8"}
    # the paper's setting: k up to half the samples drawn (4 for the CodeGen run, 2 for the Llama's)
    assert result["k_limit"] == "half"
    for curves in result["curves"].values():
        assert {c["run"]: max(c["k"]) for c in curves} == {f"{TINY} t=0.8": 2, f"{TINY_LLAMA} t=0.8": 1}
    for curves in result["curves"].values():
        assert min(c["units"][0] for c in curves) == 1.0
        assert all(c["k"] == sorted(c["k"]) for c in curves)  # more budget never buys fewer samples
        assert any(c["k"][0] == 0 and c["score"][0] == 0.0 for c in curves) or len({c["k"][0] for c in curves}) == 1
    assert "Who wins: flops@t0.8" in (tmp_path / "budget.md").read_text()
    # without tests: the same k's best by mean logprob. The CodeGen run (finish length on samples 0 and 3):
    # k = 1 submits sample 2 (the one both ended and passes) a quarter of the time; k = 2 of 4: {0,2} and {2,3} pass
    for key, curves in result["curves"].items():
        tiny = next(c for c in curves if c["run"] == f"{TINY} t=0.8")
        by_k = dict(zip(tiny["k"], tiny["rank_score"], strict=True))
        assert all(score == pytest.approx({0: 0.0, 1: 1 / 4, 2: 2 / 6}[k]) for k, score in by_k.items())
        assert key.startswith("seconds") or set(by_k) >= {1, 2}  # the time axis' steps depend on the measured rates
        assert all(low == high == pytest.approx(score) for (low, high), score in zip(tiny["score_interval"], tiny["score"], strict=True))
    for rows in result["winners"].values():
        for row in rows:  # one problem: the lead is the score difference, its interval a point
            if row["lead"]:
                scores = sorted((e[1] for e in row["entries"].values()), reverse=True)
                assert row["lead"]["difference"] == pytest.approx(scores[0] - scores[1])
                assert row["lead"]["significant"] == (scores[0] > scores[1])

    # the time axis at each run's own rate: no server, seconds per sample = G / the run's tok/s
    own = slipstream(
        "budget", str(tmp_path), "--flops-only", "--time-at", "run", "--parameters", f"{TINY}=1e6", "--parameters", f"{TINY_LLAMA}=2e6"
    )
    assert own.returncode == 0, own.stderr[-3000:]
    result = json.loads((tmp_path / "budget.json").read_text())
    assert result["time_at"] == "run" and set(result["curves"]) == {"flops@t0.8", "seconds@t0.8"}
    assert {c["run"]: c["run_tok_s"] for c in result["costs"]} == {f"{TINY} t=0.8": 100.0, f"{TINY_LLAMA} t=0.8": 50.0}
    # G: the CodeGen's 20, 25, 30, 35 tokens at 100 tok/s (0.275 s), the Llama's 20, 25 at 50 (0.45 s)
    assert result["curves"]["seconds@t0.8"][0]["budgets"][0] == pytest.approx(0.275)
    summary = tmp_path / TINY / "t0.8" / "summary.json"
    summary.write_text(json.dumps(json.loads(summary.read_text()) | {"tokens_per_s": 0}))
    unknown = slipstream(
        "budget", str(tmp_path), "--flops-only", "--time-at", "run", "--parameters", f"{TINY}=1e6", "--parameters", f"{TINY_LLAMA}=2e6"
    )
    assert unknown.returncode == 1 and "records no generation rate" in unknown.stderr


def test_perplexity_per_language_through_echo(tiny_server, tiny_repo: Path, tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    python, c = tmp_path / "py", tmp_path / "c"
    python.mkdir()
    c.mkdir()
    source = Path(execution.__file__).read_text()[:2500]
    (python / "a.py").write_text(source)
    (python / "b.py").write_text(Path(__file__).read_text()[:1500])
    (python / "small.py").write_text("x = 1\n")  # under 1000 bytes: not picked
    (c / "a.h").write_text("".join(f"int f{i}(int x) {{ return x * {i}; }}\n" for i in range(60)))
    done = slipstream(
        "perplexity",
        "--url",
        tiny_server.url,
        "--model",
        TINY,
        "--lang",
        f"python={python}",
        "--lang",
        f"c={c}",
        "--method",
        "windows",
        "--window",
        "512",
        "--overlap",
        "0.25",
        "--out",
        str(tmp_path / "out"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "perplexity.json").read_text())
    rows = {r["language"]: r for r in result["results"]}
    assert rows["python"]["files"] == 2 and rows["c"]["files"] == 1
    tokenizer = Tokenizer.from_file(str(next((tiny_repo / TINY).rglob("tokenizer.json"))))
    for file in result["files"][TINY]["python"] + result["files"][TINY]["c"]:
        text = Path(file["path"]).read_text()
        # a 512-token window overflows the tiny model's 128: windows halve until they fit, and every token
        # of the file is counted once (give or take one per window edge, where tokens split differently)
        assert file["windows"] > 1
        whole = len(tokenizer.encode(text).ids)
        assert abs(file["model_tokens"] + file["unscored"] - whole) <= file["windows"] + 1
        assert file["logprob"] < 0
    for r in rows.values():
        assert r["perplexity"] == pytest.approx(2.718281828 ** (-r["logprob"] / r["lexer_tokens"]))
    assert "| tiny-codegen | c |" in (tmp_path / "out" / "perplexity.md").read_text()
    # a later run into the same folder measures C again and keeps Python's earlier result
    (c / "b.c").write_text("".join(f"int g{i}(void) {{ return {i}; }}\n" for i in range(50)))
    again = slipstream(
        "perplexity",
        "--url",
        tiny_server.url,
        "--model",
        TINY,
        "--lang",
        f"c={c}",
        "--method",
        "windows",
        "--window",
        "512",
        "--overlap",
        "0.25",
        "--out",
        str(tmp_path / "out"),
    )
    assert again.returncode == 0, again.stderr[-3000:]
    merged = {r["language"]: r for r in json.loads((tmp_path / "out" / "perplexity.json").read_text())["results"]}
    assert merged["python"] == rows["python"] and merged["c"]["files"] == 2
    missing = slipstream("perplexity", "--url", tiny_server.url, "--model", TINY, "--lang", f"cobol-ish={c}")
    assert missing.returncode == 1 and "no lexer named" in missing.stderr


def test_perplexity_polycoders_method_scores_every_token_at_the_whole_context(duo_server, duo_repo: Path, tmp_path: Path) -> None:
    """PolyCoder's method: the first token scored after <|endoftext|> (neither tiny model has a BOS; a
    model with one scores it after that, below), rolling windows at the whole context (128 here), every
    Pygments token counted; a one-window file's log p equals the graph's own over [EOT] + its tokens."""
    import asyncio

    from client.api import AsyncClient
    from eval.perplexity_scoring import Scored, score_rolling
    from server.engine import Prompter, Runner, log_softmax
    from server.models.store import model_dir

    python = tmp_path / "py"
    python.mkdir()
    short = "def add(a, b):\n    return a + b\n\n\n" * 40  # ~1 KB, many windows
    (python / "long.py").write_text(short)
    out = tmp_path / "out"
    args = ["perplexity", "--url", duo_server.url, "--model", TINY, "--model", TINY_LLAMA, "--lang", f"python={python}", "--out", str(out)]
    done = slipstream(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "perplexity.json").read_text())
    assert result["method"] == "polycoder" and result["window_tokens"] is None
    for model in (TINY, TINY_LLAMA):
        [file] = result["files"][model]["python"]
        prompter = Prompter(duo_repo, model)
        ids = prompter.tokenizer.encode(short, add_special_tokens=False).ids
        assert file["unscored"] == 0 and file["prefixed"]
        assert file["windows"] > 1 and abs(file["model_tokens"] - len(ids)) <= file["windows"]  # every token once
        assert file["windows"] <= len(ids) / 64 + 1  # windows of half the context or more: one token of overlap, not a share
        assert file["lexer_tokens"] == perplexity.lexer_token_count(short, "python", "polycoder")
    [row] = [r for r in result["results"] if r["model"] == TINY]
    low, high = row["perplexity_interval"]
    assert low == high == pytest.approx(row["perplexity"])  # one file: every resample is the file itself
    assert "PolyCoder's method" in (out / "perplexity.md").read_text()

    # text within one window: its log p is the graph's own over <|endoftext|> + its tokens, first token included
    one = "import os\n\n\ndef main():\n    print(os.getcwd())\n" * 3

    def rolling(url: str, model: str) -> Scored:
        async def score() -> Scored:
            async with AsyncClient(url) as client:
                return await score_rolling(client, model, one, 10_000, "<|endoftext|>")

        return asyncio.run(score())

    prompter = Prompter(duo_repo, TINY_LLAMA)
    eot = prompter.tokenizer.token_to_id("<|endoftext|>")
    ids = [eot, *prompter.tokenizer.encode(one, add_special_tokens=False).ids]
    assert len(ids) <= 128
    logits, _ = Runner(model_dir(duo_repo, TINY_LLAMA) / prompter.manifest.onnx_file, threads=1).prefill(ids, all_logits=True)
    expected = float(sum(log_softmax(logits)[i - 1, ids[i]] for i in range(1, len(ids))))
    prefixed = rolling(duo_server.url, TINY_LLAMA)
    assert prefixed.prefixed and prefixed.windows == 1 and prefixed.unscored == 0 and prefixed.tokens == len(ids) - 1
    assert prefixed.logprob == pytest.approx(expected, abs=1e-3)

    # the tiny Llama given a BOS of its own (the same token, put there by the server): nothing prefixed, the same log p
    bos_repo = tmp_path / "bos"
    shutil.copytree(duo_repo / TINY_LLAMA, bos_repo / TINY_LLAMA)
    manifest = json.loads((bos_repo / TINY_LLAMA / "manifest.json").read_text())
    (bos_repo / TINY_LLAMA / "manifest.json").write_text(json.dumps(manifest | {"prompt_prefix_ids": [eot]}))
    with ServerProcess(bos_repo, [TINY_LLAMA]) as server:
        own = rolling(server.url, TINY_LLAMA)
    assert not own.prefixed and own.unscored == 0 and own.tokens == prefixed.tokens
    assert own.logprob == pytest.approx(expected, abs=1e-3)

    # two windows, rebuilt here by hand from echo: the first after <|endoftext|>, cut at its last line break
    # in reach (char 66 of 70); the last reaching back a whole window (chars 50-120), scoring from char 66
    text = "x = 1\n" * 10 + "y = 2\n" * 10

    async def by_hand() -> tuple[Scored, float]:
        async with AsyncClient(duo_server.url) as client:
            got = await score_rolling(client, TINY, text, 70, "<|endoftext|>")

            async def echoed(prompt: str, first: int) -> float:
                lp = (await client.complete(prompt, model=TINY, max_tokens=0, echo=True, logprobs=0))["choices"][0]["logprobs"]
                return sum(v for o, v in zip(lp["text_offset"], lp["token_logprobs"], strict=True) if o >= first and v is not None)

            return got, await echoed("<|endoftext|>" + text[:66], len("<|endoftext|>")) + await echoed(text[50:], 16)

    got, expected = asyncio.run(by_hand())
    assert got.windows == 2 and got.prefixed and got.logprob == pytest.approx(expected, abs=1e-4)

    # the prefix must be one token of the vocabulary; --overlap belongs to the windows method
    bad = slipstream(*args[:7], "--lang", f"python={python}", "--first-token-prefix", "<|no such token|>", "--out", str(tmp_path / "x"))
    assert bad.returncode == 1 and "is not one token of its vocabulary" in bad.stderr
    mixed = slipstream(*args[:7], "--lang", f"python={python}", "--overlap", "0.5", "--out", str(tmp_path / "y"))
    assert mixed.returncode == 1 and "--overlap is the windows method's" in mixed.stderr
