"""The HTTP API of a real `slipstream serve` process (tiny random CodeGen), continued: streaming,
validation errors, models and health, the official `openai` client, client disconnects and limits."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.api_helpers import (
    NO_EOS,
    PROMPT,
    TIMEOUT,
    assert_error,
    complete,
    greedy,
    post,
    stream_chunks,
    streamed_texts,
    texts,
)
from tests.conftest import TINY, TINY_CONTEXT
from tests.test_faults import wait_for
from tests.test_transport import HEAVY_WORK, _batch_rows, _cancelled, _connect, _head, decoded_rows, wait_for_an_empty_batch


@pytest.fixture(scope="module")
def url(tiny_server) -> str:
    return tiny_server.url


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
    pytest.param({"prompt": "x", "n": 65}, "n", id="n-above-max_n"),
    pytest.param({"prompt": "x", "max_tokens": -1}, "max_tokens", id="max_tokens-negative"),
    pytest.param({"prompt": "x", "max_tokens": 2049}, "max_tokens", id="max_tokens-above-limit"),
    pytest.param({"prompt": "x", "max_tokens": TINY_CONTEXT}, "max_tokens", id="max_tokens-fills-context"),
    pytest.param({"prompt": "x", "logprobs": 6}, "logprobs", id="logprobs-6"),
    pytest.param({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop", id="five-stops"),
    pytest.param({"prompt": "x", "n": 2, "best_of": 1}, "best_of", id="best_of-below-n"),
    pytest.param({"prompt": "x", "stream": True, "n": 1, "best_of": 2}, "best_of", id="stream-best_of"),
    pytest.param({"prompt": "x", "best_of": 65}, "best_of", id="best_of-above-max_n"),
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


ABANDONED = 12  # heavy requests (tests/test_transport.py's HEAVY_WORK): three times the batch's rows
HEAVY = {"prompt": PROMPT, **HEAVY_WORK}


def test_client_disconnect_mid_stream(url, tiny_server):
    before, decoded = _cancelled(tiny_server), decoded_rows(tiny_server)
    for _ in range(ABANDONED):
        with httpx.stream("POST", url + "/v1/completions", json={**HEAVY, "stream": True}, timeout=TIMEOUT) as response:
            assert response.status_code == 200
            events = 0
            for line in response.iter_lines():
                events += line.startswith("data: ")
                if events == 2:
                    break  # leaving the block closes the connection mid-stream
    wait_for_an_empty_batch(tiny_server, before, ABANDONED, decoded)
    body = greedy(url, max_tokens=5)
    assert body["usage"]["completion_tokens"] == 5
    assert tiny_server.process.poll() is None


def test_client_disconnect_before_a_plain_response_cancels_the_generation(tiny_repo: Path) -> None:
    """Clients that give up on plain (not streamed) responses while their rows decode, 256 of them in one
    batch (seconds of work; the server counts the rows it decodes): the server notices while it waits
    for each whole answer and drops the rows."""
    from tests.conftest import ServerProcess

    body = json.dumps(HEAVY).encode()
    with ServerProcess(tiny_repo, [TINY], env={"SLIPSTREAM_MAX_BATCH_ROWS": "256"}) as server:
        before, decoded = _cancelled(server), decoded_rows(server)
        clients = [_connect(server) for _ in range(16)]
        for client in clients:
            client.sendall(_head(len(body)) + body)
        deadline = time.monotonic() + 60
        while _batch_rows(server) < 256 and time.monotonic() < deadline:  # all sixteen decoding together
            time.sleep(0.02)
        assert _batch_rows(server) == 256, "the generations never all started"
        at_leave = decoded_rows(server)  # the rows decoded while all sixteen were admitted count as done
        for client in clients:
            client.close()
        wait_for_an_empty_batch(server, before, 16, decoded, at_leave)
        assert "client disconnected before its response: generation cancelled" in server.log.read_text()
        assert greedy(server.url, max_tokens=5)["usage"]["completion_tokens"] == 5


def test_limits_come_from_the_environment(tiny_repo: Path) -> None:
    from tests.conftest import ServerProcess

    with ServerProcess(tiny_repo, [TINY], env={"SLIPSTREAM_MAX_STOP_SEQUENCES": "5", "SLIPSTREAM_MAX_N": "2"}) as server:
        five = post(server.url, {"prompt": PROMPT, "max_tokens": 4, "stop": ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]})
        assert five.status_code == 200, five.text
        assert_error(post(server.url, {"prompt": PROMPT, "n": 3}), 400, "n")


def test_each_limit_is_a_clear_4xx_naming_it(tiny_repo: Path) -> None:
    from tests.conftest import ServerProcess

    env = {
        "SLIPSTREAM_MAX_BODY_BYTES": "2048",
        "SLIPSTREAM_MAX_PROMPT_TOKENS": "40",
        "SLIPSTREAM_MAX_N": "64",
        "SLIPSTREAM_REQUEST_TIMEOUT_S": "0.3",
    }
    # 2-3 s of work on this model on two cores (64 rows x 120 tokens with top-5 logprobs), so far past the
    # 0.3 s limit on a faster machine too; its first token comes in milliseconds
    long_run = {"prompt": PROMPT, "max_tokens": 120, "n": 64, "temperature": 1.0, "ignore_eos": True, "logprobs": 5}
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
        rows = assert_error(post(server.url, {"prompt": [PROMPT, PROMPT, PROMPT], "n": 22}), 400, "prompt")
        assert "66 sequences" in rows["message"] and "max_n" in rows["message"]
        # past request_timeout_s: a plain response is a 408, a started stream ends with an error event
        late = post(server.url, long_run)
        assert late.status_code == 408 and "request_timeout_s" in late.json()["error"]["message"]
        with httpx.stream("POST", server.url + "/v1/completions", json=long_run | {"stream": True}, timeout=TIMEOUT) as s:
            events = [line for line in s.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and "request_timeout_s" in events[-2]
        assert greedy(server.url, max_tokens=3)["usage"]["completion_tokens"] == 3  # the server is free again


def test_past_max_queue_a_request_is_refused_with_429_before_any_byte(tiny_repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    """max_queue bounds the requests a model holds (decoding and waiting): one in flight with a limit of
    1, the next gets a 429 with Retry-After at once, a stream too (its own status, not an error event).
    Our client fails at once without retries, and with them waits the Retry-After until there is room."""
    import concurrent.futures

    from client.api import APIError, Client
    from tests.conftest import ServerProcess

    # ~4 s of work on this model (2 cores): the first request is still decoding when the others arrive,
    # on a slow or busy machine too
    long_run = {"prompt": PROMPT, "max_tokens": 100, "n": 128, "temperature": 1.0, "ignore_eos": True, "logprobs": 5}
    caplog.set_level("WARNING", logger="slipstream.client")

    def patient_request(url: str) -> dict:
        with Client(url, max_retries=100) as client:
            return client.complete(PROMPT, max_tokens=3, temperature=0)

    with (
        ServerProcess(tiny_repo, [TINY], env={"SLIPSTREAM_MAX_QUEUE": "1", "SLIPSTREAM_MAX_N": "128"}) as server,
        concurrent.futures.ThreadPoolExecutor(1) as waiting,
    ):
        with httpx.stream("POST", server.url + "/v1/completions", json=long_run | {"stream": True}, timeout=TIMEOUT) as s:
            lines = s.iter_lines()  # kept: a dropped iterator closes the response (the client goes away)
            assert s.status_code == 200 and next(lines).startswith("data: ")
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                plain, stream = pool.map(lambda body: post(server.url, body), [long_run, long_run | {"stream": True}])
            with Client(server.url, max_retries=0) as impatient, pytest.raises(APIError) as refused_at_once:
                impatient.complete(PROMPT, max_tokens=3)
            patient = waiting.submit(patient_request, server.url)
            # retried after each Retry-After while the first request holds the one place
            wait_for(lambda: "HTTP 429" in caplog.text and "retry 1 in 1.0 s" in caplog.text, 30, "no retry logged")
            assert not patient.done()
        # the stream closed: the first request is cancelled, and the patient one gets its place
        assert patient.result(timeout=60)["usage"]["completion_tokens"] == 3
        assert refused_at_once.value.status == 429 and refused_at_once.value.retry_after == 1.0
        for refused in (plain, stream):
            assert refused.status_code == 429 and refused.headers["retry-after"] == "1", refused.text
            assert refused.headers["content-type"] == "application/json"
            assert "max_queue" in refused.json()["error"]["message"]
        assert greedy(server.url, max_tokens=3)["usage"]["completion_tokens"] == 3  # the first one done, room again
