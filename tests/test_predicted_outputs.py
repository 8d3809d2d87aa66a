"""Drafts from a prediction (OpenAI's Predicted Outputs) and from the editor's history (issue 26): the
same text as without them, fewer steps where the output repeats them, usage counting what was
accepted and rejected, a row whose drafts keep failing stops drafting, and one key's history never
drafts for another."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from server.engine import Delta, Engine, Prompt, Prompter, SamplingParams, Usage
from server.engine.batch import Batch
from server.engine.drafts import follow_prediction
from tests.conftest import TINY, TINY_CONTEXT, TINY_LLAMA

PROMPT = "def area(width, height):\n    return width"


@pytest.fixture(scope="module", params=["optimum", "fused"])
def engine(request, tiny_fp32_repo: Path, tiny_llama_repo: Path) -> Engine:
    if request.param == "fused":
        return Engine.load(tiny_llama_repo, TINY_LLAMA, threads=1)
    return Engine.load(tiny_fp32_repo, TINY, threads=1)


def run(engine: Engine, prompt: Prompt, params: SamplingParams) -> tuple[str, list[int], Usage]:
    """The text, the token ids the row decided (a random model's text need not encode back to them) and
    the usage: the calls Engine.generate makes, keeping the sequence."""
    pending = engine.start(prompt, params)
    while pending.remaining:
        engine.prefill(pending)
    sequence, cache = engine.first_tokens(pending)
    batch = Batch()
    if cache is not None:
        batch.add(sequence, cache)
    events = sequence.take()
    while batch:
        engine.step(batch)
        events += sequence.take()
    text = "".join(e.text for e in events if isinstance(e, Delta))
    usage = next(e for e in events if isinstance(e, Usage))
    return text, sequence.choices[0].ids, usage


def test_following_a_prediction_through_an_edit() -> None:
    prediction = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    draft, anchor, agreed = follow_prediction(prediction, [1, 2], (0, 0), 3)
    assert (draft, anchor, agreed) == ([3, 4, 5], (2, 2), 2)
    # the row wrote 3 then 40 (an edit) then 5, 6: found again after 5, 6, where the prediction goes on
    draft, anchor, agreed = follow_prediction(prediction, [1, 2, 3, 40, 5, 6], anchor, 3)
    assert (draft, anchor, agreed) == ([7, 8, 9], (6, 6), 2)
    # a deletion (4, 5 left out): found again after 3, 6
    draft, _, _ = follow_prediction(prediction, [1, 2, 3, 6], (3, 3), 2)
    assert draft == [7, 8]
    # nothing of the prediction near: no draft
    assert follow_prediction(prediction, [99, 98], (0, 0), 3)[0] == []


@pytest.mark.parametrize("params", [{"temperature": 0.0}, {"temperature": 1.0, "seed": 3}], ids=["greedy", "seeded"])
def test_a_prediction_of_the_output_is_accepted_and_changes_nothing(engine: Engine, params: dict) -> None:
    plain = SamplingParams(max_tokens=30, ignore_eos=True, **params)
    prompt = engine.prompter.prepare(PROMPT, plain.max_tokens)
    text, ids, usage = run(engine, prompt, plain)
    assert usage.draft_tokens == 0
    # the output itself as the prediction, with an edit in its middle: accepted up to the edit and after
    predicted = [*ids[:10], *engine.prompter.encode(" edited"), *ids[10:]]
    again, _, used = run(engine, replace(prompt, prediction=predicted), plain)
    assert again == text
    assert used.accepted_prediction_tokens >= 15, used
    assert used.accepted_prediction_tokens + used.rejected_prediction_tokens == used.draft_tokens
    assert used.completion_tokens == 30


def test_a_prediction_that_never_holds_stops_being_drafted(engine: Engine) -> None:
    params = SamplingParams(max_tokens=60, temperature=0.0, ignore_eos=True)
    prompt = engine.prompter.prepare(PROMPT, params.max_tokens)
    text, ids, _ = run(engine, prompt, params)
    # the prediction starts as the output does, then goes on with a token the output never has
    other = next(t for t in range(10, engine.manifest.vocab_size) if t not in ids)
    wrong = [ids[0], *[other] * 200]
    again, _, usage = run(engine, replace(prompt, prediction=wrong), params)
    assert again == text
    assert usage.rejected_prediction_tokens > 0
    assert usage.draft_tokens < 20, usage  # resting rows: without the pace, 3 a step for 59 steps


def test_the_history_drafts_only_under_its_own_salt(engine: Engine) -> None:
    """A completion served under one key drafts the continuation of a request that typed its start
    through, under that key; under another key, the same request drafts nothing from it."""
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True, speculative=True)
    first = replace(engine.prompter.prepare(PROMPT, params.max_tokens), cache_salt="alice")
    text, ids, _ = run(engine, first, params)
    typed = replace(engine.prompter.prepare(PROMPT, params.max_tokens), cache_salt="bob")
    typed = replace(typed, ids=[*typed.ids, *ids[:6]])  # the first tokens of the suggestion, typed through
    history = engine.speculator.drafted["history"]
    other = run(engine, replace(typed, cache_salt="bob"), params)
    assert engine.speculator.drafted["history"] == history  # bob's request never drafts from alice's
    same = run(engine, replace(typed, cache_salt="alice"), params)
    assert engine.speculator.drafted["history"] > history and engine.speculator.accepted["history"] > 0
    assert same[0] == other[0]  # drafts change no text


def test_prediction_through_the_openai_client(duo_server, duo_repo: Path) -> None:
    """`prediction` on /v1/chat/completions and /v1/completions, sent by OpenAI's own client: the same
    text as without, usage.completion_tokens_details as OpenAI reports it; a wrong shape is a 400 naming
    the field; one longer than the context is cut to fit and says so in a header."""
    client = OpenAI(base_url=f"{duo_server.url}/v1", api_key="unused", max_retries=0)
    # two words made likely: a random model's text that encodes back to the tokens it was decided as
    words = {str(t): 10 for w in (" width", " height") for t in Prompter(duo_repo, TINY_LLAMA).encode(w)}
    chat = {"model": TINY_LLAMA, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 24, "temperature": 0, "logit_bias": words}
    plain = client.chat.completions.create(**chat)
    text = plain.choices[0].message.content or ""
    predicted = client.chat.completions.create(**chat, prediction={"type": "content", "content": text})
    assert predicted.choices[0].message.content == text
    details = predicted.usage.completion_tokens_details
    assert details is not None and details.accepted_prediction_tokens >= 10, details
    assert plain.usage.completion_tokens_details.accepted_prediction_tokens == 0
    parts = client.chat.completions.create(**chat, prediction={"type": "content", "content": [{"type": "text", "text": text}]})
    assert parts.usage.completion_tokens_details.accepted_prediction_tokens == details.accepted_prediction_tokens

    body = {"model": TINY, "prompt": PROMPT, "max_tokens": 16, "temperature": 0}
    completion = httpx.post(f"{duo_server.url}/v1/completions", json=body, timeout=60).json()
    again = httpx.post(
        f"{duo_server.url}/v1/completions",
        json=body | {"prediction": {"type": "content", "content": completion["choices"][0]["text"]}},
        timeout=60,
    )
    assert again.json()["choices"][0]["text"] == completion["choices"][0]["text"]
    assert again.json()["usage"]["completion_tokens_details"]["accepted_prediction_tokens"] > 0, again.json()
    assert "X-Slipstream-Prediction-Truncated" not in again.headers
    for wrong in ("text", {"type": "text", "content": "x"}, {"type": "content"}, {"type": "content", "content": 5}):
        refused = httpx.post(f"{duo_server.url}/v1/completions", json=body | {"prediction": wrong}, timeout=60)
        assert refused.status_code == 400 and refused.json()["error"]["param"].startswith("prediction"), refused.text
    long = httpx.post(
        f"{duo_server.url}/v1/completions", json=body | {"prediction": {"type": "content", "content": " x" * 4 * TINY_CONTEXT}}, timeout=60
    )
    assert long.status_code == 200
    kept, sent = map(int, long.headers["X-Slipstream-Prediction-Truncated"].split("/"))
    assert kept < sent and kept <= TINY_CONTEXT
