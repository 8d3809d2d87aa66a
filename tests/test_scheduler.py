"""Continuous batching on the tiny fused model, in process: requests decode together, each gets what
it would get alone, a cancelled one leaves at once, the queue is bounded."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from server.engine import Delta, Engine, QueueFull, SamplingParams, Scheduler, Usage
from server.settings import Settings
from tests.conftest import TINY_LLAMA
from tests.engine_helpers import Steps, fold

NO_EOS = {0: -100.0}
PREFILL_TOKENS_PER_STEP = Settings().prefill_tokens_per_step
PROMPTS = ["def add(a, b):", "class Stack:\n    def __init__(self):", "import os\n", "x = [i * i for i in"]


@pytest.fixture(scope="module")
def engine(tiny_llama_repo: Path) -> Engine:
    return Engine.load(tiny_llama_repo, TINY_LLAMA, threads=1)


def scheduler_for(engine: Engine, max_waiting: int, hold_at: int | None = None) -> tuple[Scheduler, Steps]:
    steps = Steps(hold_at)
    settings = Settings()
    return Scheduler(engine, max_waiting, settings.max_batch_rows, settings.prefill_tokens_per_step, steps.append), steps


def alone(engine: Engine, prompt: str, params: SamplingParams) -> dict[int, str]:
    return fold(engine.generate(engine.prompter.prepare(prompt, params.max_tokens), params))[0]


async def collect(scheduler: Scheduler, engine: Engine, prompt: str, params: SamplingParams) -> tuple[dict[int, str], Usage]:
    return fold([event async for event in scheduler.submit(engine.prompter.prepare(prompt, params.max_tokens), params)])


def test_requests_decode_together_and_each_gets_what_it_would_alone(engine: Engine) -> None:
    # different lengths, greedy and sampled, n > 1: each request's text equals its text decoded alone
    params = [
        SamplingParams(max_tokens=12 + 3 * i, temperature=0.8 * (i % 2), seed=i, n=1 + i % 3, logit_bias=NO_EOS)
        for i in range(len(PROMPTS))
    ]
    expected = [alone(engine, p, q) for p, q in zip(PROMPTS, params, strict=True)]
    scheduler, steps = scheduler_for(engine, max_waiting=16)

    async def run() -> list[tuple[dict[int, str], Usage]]:
        return await asyncio.gather(*(collect(scheduler, engine, p, q) for p, q in zip(PROMPTS, params, strict=True)))

    try:
        results = asyncio.run(run())
    finally:
        scheduler.close()
    assert [texts for texts, _ in results] == expected
    assert [usage.completion_tokens for _, usage in results] == [q.max_tokens * q.n for q in params]
    assert steps.max("requests") >= 2 and steps.max("rows") >= 4
    # fewer steps than decoding them one after the other
    assert len(steps) < sum(q.max_tokens - 1 for q in params)


def test_a_cancelled_request_leaves_the_batch_and_the_others_go_on(engine: Engine) -> None:
    scheduler, steps = scheduler_for(engine, max_waiting=16)
    long = SamplingParams(max_tokens=100, temperature=0.0, logit_bias=NO_EOS)
    short = SamplingParams(max_tokens=10, temperature=0.0, logit_bias=NO_EOS)

    async def run() -> tuple[int, dict[int, str]]:
        async def abandoned() -> int:
            seen = 0
            async for event in scheduler.submit(engine.prompter.prepare(PROMPTS[0], 100), long):
                seen += isinstance(event, Delta)
                if seen == 3:
                    break  # the client went away
            return seen

        seen, (texts, _) = await asyncio.gather(abandoned(), collect(scheduler, engine, PROMPTS[1], short))
        # the worker goes on until it has nothing left: were the abandoned request not dropped, its row would
        # decode on to its 100 tokens after the short one ended. Counted while this loop still runs (once it
        # is closed, events have nowhere to go and any request ends)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            before = len(steps)
            await asyncio.sleep(0.5)
            if len(steps) == before:
                break
        return seen, texts

    try:
        seen, texts = asyncio.run(run())
        rows_after = sum(s.rows for s in steps)
    finally:
        scheduler.close()
    assert seen == 3 and texts == alone(engine, PROMPTS[1], short)
    assert rows_after < 100  # the 100-token request stopped decoding when it was dropped


def test_the_queue_is_bounded(engine: Engine) -> None:
    scheduler, steps = scheduler_for(engine, max_waiting=2)
    params = SamplingParams(max_tokens=30, temperature=0.0, logit_bias=NO_EOS)

    async def run() -> list[object]:
        return await asyncio.gather(*(collect(scheduler, engine, PROMPTS[0], params) for _ in range(4)), return_exceptions=True)

    try:
        results = asyncio.run(run())
    finally:
        scheduler.close()
    refused = [r for r in results if isinstance(r, QueueFull)]
    assert len(refused) == 2 and all(isinstance(r, tuple) for r in results if r not in refused)


def test_a_burst_of_prompts_is_prefilled_a_few_per_step_while_rows_decode(engine: Engine) -> None:
    """Prefilling every arrival before the next decode step would hold the live rows up for all of them."""
    long_prompt = "def f(x):\n    return x + 1\n" * 9  # ~100 tokens: three of them pass the budget
    burst = [engine.prompter.prepare(long_prompt + f"# {i}\n", 4) for i in range(6)]
    assert sum(len(p.ids) for p in burst) > 2 * PREFILL_TOKENS_PER_STEP
    scheduler, steps = scheduler_for(engine, max_waiting=16, hold_at=2)

    async def run() -> list[tuple[dict[int, str], Usage]]:
        first = asyncio.create_task(collect(scheduler, engine, PROMPTS[0], SamplingParams(max_tokens=60, logit_bias=NO_EOS)))
        while len(steps) < 2:  # the worker holds at the first request's second step: it is mid-decode
            await asyncio.sleep(0.001)
        params = SamplingParams(max_tokens=4, logit_bias=NO_EOS)
        rest = [asyncio.create_task(collect(scheduler, engine, long_prompt + f"# {i}\n", params)) for i in range(6)]
        await asyncio.sleep(0)  # each task runs to its first wait: its request is in the worker's inbox
        steps.release()
        return await asyncio.gather(first, *rest)

    try:
        results = asyncio.run(run())
    finally:
        scheduler.close()
    assert [usage.completion_tokens for _, usage in results] == [60] + [4] * 6
    longest = max(len(p.ids) for p in burst)
    assert 0 < steps.max("prefilled") < PREFILL_TOKENS_PER_STEP + longest
