"""Speculative decoding's first form (issue 26): a request decoding alone verifies prompt lookup's draft
in one step and keeps what its own decisions confirm. On the test models the text is the one it would
get without (greedy, and seeded samples: each token is decided from the same logits with the same
draws), in fewer steps. (The bundled int8 graphs' multi-token step can tip a near tie: bench/README.md.)"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from server.engine import Delta, Engine, SamplingParams, Usage, prompt_lookup
from tests.conftest import TINY, TINY_LLAMA

# a prompt that repeats itself, as code does: lookup finds drafts, and a tiny model copies
PROMPT = "x = [1, 2, 3]\ny = [1, 2, 3]\nz = [1, 2, 3]\nw = [1, 2"


@pytest.fixture(scope="module", params=["optimum", "fused"])
def engine(request, tiny_fp32_repo: Path, tiny_llama_repo: Path) -> Engine:
    """optimum's graph in fp32 (its INT8 graph quantises activations over the whole input, which a
    several-token step changes), and the fused graph as the store builds it."""
    if request.param == "fused":
        return Engine.load(tiny_llama_repo, TINY_LLAMA, threads=1)
    return Engine.load(tiny_fp32_repo, TINY, threads=1)


def generate(engine: Engine, params: SamplingParams) -> tuple[str, list[str], Usage]:
    text, pieces, usage = "", [], None
    for event in engine.generate(engine.prompter.prepare(PROMPT, params.max_tokens), params):
        if isinstance(event, Delta):
            text += event.text
            pieces.append(event.text)
        else:
            usage = event
    assert usage is not None
    return text, pieces, usage


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 0.0},
        {"temperature": 1.0, "seed": 7},
        {"temperature": 0.8, "seed": 7, "top_k": 5, "top_p": 0.9, "presence_penalty": 0.1},
        {"temperature": 0.0, "stop": ["]"]},
    ],
    ids=["greedy", "seeded", "filtered", "stop"],
)
def test_the_same_text_with_and_without_speculation_in_fewer_steps(engine: Engine, params: dict) -> None:
    if "seed" in params:  # the tiny random model samples noise: two tokens made likely, so that drafts exist
        params = {**params, "logit_bias": {engine.prompter.encode(" 2")[-1]: 10.0, engine.prompter.encode(" 3")[-1]: 10.0}}
    plain = SamplingParams(max_tokens=40, ignore_eos=True, **params)
    drafted_before, accepted_before = engine.drafted, engine.accepted
    without = generate(engine, plain)
    assert (engine.drafted, engine.accepted) == (drafted_before, accepted_before)  # off unless asked for
    with_drafts = generate(engine, SamplingParams(max_tokens=40, ignore_eos=True, speculative=True, **params))
    assert with_drafts[0] == without[0]
    assert with_drafts[2].completion_tokens == without[2].completion_tokens
    if "stop" not in params:
        assert with_drafts[2].completion_tokens == 40  # max_tokens exactly, drafts or not
        assert engine.drafted > drafted_before and engine.accepted > accepted_before  # the steps it saved


def test_a_draft_never_runs_past_max_tokens(engine: Engine) -> None:
    for max_tokens in (1, 2, 3, 5):
        text, _, usage = generate(engine, SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, speculative=True))
        assert usage.completion_tokens == max_tokens
        assert text == generate(engine, SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True))[0]


def test_through_the_api_the_field_the_text_and_the_counters(duo_server) -> None:
    """`speculative` on /v1/completions: the same greedy text as without, the draft tokens counted on
    /metrics; a wrong type is a 400 naming the field."""
    import httpx

    from tests.test_metrics import scrape

    body = {"model": TINY_LLAMA, "prompt": PROMPT, "max_tokens": 24, "temperature": 0, "ignore_eos": True}

    def complete(**more: object) -> httpx.Response:
        return httpx.post(f"{duo_server.url}/v1/completions", json=body | more, timeout=60)

    def counted(name: str) -> float:
        return sum(v for (n, labels), v in scrape(duo_server.url).items() if n == name and dict(labels)["model"] == TINY_LLAMA)

    drafted, accepted = counted("slipstream_draft_tokens_total"), counted("slipstream_accepted_draft_tokens_total")
    plain = complete().json()["choices"][0]["text"]
    assert counted("slipstream_draft_tokens_total") == drafted  # the server's default: off
    assert complete(speculative=True).json()["choices"][0]["text"] == plain
    assert counted("slipstream_draft_tokens_total") > drafted and counted("slipstream_accepted_draft_tokens_total") > accepted
    refused = complete(speculative="yes")
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "speculative", refused.text


def test_sampled_tokens_follow_the_drafts_no_more_often_than_without_speculation(engine: Engine) -> None:
    """Many seeds at temperature 1: how often the token drawn is the one prompt lookup would draft there,
    with speculation and without, in a chi-square test of the 2x2 table at the 0.1% level. A verifier
    that kept its drafts whatever the model says draws them more often (seen failing so; a milder bias,
    +2 logits to the draft, is below this test's power: the seeded identity tests above catch that)."""
    likely = {engine.prompter.encode(w)[-1]: 10.0 for w in (" 2", " 3", " 4")}  # a random model made to repeat: drafts exist
    prompt = engine.prompter.prepare(PROMPT, 16).ids
    table = np.zeros((2, 2))  # rows: without, with speculation; columns: the drafted token drawn, another
    accepted = engine.accepted
    for seed in range(100):
        for speculative in (False, True):
            params = SamplingParams(max_tokens=24, temperature=1.0, seed=seed, ignore_eos=True, logit_bias=likely, speculative=speculative)
            ids = engine.prompter.encode(generate(engine, params)[0])
            for i in range(1, len(ids)):
                draft = prompt_lookup([*prompt, *ids[:i]], 1)
                if draft:
                    table[int(speculative), int(ids[i] != draft[0])] += 1
    assert engine.accepted > accepted  # drafts were verified and kept
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    statistic = float(((table - expected) ** 2 / expected).sum())
    assert statistic < 10.83, (statistic, table)  # chi-square, one degree of freedom, p = 0.001


def test_logprobs_with_speculation_are_those_without(engine: Engine) -> None:
    """Each token's logprob and top alternatives from a verify step's position, as from a one-token step
    (within the graph's tolerance: on the test graphs the same to float rounding)."""
    likely = {engine.prompter.encode(w)[-1]: 5.0 for w in (" 2", " 3")}  # a random model made to repeat: drafts exist
    params = {"max_tokens": 24, "temperature": 0.0, "ignore_eos": True, "logprobs": 3, "logit_bias": likely}
    accepted = engine.accepted
    pieces: dict[bool, list] = {}
    prompt = replace(engine.prompter.prepare(PROMPT, 24), cache_salt="logprobs")  # no other test's history
    for speculative in (False, True):
        events = engine.generate(prompt, SamplingParams(speculative=speculative, **params))
        pieces[speculative] = [entry for e in events if isinstance(e, Delta) and e.logprobs for entry in e.logprobs]
    assert engine.accepted > accepted
    assert [p.token for p in pieces[True]] == [p.token for p in pieces[False]]
    for plain, drafted in zip(pieces[False], pieces[True], strict=True):
        assert drafted.logprob == pytest.approx(plain.logprob, abs=1e-4)
        assert drafted.top is not None and plain.top is not None and drafted.top.keys() == plain.top.keys()
        assert all(drafted.top[t] == pytest.approx(v, abs=1e-4) for t, v in plain.top.items())
