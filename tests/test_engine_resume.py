"""Failover's engine side: a choice resumed from the tokens an engine that died had generated, and the
text its client had been sent, goes on exactly as it would have (greedy), its stop strings, penalties,
max_tokens and usage counting the tokens generated before."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from server.engine import Delta, Engine, SamplingParams, Usage
from tests.conftest import TINY_LLAMA

PROMPT = "def heappush(heap, item):\n    "


@pytest.fixture(scope="module")
def engine(tiny_llama_repo: Path) -> Engine:
    return Engine.load(tiny_llama_repo, TINY_LLAMA, threads=1, prefix_cache_mb=0)


def events(engine: Engine, prompt, params: SamplingParams) -> tuple[list[Delta], Usage]:
    deltas, usage = [], None
    for event in engine.generate(prompt, params):
        if isinstance(event, Delta):
            deltas.append(event)
        else:
            usage = event
    assert usage is not None
    return deltas, usage


@pytest.mark.parametrize("stop", [(), ("\n\n",), ("abab",), ("WX",)])  # WX: a "W" held back at a cut
def test_a_choice_resumed_after_any_delta_ends_as_the_whole_run_did(engine: Engine, stop: tuple[str, ...]) -> None:
    params = SamplingParams(max_tokens=40, temperature=0.0, stop=stop, frequency_penalty=0.5)
    prompt = engine.prompter.prepare(PROMPT, params.max_tokens)
    whole, usage = events(engine, prompt, params)
    text = "".join(d.text for d in whole)
    ids = [t for d in whole for t in d.token_ids]
    assert len(ids) == usage.completion_tokens  # every decided token rode on some delta (EOS included)
    for cut in range(1, len(whole)):  # the engine died after the client had `cut` deltas
        earlier = [t for d in whole[:cut] for t in d.token_ids]
        sent = "".join(d.text for d in whole[:cut])
        resumed = replace(prompt, ids=prompt.ids + earlier, resumed=len(earlier), sent=sent)
        rest, rest_usage = events(engine, resumed, replace(params, max_tokens=params.max_tokens - len(earlier)))
        assert sent + "".join(d.text for d in rest) == text, cut
        assert rest[-1].finish_reason == whole[-1].finish_reason
        assert (rest_usage.prompt_tokens, rest_usage.completion_tokens) == (usage.prompt_tokens, usage.completion_tokens)


def test_a_resumed_prompt_with_several_choices_is_refused(engine: Engine) -> None:
    prompt = engine.prompter.prepare(PROMPT, 8)
    resumed = replace(prompt, ids=prompt.ids + prompt.ids[-2:], resumed=2)
    with pytest.raises(ValueError, match="one choice"):
        events(engine, resumed, SamplingParams(max_tokens=4, n=2))
