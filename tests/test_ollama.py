"""Ollama's API through the official `ollama` client (pinned), against real servers: streaming NDJSON,
the same text as our OpenAI routes for the same request, chat through the model's template, `suffix`
through our fill-in-the-middle on a model with sentinels, the model list and details Continue reads,
and errors in Ollama's own shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from tests.conftest import FIM_MODEL, TINY, TINY_LLAMA, ServerProcess

PROMPT = "def add(a, b):\n    "
GREEDY = {"temperature": 0, "num_predict": 8}


@pytest.fixture(scope="module")
def client(duo_server: ServerProcess) -> ollama.Client:
    return ollama.Client(host=duo_server.url, timeout=60)


def openai_text(server: ServerProcess, **body: object) -> str:
    response = httpx.post(f"{server.url}/v1/completions", json={"temperature": 0, **body}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


def test_generate_streams_the_same_text_as_completions(client: ollama.Client, duo_server: ServerProcess) -> None:
    chunks = list(client.generate(model=TINY, prompt=PROMPT, raw=True, options=GREEDY, stream=True))
    *pieces, last = chunks
    assert len(pieces) >= 2 and all(not c.done for c in pieces)  # token by token, not one block
    text = "".join(c.response for c in chunks)
    assert text == openai_text(duo_server, model=TINY, prompt=PROMPT, max_tokens=8)
    assert last.done and last.done_reason == "length" and last.eval_count == 8
    usage = httpx.post(f"{duo_server.url}/v1/completions", json={"model": TINY, "prompt": PROMPT, "max_tokens": 1}, timeout=60).json()[
        "usage"
    ]
    assert last.prompt_eval_count == usage["prompt_tokens"]
    assert 0 < last.prompt_eval_duration <= last.total_duration and last.eval_duration > 0


def test_generate_whole_and_with_a_stop(client: ollama.Client, duo_server: ServerProcess) -> None:
    whole = client.generate(model=f"{TINY}:latest", prompt=PROMPT, options=GREEDY)
    assert whole.done and whole.response == openai_text(duo_server, model=TINY, prompt=PROMPT, max_tokens=8)
    assert whole.eval_duration > 0 and 0 < whole.prompt_eval_duration < whole.total_duration  # timed, not streamed
    stop = whole.response[2:4]
    stopped = client.generate(model=TINY, prompt=PROMPT, options={**GREEDY, "stop": [stop]})
    assert stopped.response == whole.response[: whole.response.index(stop)] and stopped.done_reason == "stop"


def test_chat_and_generate_through_the_chat_template(client: ollama.Client, duo_server: ServerProcess) -> None:
    messages = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "add two numbers"}]
    openai = httpx.post(
        f"{duo_server.url}/v1/chat/completions",
        json={"model": TINY_LLAMA, "messages": messages, "max_tokens": 8, "temperature": 0},
        timeout=60,
    ).json()
    expected = openai["choices"][0]["message"]["content"]
    streamed = list(client.chat(model=TINY_LLAMA, messages=messages, options=GREEDY, stream=True))
    assert "".join(c.message.content or "" for c in streamed) == expected
    assert streamed[-1].done and streamed[-1].message.role == "assistant"
    assert streamed[-1].prompt_eval_count == openai["usage"]["prompt_tokens"]
    # /api/generate without raw on a model that chats: the prompt is the user's turn after the system prompt
    generated = client.generate(model=TINY_LLAMA, prompt="add two numbers", system="You write Python.", options=GREEDY)
    assert generated.response == expected
    raw = client.generate(model=TINY_LLAMA, prompt="add two numbers", raw=True, options=GREEDY)
    assert raw.response == openai_text(duo_server, model=TINY_LLAMA, prompt="add two numbers", max_tokens=8)


def test_suffix_fills_in_the_middle(fim_repo: Path) -> None:
    suffix = "\n\nprint(add(1, 2))\n"
    with ServerProcess(fim_repo, [FIM_MODEL]) as server:
        got = ollama.Client(host=server.url, timeout=60).generate(model=FIM_MODEL, prompt=PROMPT, suffix=suffix, options=GREEDY)
        assert got.response == openai_text(server, model=FIM_MODEL, prompt=PROMPT, suffix=suffix, max_tokens=8)
        assert got.prompt_eval_count > openai_usage(server, PROMPT)  # the suffix and the sentinels went in
        shown = ollama.Client(host=server.url).show(FIM_MODEL)
        assert "insert" in shown.capabilities and ".Suffix" in shown.template  # what Continue checks


def openai_usage(server: ServerProcess, prompt: str) -> int:
    return httpx.post(f"{server.url}/v1/completions", json={"model": FIM_MODEL, "prompt": prompt, "max_tokens": 1}, timeout=60).json()[
        "usage"
    ]["prompt_tokens"]


def test_suffix_on_a_model_without_sentinels_is_said_ignored(duo_server: ServerProcess) -> None:
    body = {
        "model": TINY,
        "prompt": PROMPT,
        "suffix": "\nprint(1)\n",
        "stream": False,
        "keep_alive": "30m",
        "options": {**GREEDY, "num_ctx": 4096},
    }
    response = httpx.post(f"{duo_server.url}/api/generate", json=body, timeout=60)
    assert response.status_code == 200
    assert set(response.headers["x-slipstream-ignored"].split(",")) == {"suffix", "keep_alive", "options.num_ctx"}
    assert response.json()["response"] == openai_text(duo_server, model=TINY, prompt=PROMPT, max_tokens=8)


def test_models_listed_shown_and_loaded(client: ollama.Client) -> None:
    listed = {m.model for m in client.list().models}
    assert listed == {f"{TINY}:latest", f"{TINY_LLAMA}:latest"}
    entry = next(m for m in client.list().models if m.model == f"{TINY}:latest")
    assert entry.size > 0 and entry.details.quantization_level == "INT8"
    shown = client.show(TINY_LLAMA)
    assert shown.modelinfo[f"{shown.details.family}.context_length"] == 128
    assert "completion" in shown.capabilities and "insert" not in shown.capabilities
    assert {m.model for m in client.ps().models} == listed
    loaded = client.generate(model=TINY, prompt="")  # how a client loads a model ahead of use
    assert loaded.done and loaded.done_reason == "load" and loaded.response == ""
    assert httpx.get(f"{client._client.base_url}/api/version").json()["version"]


@pytest.mark.parametrize(
    "call, status, says",
    [
        (lambda c: c.generate(model="no-such-model", prompt="x"), 404, "not found"),
        (lambda c: c.generate(model=TINY, prompt="x", options={"temperature": 5}), 400, "temperature"),
        (lambda c: c.generate(model=TINY, prompt="x", format="json"), 400, "format"),
        (lambda c: c.generate(model=TINY, prompt="x", images=[b"\x89PNG"]), 400, "images"),
        (lambda c: c.chat(model=TINY, messages=[{"role": "user", "content": "hi"}]), 400, "chat template"),
        (lambda c: c.chat(model=TINY_LLAMA, messages=[{"role": "wizard", "content": "hi"}]), 400, "role"),
        (
            lambda c: c.chat(
                model=TINY_LLAMA, messages=[{"role": "user", "content": "hi"}], tools=[{"type": "function", "function": {"name": "f"}}]
            ),
            400,
            "tools",
        ),
        (lambda c: c.show("no-such-model"), 404, "not found"),
    ],
)
def test_errors_in_ollamas_shape(client: ollama.Client, call, status: int, says: str) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        result = call(client)
        if isinstance(result, Iterator):
            list(result)
    assert caught.value.status_code == status and says in caught.value.error


def test_bad_json_and_streamed_errors_are_ollama_errors(duo_server: ServerProcess) -> None:
    response = httpx.post(f"{duo_server.url}/api/generate", content=b"{not json", timeout=30)
    assert response.status_code == 400 and set(response.json()) == {"error"}
    response = httpx.post(f"{duo_server.url}/api/chat", json={"model": TINY_LLAMA, "messages": []}, timeout=30)
    assert response.status_code == 400 and "messages" in response.json()["error"]
    # no param in Ollama's error: the message names the field's whole place in the body
    response = httpx.post(f"{duo_server.url}/api/generate", json={"model": TINY, "prompt": "x", "options": {"temperature": 5}}, timeout=30)
    assert response.status_code == 400 and response.json()["error"].startswith("options.temperature:")
    # a request the server refuses before streaming keeps its status even though Ollama streams by default
    response = httpx.post(
        f"{duo_server.url}/api/generate", json={"model": TINY, "prompt": "x", "options": {"num_predict": 10**9}}, timeout=30
    )
    assert response.status_code == 400 and "max_tokens" in response.json()["error"]
    # every line of a stream is one JSON object
    with httpx.stream(
        "POST", f"{duo_server.url}/api/generate", json={"model": TINY, "prompt": PROMPT, "raw": True, "options": GREEDY}, timeout=60
    ) as stream:
        assert stream.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in stream.iter_lines() if line]
    assert lines[-1]["done"] is True and all(line["done"] is False for line in lines[:-1])


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat", "/api/show", "/infill", "/v1/engines/tiny-codegen/completions"])
@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'"x"',
        b"null",
        b'{"model": 5}',
        b'{"model": "tiny-codegen", "prompt": {"a": 1}}',
        b'{"model": "tiny-codegen", "options": []}',
        b'{"model": "tiny-codegen", "messages": "hi"}',
        b'{"input_extra": [1, 2]}',
        b'{"model": "tiny-codegen", "n_predict": 1e400}',
        b'{"model": "tiny-codegen", "prompt": "x", "options": {"seed": -3}}',
    ],
)
def test_odd_bodies_on_the_plugin_routes_never_get_a_500(duo_server: ServerProcess, path: str, body: bytes) -> None:
    """A body a route cannot use gets a 4xx with an error; one it can (unknown fields are ignored, as
    the plugins' own servers ignore them) gets its answer: never a 500."""
    response = httpx.post(f"{duo_server.url}{path}", content=body, timeout=30)
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        assert "error" in response.json()
    if body.startswith(b"[") or body in (b'"x"', b"null", b'{"model": 5}'):
        assert response.status_code == 400


def test_an_unknown_option_with_any_name_is_named_back_safely(duo_server: ServerProcess) -> None:
    """The fuzzer's find: an option name outside latin-1 (or with a comma) made the header a 500."""
    body = {"model": TINY, "prompt": PROMPT, "stream": False, "options": {"\U0003c2e3,x": 1, **GREEDY}}
    response = httpx.post(f"{duo_server.url}/api/generate", json=body, timeout=60)
    assert response.status_code == 200
    assert response.headers["x-slipstream-ignored"] == "options.\\u3c2e3\\u002cx"
