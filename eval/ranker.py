"""A second model as the ranker (Hassid et al.'s no-test setting with another scorer): each sample of
a completion-mode run scored by a ranker model's log-probabilities of the completion given the prompt,
through the server's echo (prompt + completion, max_tokens 0, logprobs): the tokens that start at or
after the completion's first character count (a token straddling the junction is the prompt's).

The scores are kept next to the run (<run>/ranker-<model>.jsonl, one row per sample, resumable), and
join the run's samples as `ranker_mean_logprob` for eval/rank.py and eval/budget.py."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from client.api import AsyncClient
from eval.datasets import Problem, format_prompt
from eval.generate import read_jsonl
from eval.perplexity_scoring import WindowTrimmed, echo
from eval.runs import HumanEvalRun

FIELD = "ranker_mean_logprob"


def cache_file(run: HumanEvalRun, ranker: str) -> Path:
    return run.folder / f"ranker-{re.sub(r'[^A-Za-z0-9._-]+', '_', ranker)}.jsonl"


async def score_completion(client: AsyncClient, ranker: str, prompt: str, completion: str) -> tuple[float | None, float | None, int]:
    """(mean, sum, tokens) of the ranker's log-probabilities over the completion's tokens; (None, None,
    0) for an empty completion."""
    if not completion:
        return None, None, 0
    try:
        _tokens, offsets, values = await echo(client, ranker, prompt + completion)
    except WindowTrimmed:
        raise ValueError(f"a prompt and its completion overflow {ranker}'s context: the ranker must hold what it scores") from None
    picked = [v for offset, v in zip(offsets, values, strict=True) if offset >= len(prompt) and v is not None]
    if not picked:
        return None, None, 0
    total = float(sum(picked))
    return total / len(picked), total, len(picked)


async def _score_run(
    url: str, ranker: str, run: HumanEvalRun, problems: dict[str, Problem], concurrency: int, progress: Callable[[], None]
) -> None:
    path = cache_file(run, ranker)
    done = {(r["task_id"], r["sample"]) for r in read_jsonl(path)}
    todo = [s for s in run.samples if (s["task_id"], s["sample"]) not in done]
    semaphore, lock = asyncio.Semaphore(concurrency), asyncio.Lock()
    async with AsyncClient(url, timeout=600) as client:
        with path.open("a") as sink:

            async def one(sample: dict[str, Any]) -> None:
                prompt = format_prompt(problems[sample["task_id"]].prompt, sample["prompt_format"])
                async with semaphore:
                    mean, total, tokens = await score_completion(client, ranker, prompt, sample["completion"])
                row = {
                    "task_id": sample["task_id"],
                    "sample": sample["sample"],
                    "ranker": ranker,
                    "mean_logprob": mean,
                    "sum_logprob": total,
                    "tokens": tokens,
                }
                async with lock:
                    sink.write(json.dumps(row) + "\n")
                    sink.flush()
                progress()

            await asyncio.gather(*(one(s) for s in todo))


def score_runs(
    url: str, ranker: str, runs: list[HumanEvalRun], problems: dict[str, Problem], concurrency: int = 4, log: Callable[[str], None] = print
) -> None:
    """Score every sample of the runs by the ranker (what is cached already is not asked again) and join
    the scores to the samples as `ranker_mean_logprob`."""
    for run in runs:
        if run.mode != "completion":
            raise ValueError(f"{run.label}: the ranker scores completion-mode runs (an instruct run's prompt is a chat)")
        count = [0]

        def progress(run: HumanEvalRun = run, count: list[int] = count) -> None:
            count[0] += 1
            if count[0] % 50 == 0:
                log(f"  {ranker} scored {count[0]} samples of {run.label}")

        asyncio.run(_score_run(url, ranker, run, problems, concurrency, progress))
        scores = {(r["task_id"], r["sample"]): r["mean_logprob"] for r in read_jsonl(cache_file(run, ranker))}
        for sample in run.samples:
            sample[FIELD] = scores.get((sample["task_id"], sample["sample"]))
        log(f"{ranker} scored {len(run.samples)} samples of {run.label}")
