"""The HTTP API of a real `slipstream serve` process (tiny random CodeGen, 128-token context) against
shared/reference/api-contract.md: response shapes, prompt forms, sampling controls, stops, logprobs,
echo, best_of and context trimming."""

from __future__ import annotations

import json
import time

import pytest

from tests.api_helpers import (
    NO_EOS,
    PROMPT,
    assert_error,
    complete,
    greedy,
    post,
    stream_chunks,
    streamed_texts,
    texts,
    token_ids,
)
from tests.conftest import TINY, TINY_CONTEXT


@pytest.fixture(scope="module")
def url(tiny_server) -> str:
    return tiny_server.url


# --- response shape and routes -----------------------------------------------------------------


def test_response_shape(url):
    before = int(time.time())
    body = greedy(url, max_tokens=5, model=TINY)
    assert set(body) == {"id", "object", "created", "model", "choices", "usage"}
    assert body["id"].startswith("cmpl-") and len(body["id"]) > len("cmpl-")
    assert body["object"] == "text_completion"
    assert isinstance(body["created"], int) and before - 1 <= body["created"] <= time.time() + 1
    assert body["model"] == TINY
    [choice] = body["choices"]
    assert set(choice) == {"text", "index", "logprobs", "finish_reason"}
    assert isinstance(choice["text"], str) and choice["text"]
    assert choice["index"] == 0 and choice["logprobs"] is None and choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] == 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_model_is_optional_and_unknown_fields_are_ignored(url):
    with_model = greedy(url, model=TINY)
    copilot_extras = {
        "nwo": "octo/repo",
        "extra": {"language": "python", "next_indent": 4, "trim_by_indentation": True, "prompt_tokens": 5, "suffix_tokens": 0},
        "whatever": [1],
    }
    without_model = greedy(url, **copilot_extras)
    assert without_model["model"] == TINY
    assert texts(without_model) == texts(with_model)


def test_copilot_engine_route(url):
    copilot_body = {
        "prompt": PROMPT,
        "suffix": "",
        "max_tokens": 12,
        "temperature": 0,
        "top_p": 1,
        "n": 1,
        "stop": ["\n\n\n"],
        "nwo": "octo/repo",
        "logit_bias": NO_EOS,
        "extra": {"language": "python", "next_indent": 0},
    }
    reference = complete(url, **copilot_body)
    engine = complete(url, "/v1/engines/codegen/completions", **copilot_body)
    assert engine["object"] == "text_completion" and engine["id"].startswith("cmpl-")
    assert texts(engine) == texts(reference)
    # the plugin streams
    chunks = stream_chunks(url, "/v1/engines/copilot-codex/completions", **copilot_body)
    assert streamed_texts(chunks) == {0: reference["choices"][0]["text"]}


def test_curl_form_content_type_with_json_body(url):
    body = {"prompt": PROMPT, "max_tokens": 6, "temperature": 0, "logit_bias": NO_EOS}
    response = post(url, json.dumps(body), headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200, response.text
    assert texts(response.json()) == texts(greedy(url, max_tokens=6))


# --- prompt forms and choices --------------------------------------------------------------------


def test_prompt_list_of_strings_indexes_choices_prompt_by_prompt(url):
    prompts = ["import os\n", "class Stack:"]
    sampled = {"max_tokens": 6, "temperature": 1.0, "seed": 11, "n": 2, "logit_bias": NO_EOS}
    both = complete(url, prompt=prompts, **sampled)
    assert [c["index"] for c in both["choices"]] == [0, 1, 2, 3]
    alone = [texts(complete(url, prompt=p, **sampled)) for p in prompts]
    assert texts(both) == alone[0] + alone[1]  # index = prompt * n + i
    assert len(set(texts(both))) == 4
    assert both["usage"]["completion_tokens"] == 4 * 6


def test_prompt_as_token_ids(url, tiny_repo):
    ids = token_ids(tiny_repo, PROMPT)
    from_text = greedy(url)
    from_ids = greedy(url, prompt=ids)
    assert texts(from_ids) == texts(from_text)
    assert from_ids["usage"]["prompt_tokens"] == from_text["usage"]["prompt_tokens"] == len(ids)


def test_prompt_as_token_id_lists(url, tiny_repo):
    prompts = ["import os\n", "class Stack:"]
    both = greedy(url, prompt=[token_ids(tiny_repo, p) for p in prompts], max_tokens=8)
    assert [c["index"] for c in both["choices"]] == [0, 1]
    assert texts(both) == [greedy(url, prompt=p, max_tokens=8)["choices"][0]["text"] for p in prompts]


def test_n_choices_ordered_by_index(url):
    body = complete(url, prompt=PROMPT, max_tokens=8, temperature=1.0, seed=5, n=3, logit_bias=NO_EOS)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert all(c["finish_reason"] == "length" for c in body["choices"])
    assert len(set(texts(body))) == 3  # each choice samples on its own
    assert body["usage"]["completion_tokens"] == 3 * 8


# --- sampling controls ---------------------------------------------------------------------------


def test_greedy_is_deterministic(url):
    first = greedy(url, max_tokens=24)
    assert texts(greedy(url, max_tokens=24)) == texts(first)
    assert texts(greedy(url, max_tokens=24, n=3)) == texts(first) * 3


@pytest.mark.parametrize("max_tokens", [1, 7, 30])
def test_max_tokens_respected(url, max_tokens):
    body = greedy(url, max_tokens=max_tokens, logprobs=0)
    [choice] = body["choices"]
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == max_tokens
    assert len(choice["logprobs"]["tokens"]) == max_tokens


def test_eos_finishes_with_stop(url):
    body = complete(url, prompt=PROMPT, max_tokens=10, temperature=0, logit_bias={"0": 100})
    [choice] = body["choices"]
    assert choice["finish_reason"] == "stop"
    assert choice["text"] == ""
    assert body["usage"]["completion_tokens"] <= 1

    # ignore_eos (llama.cpp's and vLLM's extension): the same request runs to max_tokens
    body = complete(url, prompt=PROMPT, max_tokens=10, temperature=0, logit_bias={"0": 100}, ignore_eos=True)
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 10


def test_default_max_tokens_is_16(url):
    body = complete(url, prompt=PROMPT, temperature=0, logit_bias=NO_EOS)
    assert body["usage"]["completion_tokens"] == 16


def test_seed_makes_sampling_reproducible(url):
    def sample(seed: int) -> str:
        return complete(url, prompt=PROMPT, max_tokens=12, temperature=1.0, seed=seed, logit_bias=NO_EOS)["choices"][0]["text"]

    assert sample(123) == sample(123)
    assert len({sample(seed) for seed in range(5)}) == 5


# --- stop sequences ------------------------------------------------------------------------------


def _aligned_tokens(body: dict) -> list[tuple[str, int]]:
    """(token, offset) pairs of a logprobs=0 completion whose text sits at its offset in the choice text
    and is plain printable ASCII."""
    choice = body["choices"][0]
    lp = choice["logprobs"]
    return [
        (token, offset)
        for token, offset in zip(lp["tokens"], lp["text_offset"], strict=False)
        if token.isascii() and token.isprintable() and token.strip() and choice["text"][offset : offset + len(token)] == token
    ]


@pytest.fixture(scope="module")
def reference_run(url) -> dict:
    """A greedy run with its token boundaries, to take stop strings from."""
    return greedy(url, max_tokens=40, logprobs=0)


def _stop_inside_a_token(reference: dict) -> str:
    text = reference["choices"][0]["text"]
    for token, offset in _aligned_tokens(reference)[2:]:
        if len(token) >= 2 and text.find(token) == offset:
            return token
    raise AssertionError(f"no usable token in {text!r}")


def _stop_across_tokens(reference: dict) -> str:
    """Two chars of one token and the first of the next: a stop no single token holds."""
    text = reference["choices"][0]["text"]
    aligned = _aligned_tokens(reference)
    for (left, at), (right, next_at) in zip(aligned[1:], aligned[2:], strict=False):
        stop = left[-2:] + right[:1]
        if next_at == at + len(left) and text.find(stop) == next_at - len(left[-2:]) and len(stop) == 3:
            return stop
    raise AssertionError(f"no two adjacent ASCII tokens in {text!r}")


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("pick", [_stop_inside_a_token, _stop_across_tokens], ids=["in-token", "across-tokens"])
@pytest.mark.parametrize("as_list", [False, True], ids=["str", "list"])
def test_stop(url, reference_run, pick, as_list, stream):
    full = reference_run["choices"][0]["text"]
    stop = pick(reference_run)
    expected = full[: full.index(stop)]
    request = {
        "prompt": PROMPT,
        "max_tokens": 40,
        "temperature": 0,
        "logit_bias": NO_EOS,
        "stop": ["never-generated-zzz", stop] if as_list else stop,
    }
    if stream:
        chunks = stream_chunks(url, **request)
        text = streamed_texts(chunks)[0]
        finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
        assert finish[-1] == "stop" and set(finish[:-1]) <= {None}
    else:
        body = complete(url, **request)
        text, finish = body["choices"][0]["text"], body["choices"][0]["finish_reason"]
        assert finish == "stop"
        assert body["usage"]["completion_tokens"] < 40
    assert stop not in text
    assert text == expected


def test_earliest_of_several_stops_wins(url, reference_run):
    full = reference_run["choices"][0]["text"]
    aligned = _aligned_tokens(reference_run)
    early, late = aligned[2][0], aligned[-1][0]
    cut = min(full.index(early), full.index(late))
    body = greedy(url, max_tokens=40, stop=[late, early])
    assert body["choices"][0]["text"] == full[:cut]
    assert body["choices"][0]["finish_reason"] == "stop"


# --- logprobs and echo ---------------------------------------------------------------------------


@pytest.mark.parametrize("top", [0, 2, 5])
def test_logprobs(url, top):
    body = complete(url, prompt=PROMPT, max_tokens=10, temperature=0, logprobs=top)
    [choice] = body["choices"]
    lp = choice["logprobs"]
    count = body["usage"]["completion_tokens"]
    assert count > 0
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert [len(lp[k]) for k in ("tokens", "token_logprobs", "top_logprobs", "text_offset")] == [count] * 4
    assert lp["text_offset"][0] == 0
    for i, token in enumerate(lp["tokens"]):
        logprob, alternatives = lp["token_logprobs"][i], lp["top_logprobs"][i]
        assert isinstance(token, str)
        assert isinstance(logprob, float) and logprob <= 0
        if top == 0:
            assert alternatives is None
        else:  # the asked number, fewer only where byte pieces decode alike (one key, the higher value)
            assert len(alternatives) == top or (0 < len(alternatives) < top and "\ufffd" in alternatives)
            assert all(isinstance(v, float) and v <= 0 for v in alternatives.values())
            # greedy: the chosen token is the most likely one
            assert logprob == pytest.approx(max(alternatives.values()), abs=1e-5)
            if "\ufffd" not in token:
                assert alternatives[token] == pytest.approx(logprob, abs=1e-5)
        if i:
            assert lp["text_offset"][i] == lp["text_offset"][i - 1] + len(lp["tokens"][i - 1])


def test_logprobs_are_the_models_own_distribution(url, tiny_repo):
    """The first token's logprob and its top 5, against the exported graph run here on the same ids."""
    import numpy as np

    from server.engine import Prompter, Runner, log_softmax
    from server.models.store import model_dir

    prompter = Prompter(tiny_repo, TINY)
    ids = prompter.prepare(PROMPT, 1).ids
    logits, _cache = Runner(model_dir(tiny_repo, TINY) / prompter.manifest.onnx_file, threads=1).prefill(ids)
    model = log_softmax(logits[-1])
    expected: dict[str, float] = {}
    for t in np.argsort(-model)[:5]:
        expected.setdefault(prompter.tokenizer.decode([int(t)], skip_special_tokens=False), float(model[t]))
    lp = complete(url, prompt=PROMPT, max_tokens=1, temperature=0, logprobs=5)["choices"][0]["logprobs"]
    assert lp["token_logprobs"][0] == pytest.approx(float(model.max()), abs=1e-4)
    assert lp["top_logprobs"][0].keys() == expected.keys()
    assert all(lp["top_logprobs"][0][k] == pytest.approx(v, abs=1e-4) for k, v in expected.items())


def test_no_logprobs_unless_asked(url):
    assert greedy(url)["choices"][0]["logprobs"] is None


def test_echo(url):
    plain = greedy(url, max_tokens=6)["choices"][0]["text"]
    assert greedy(url, max_tokens=6, echo=True)["choices"][0]["text"] == PROMPT + plain


def test_echo_with_logprobs(url):
    prompt = "def add(a, b):"
    body = greedy(url, prompt=prompt, max_tokens=5, echo=True, logprobs=1)
    [choice] = body["choices"]
    usage, lp = body["usage"], choice["logprobs"]
    assert choice["text"].startswith(prompt)
    assert len(lp["tokens"]) == usage["prompt_tokens"] + usage["completion_tokens"]
    assert "".join(lp["tokens"][: usage["prompt_tokens"]]) == prompt
    assert lp["token_logprobs"][0] is None
    assert all(isinstance(v, float) and v <= 0 for v in lp["token_logprobs"][1:])
    assert lp["text_offset"][0] == 0
    assert lp["text_offset"][usage["prompt_tokens"]] == len(prompt)  # the first completion token


def test_best_of_returns_n(url):
    body = complete(url, prompt=PROMPT, max_tokens=6, temperature=1.0, seed=3, n=2, best_of=4, logit_bias=NO_EOS)
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert all(c["text"] and c["finish_reason"] == "length" for c in body["choices"])
    # the same four samples (each row's generator is seeded by seed and row), scored: the best two by mean logprob
    four = complete(url, prompt=PROMPT, max_tokens=6, temperature=1.0, seed=3, n=4, logprobs=0, logit_bias=NO_EOS)
    mean = {c["text"]: sum(c["logprobs"]["token_logprobs"]) / 6 for c in four["choices"]}
    assert len(mean) == 4  # four different samples, so the choice means something
    assert {c["text"] for c in body["choices"]} == set(sorted(mean, key=mean.get, reverse=True)[:2])


@pytest.mark.parametrize("penalty", ["presence_penalty", "frequency_penalty"])
def test_penalties_keep_a_greedy_loop_from_repeating(url, penalty):
    """The tiny model's greedy text loops over a few tokens; its logits are nearly flat, so a penalty of 2
    on every token already generated makes each next token a new one."""

    def tokens(**extra) -> list[str]:  # byte pieces left out: different tokens, the same "\ufffd" text
        got = complete(url, prompt=PROMPT, max_tokens=30, temperature=0, logprobs=0, logit_bias=NO_EOS, **extra)
        return [t for t in got["choices"][0]["logprobs"]["tokens"] if "\ufffd" not in t]

    plain, penalised = tokens(), tokens(**{penalty: 2.0})
    assert len(set(plain)) < len(plain)  # it repeats
    assert len(set(penalised)) == len(penalised)  # it does not
    assert len(set(tokens(**{penalty: -2.0}))) <= len(set(plain))  # a negative penalty favours repeats


# --- context -------------------------------------------------------------------------------------


def test_long_prompt_is_trimmed_from_the_left(url):
    prompt = "".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(40))
    max_tokens = 8
    plain = greedy(url, prompt=prompt, max_tokens=max_tokens)
    usage = plain["usage"]
    assert usage["prompt_tokens_trimmed"] > 0
    assert usage["prompt_tokens"] + max_tokens <= TINY_CONTEXT
    assert usage["completion_tokens"] == max_tokens
    echoed = greedy(url, prompt=prompt, max_tokens=max_tokens, echo=True)["choices"][0]["text"]
    completion = plain["choices"][0]["text"]
    assert echoed.endswith(completion)
    kept = echoed[: len(echoed) - len(completion)]
    assert 0 < len(kept) < len(prompt) and prompt.endswith(kept)  # the end, next to the cursor, is kept


def test_max_tokens_filling_the_context_is_rejected(url):
    error = assert_error(post(url, {"prompt": PROMPT, "max_tokens": TINY_CONTEXT}), 400, "max_tokens")
    assert "max_tokens" in error["message"]
