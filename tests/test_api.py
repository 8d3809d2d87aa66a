"""The HTTP API of a real `slipstream serve` process (tiny random CodeGen, 128-token context) against
shared/reference/api-contract.md: response shapes, prompt forms, sampling controls, streaming,
validation errors, the official `openai` client, and client disconnects."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import openai
import pytest
from tokenizers import Tokenizer

from server.models.store import model_dir, read_manifest
from tests.conftest import TINY, TINY_CONTEXT

NO_EOS = {"0": -100}  # the tiny model's EOS is token 0: with this, generation runs to max_tokens
PROMPT = "def fibonacci(n):"
TIMEOUT = 30.0


# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def url(tiny_server) -> str:
    return tiny_server.url


def post(url: str, body: object, path: str = "/v1/completions", **kwargs) -> httpx.Response:
    if isinstance(body, (str, bytes)):
        kwargs.setdefault("headers", {"Content-Type": "application/json"})
        return httpx.post(url + path, content=body, timeout=TIMEOUT, **kwargs)
    return httpx.post(url + path, json=body, timeout=TIMEOUT, **kwargs)


def complete(url: str, path: str = "/v1/completions", **body) -> dict:
    """A non-streaming completion that must succeed."""
    response = post(url, body, path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def greedy(url: str, prompt=PROMPT, max_tokens: int = 16, **extra) -> dict:
    """A greedy completion that runs to max_tokens (EOS is banned)."""
    return complete(url, prompt=prompt, max_tokens=max_tokens, temperature=0, logit_bias=NO_EOS, **extra)


def texts(response: dict) -> list[str]:
    return [c["text"] for c in response["choices"]]


def raw_stream(url: str, body: dict, path: str = "/v1/completions") -> tuple[httpx.Headers, str]:
    """The raw body of a streaming completion."""
    with httpx.stream("POST", url + path, json={**body, "stream": True}, timeout=TIMEOUT) as response:
        assert response.status_code == 200, response.read()
        return response.headers, response.read().decode("utf-8")


def sse_payloads(raw: str) -> list[str]:
    """The data of each event, checking that each event is exactly one `data: ...` line."""
    assert raw.endswith("\n\n"), raw[-200:]
    events = raw[:-2].split("\n\n")
    for event in events:
        assert event.startswith("data: "), event
        assert "\n" not in event, f"more than one line in one event: {event!r}"
        assert not event.startswith("data: data:"), event
    return [event[len("data: "):] for event in events]


def stream_chunks(url: str, path: str = "/v1/completions", **body) -> list[dict]:
    """The JSON chunks of a streaming completion; checks the SSE framing and that [DONE] ends it."""
    headers, raw = raw_stream(url, body, path)
    assert headers["content-type"].startswith("text/event-stream")
    payloads = sse_payloads(raw)
    assert payloads[-1] == "[DONE]"
    assert "[DONE]" not in payloads[:-1]
    return [json.loads(p) for p in payloads[:-1]]


def streamed_texts(chunks: list[dict]) -> dict[int, str]:
    out: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            out[choice["index"]] = out.get(choice["index"], "") + choice["text"]
    return out


def token_ids(tiny_repo: Path, text: str) -> list[int]:
    manifest = read_manifest(tiny_repo, TINY)
    tokenizer = Tokenizer.from_file(str(model_dir(tiny_repo, TINY) / manifest.tokenizer_file))
    return tokenizer.encode(text, add_special_tokens=False).ids


def assert_error(response: httpx.Response, status: int, param: str | None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == "invalid_request_error"
    assert "param" in error
    assert error["param"] == param, error
    return error


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
    copilot_extras = {"nwo": "octo/repo", "extra": {"language": "python", "next_indent": 4,
                      "trim_by_indentation": True, "prompt_tokens": 5, "suffix_tokens": 0}, "whatever": [1]}
    without_model = greedy(url, **copilot_extras)
    assert without_model["model"] == TINY
    assert texts(without_model) == texts(with_model)


def test_copilot_engine_route(url):
    copilot_body = {"prompt": PROMPT, "suffix": "", "max_tokens": 12, "temperature": 0, "top_p": 1, "n": 1,
                    "stop": ["\n\n\n"], "nwo": "octo/repo", "logit_bias": NO_EOS,
                    "extra": {"language": "python", "next_indent": 0}}
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
        return complete(url, prompt=PROMPT, max_tokens=12, temperature=1.0, seed=seed, logit_bias=NO_EOS)[
            "choices"][0]["text"]

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
        if token.isascii() and token.isprintable() and token.strip() and choice["text"][offset:offset + len(token)] == token
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
    request = {"prompt": PROMPT, "max_tokens": 40, "temperature": 0, "logit_bias": NO_EOS,
               "stop": ["never-generated-zzz", stop] if as_list else stop}
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
        logprob, alternatives = lp["token_logprobs"][i], lp["top_logprobs"][i] or {}
        assert isinstance(token, str)
        assert isinstance(logprob, float) and logprob <= 0
        assert len(alternatives) <= top + 1
        assert all(v <= 0 for v in alternatives.values())
        if alternatives:  # greedy: the chosen token is the most likely one
            assert logprob >= max(alternatives.values()) - 1e-5
            if "\ufffd" not in token:
                assert alternatives[token] == pytest.approx(logprob, abs=1e-5)
        if i:
            assert lp["text_offset"][i] == lp["text_offset"][i - 1] + len(lp["tokens"][i - 1])


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


# --- streaming -----------------------------------------------------------------------------------


def test_stream_matches_plain_and_is_incremental(url):
    request = {"prompt": PROMPT, "max_tokens": 40, "temperature": 0, "logit_bias": NO_EOS}
    plain = complete(url, **request)
    chunks = stream_chunks(url, **request)
    assert len(chunks) >= 20  # one chunk per token or so, not the whole text at once
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and ids.pop().startswith("cmpl-")
    for chunk in chunks:
        assert chunk["object"] == "text_completion" and chunk["model"] == TINY
        assert "usage" not in chunk or chunk["usage"] is None
        [choice] = chunk["choices"]
        assert choice["index"] == 0
    assert streamed_texts(chunks) == {0: plain["choices"][0]["text"]}
    finish = [c["choices"][0]["finish_reason"] for c in chunks]
    assert finish[-1] == "length" and set(finish[:-1]) == {None}


def test_stream_logprobs_match_plain(url):
    request = {"prompt": PROMPT, "max_tokens": 12, "temperature": 0, "logit_bias": NO_EOS, "logprobs": 1}
    plain = complete(url, **request)["choices"][0]["logprobs"]
    merged: dict[str, list] = {k: [] for k in plain}
    for chunk in stream_chunks(url, **request):
        for key in merged:
            merged[key] += (chunk["choices"][0]["logprobs"] or {}).get(key, [])
    assert merged == plain


def test_stream_include_usage(url):
    request = {"prompt": PROMPT, "max_tokens": 9, "temperature": 0, "logit_bias": NO_EOS}
    plain = complete(url, **request)
    chunks = stream_chunks(url, **request, stream_options={"include_usage": True})
    *text_chunks, last = chunks
    assert last["choices"] == [] and last["usage"] == plain["usage"]
    assert all(c["choices"] for c in text_chunks)


def test_stream_n2_has_both_choices(url):
    request = {"prompt": PROMPT, "max_tokens": 8, "temperature": 1.0, "seed": 9, "n": 2, "logit_bias": NO_EOS}
    plain = complete(url, **request)
    chunks = stream_chunks(url, **request)
    assert streamed_texts(chunks) == {0: texts(plain)[0], 1: texts(plain)[1]}
    for index in (0, 1):
        finish = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["index"] == index]
        assert finish[-1] == "length" and set(finish[:-1]) == {None}


def test_stream_false_is_plain_json(url):
    response = post(url, {"prompt": PROMPT, "max_tokens": 4, "stream": False})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["object"] == "text_completion"


def test_invalid_streaming_request_gets_a_status_not_a_stream(url):
    response = post(url, {"prompt": PROMPT, "stream": True, "temperature": 3})
    assert_error(response, 400, "temperature")
    assert response.headers["content-type"].startswith("application/json")


# --- validation errors ---------------------------------------------------------------------------

BAD_REQUESTS = [
    pytest.param("", None, id="empty-body"),
    pytest.param("{", None, id="invalid-json"),
    pytest.param("[1, 2]", None, id="json-array"),
    pytest.param({"max_tokens": 3}, "prompt", id="missing-prompt"),
    pytest.param({"prompt": []}, "prompt", id="empty-prompt-list"),
    pytest.param({"prompt": [[1, 2], []]}, "prompt", id="empty-token-list"),
    pytest.param({"prompt": ""}, "prompt", id="empty-prompt-string"),
    pytest.param({"prompt": "x", "temperature": 3}, "temperature", id="temperature-3"),
    pytest.param({"prompt": "x", "top_p": 0}, "top_p", id="top_p-0"),
    pytest.param({"prompt": "x", "n": 0}, "n", id="n-0"),
    pytest.param({"prompt": "x", "n": 33}, "n", id="n-above-max_n"),
    pytest.param({"prompt": "x", "max_tokens": -1}, "max_tokens", id="max_tokens-negative"),
    pytest.param({"prompt": "x", "max_tokens": 2049}, "max_tokens", id="max_tokens-above-limit"),
    pytest.param({"prompt": "x", "max_tokens": TINY_CONTEXT}, "max_tokens", id="max_tokens-fills-context"),
    pytest.param({"prompt": "x", "logprobs": 6}, "logprobs", id="logprobs-6"),
    pytest.param({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop", id="five-stops"),
    pytest.param({"prompt": "x", "n": 2, "best_of": 1}, "best_of", id="best_of-below-n"),
    pytest.param({"prompt": "x", "stream": True, "n": 1, "best_of": 2}, "best_of", id="stream-best_of"),
    pytest.param({"prompt": "x", "best_of": 33}, "best_of", id="best_of-above-max_n"),
    pytest.param({"prompt": "x", "logit_bias": {"5": 101}}, "logit_bias", id="logit_bias-101"),
    pytest.param({"prompt": "x", "logit_bias": {"1000": 1}}, "logit_bias", id="logit_bias-outside-vocab"),
    pytest.param({"prompt": "x", "logit_bias": {"abc": 1}}, "logit_bias", id="logit_bias-not-a-token"),
    pytest.param({"prompt": "x", "presence_penalty": 3}, "presence_penalty", id="presence_penalty-3"),
    pytest.param({"prompt": "x", "frequency_penalty": -2.5}, "frequency_penalty", id="frequency_penalty--2.5"),
    pytest.param({"prompt": [5, 1000]}, "prompt", id="token-outside-vocab"),
    pytest.param({"prompt": [[5], [-1]]}, "prompt", id="negative-token"),
    pytest.param({"prompt": 5}, "prompt", id="prompt-int"),
    pytest.param({"prompt": "x", "stop": 5}, "stop", id="stop-int"),
    pytest.param({"prompt": "x", "n": "x"}, "n", id="n-string"),
    pytest.param({"prompt": "x", "max_tokens": 1.5}, "max_tokens", id="max_tokens-fraction"),
    pytest.param({"prompt": "x", "stream_options": 5}, "stream_options", id="stream_options-int"),
]


@pytest.mark.parametrize("body, param", BAD_REQUESTS)
def test_invalid_request(url, body, param):
    assert_error(post(url, body), 400, param)


def test_invalid_request_on_the_engine_route(url):
    assert_error(post(url, {"prompt": "x", "top_p": 0}, "/v1/engines/codegen/completions"), 400, "top_p")


def test_unknown_model(url):
    response = post(url, {"prompt": "x", "model": "gpt-17"})
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert error["param"] == "model" and error["code"] == "model_not_found"
    assert "gpt-17" in error["message"] and TINY in error["message"]


# --- models, health ------------------------------------------------------------------------------


def test_models(url):
    response = httpx.get(url + "/v1/models", timeout=TIMEOUT)
    assert response.status_code == 200
    listing = response.json()
    assert listing["object"] == "list"
    [card] = listing["data"]
    assert card["id"] == TINY and card["object"] == "model"
    assert card["architecture"] == "codegen"
    assert card["parameters"] > 0
    assert card["precision"] == "int8"
    assert card["context_length"] == TINY_CONTEXT
    assert card["ready"] is True


def test_health_and_ready(url):
    assert httpx.get(url + "/health", timeout=TIMEOUT).status_code == 200
    ready = httpx.get(url + "/ready", timeout=TIMEOUT)
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "models": {TINY: "ready"}}


# --- the official openai client ------------------------------------------------------------------


def test_openai_client(url):
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=TIMEOUT)
    request = {"model": TINY, "prompt": PROMPT, "max_tokens": 10, "temperature": 0, "logit_bias": NO_EOS}
    expected = greedy(url, max_tokens=10)["choices"][0]["text"]

    plain = client.completions.create(**request)
    assert plain.object == "text_completion" and plain.model == TINY
    assert plain.choices[0].text == expected and plain.choices[0].finish_reason == "length"
    assert plain.usage.completion_tokens == 10

    chunks = list(client.completions.create(**request, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == plain.usage.total_tokens

    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(**{**request, "temperature": 3})
    assert caught.value.status_code == 400


# --- disconnects ---------------------------------------------------------------------------------


def test_client_disconnect_mid_stream(url, tiny_server):
    request = {"prompt": PROMPT, "max_tokens": 100, "temperature": 0, "logit_bias": NO_EOS, "stream": True}
    for _ in range(3):
        with httpx.stream("POST", url + "/v1/completions", json=request, timeout=TIMEOUT) as response:
            assert response.status_code == 200
            events = 0
            for line in response.iter_lines():
                events += line.startswith("data: ")
                if events == 2:
                    break  # leaving the block closes the connection mid-stream
    started = time.monotonic()
    body = greedy(url, max_tokens=5)
    assert time.monotonic() - started < 5
    assert body["usage"]["completion_tokens"] == 5
    assert tiny_server.process.poll() is None


def test_client_disconnect_before_a_plain_response_cancels_the_generation(url, tiny_server):
    # ~2 s of work on this model (2 prompts x 16 samples x 100 tokens with top-5 logprobs); the client gives up at 0.3 s
    slow = {"prompt": ["def f(x):", "class A:"], "max_tokens": 100, "n": 16, "temperature": 1.0, "ignore_eos": True,
            "logprobs": 5}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/completions", json=slow, timeout=0.3)
    started = time.monotonic()
    body = greedy(url, max_tokens=5)  # the one worker is free again: the abandoned work stopped
    assert time.monotonic() - started < 1.5 and body["usage"]["completion_tokens"] == 5
    deadline = time.monotonic() + 5
    while "generation cancelled" not in tiny_server.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "client disconnected before its response: generation cancelled" in tiny_server.log.read_text()


def test_limits_come_from_the_environment(tiny_repo: Path) -> None:
    from tests.conftest import ServerProcess

    with ServerProcess(tiny_repo, [TINY], env={"SLIPSTREAM_MAX_STOP_SEQUENCES": "5", "SLIPSTREAM_MAX_N": "2"}) as server:
        five = post(server.url, {"prompt": PROMPT, "max_tokens": 4, "stop": ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]})
        assert five.status_code == 200, five.text
        assert_error(post(server.url, {"prompt": PROMPT, "n": 3}), 400, "n")


def test_each_limit_is_a_clear_4xx_naming_it(tiny_repo: Path) -> None:
    from tests.conftest import ServerProcess

    env = {"SLIPSTREAM_MAX_BODY_BYTES": "2048", "SLIPSTREAM_MAX_PROMPT_TOKENS": "40", "SLIPSTREAM_MAX_N": "32",
           "SLIPSTREAM_REQUEST_TIMEOUT_S": "0.3"}
    # ~1 s of work on this model (32 rows x 100 tokens with top-5 logprobs); its first token comes in milliseconds
    long_run = {"prompt": PROMPT, "max_tokens": 100, "n": 32, "temperature": 1.0, "ignore_eos": True, "logprobs": 5}
    with ServerProcess(tiny_repo, [TINY], env=env) as server:
        big = post(server.url, {"prompt": "x" * 3000})
        assert big.status_code == 413 and "max_body_bytes" in big.json()["error"]["message"]

        def chunked():  # no Content-Length: counted while it streams in
            yield b'{"prompt": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'"}'

        streamed = httpx.post(server.url + "/v1/completions", content=chunked(), timeout=TIMEOUT)
        assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "body_too_large"
        long_prompt = assert_error(post(server.url, {"prompt": "def f(x): return x\n" * 20, "max_tokens": 2}), 400, "prompt")
        assert "max_prompt_tokens" in long_prompt["message"]
        rows = assert_error(post(server.url, {"prompt": [PROMPT, PROMPT, PROMPT], "n": 12}), 400, "prompt")
        assert "36 sequences" in rows["message"] and "max_n" in rows["message"]
        # past request_timeout_s: a plain response is a 408, a started stream ends with an error event
        late = post(server.url, long_run)
        assert late.status_code == 408 and "request_timeout_s" in late.json()["error"]["message"]
        with httpx.stream("POST", server.url + "/v1/completions", json=long_run | {"stream": True}, timeout=TIMEOUT) as s:
            events = [line for line in s.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and "request_timeout_s" in events[-2]
        assert greedy(server.url, max_tokens=3)["usage"]["completion_tokens"] == 3  # the server is free again
