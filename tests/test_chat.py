"""/v1/chat/completions and several models in one server, on a real server process: the tiny Llama
(a chat template, ChatML) and the tiny CodeGen (none), served together."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import TINY, TINY_LLAMA

NO_EOS = {"0": -100}
MESSAGES = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "Add two numbers."}]


@pytest.fixture(scope="module")
def url(duo_server) -> str:
    return duo_server.url


def chat(url: str, **body) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json={"messages": MESSAGES, **body}, timeout=30)


def chat_chunks(url: str, **body) -> list[dict]:
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={"messages": MESSAGES, **body, "stream": True}, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        payloads = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]"
    return [json.loads(p) for p in payloads[:-1]]


def test_models_say_which_chat(url: str) -> None:
    cards = {c["id"]: c for c in httpx.get(f"{url}/v1/models").json()["data"]}
    assert list(cards) == [TINY_LLAMA, TINY]
    assert cards[TINY_LLAMA]["chat"] is True and cards[TINY]["chat"] is False
    assert cards[TINY_LLAMA]["architecture"] == "llama" and cards[TINY]["architecture"] == "codegen"


def test_each_model_answers_under_its_own_name(url: str) -> None:
    def complete(**extra) -> dict:
        r = httpx.post(
            f"{url}/v1/completions",
            json={"prompt": "def f(x):", "max_tokens": 12, "temperature": 0, "logit_bias": NO_EOS, **extra},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        return r.json()

    llama, codegen, default = complete(model=TINY_LLAMA), complete(model=TINY), complete()
    assert (llama["model"], codegen["model"], default["model"]) == (TINY_LLAMA, TINY, TINY_LLAMA)
    assert llama["choices"][0]["text"] != codegen["choices"][0]["text"]
    assert default["choices"][0]["text"] == llama["choices"][0]["text"]
    missing = httpx.post(f"{url}/v1/completions", json={"prompt": "x", "model": "nope"}, timeout=30)
    assert missing.status_code == 404 and TINY in missing.json()["error"]["message"] and TINY_LLAMA in missing.json()["error"]["message"]


def test_chat_renders_the_model_template_like_transformers(url: str, tiny_llama_checkpoint: Path, tiny_llama_repo: Path) -> None:
    from transformers import AutoTokenizer

    from server.engine import Prompter

    r = chat(url, max_tokens=8, temperature=0, logit_bias=NO_EOS)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion" and body["model"] == TINY_LLAMA
    [choice] = body["choices"]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 8
    reference = AutoTokenizer.from_pretrained(tiny_llama_checkpoint)
    expected = reference.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=True)
    if isinstance(expected, dict):  # newer transformers return a BatchEncoding
        expected = expected["input_ids"]
    ours = Prompter(tiny_llama_repo, TINY_LLAMA)
    ids = ours.prepare(ours.chat_prompt(MESSAGES), 8, raw=False).ids  # what the server sends the model
    assert ids == list(expected)  # the same conversation, token for token
    assert body["usage"]["prompt_tokens"] == len(expected)


def test_chat_stream_matches_plain(url: str) -> None:
    params = dict(max_tokens=20, temperature=0, logit_bias=NO_EOS)
    plain = chat(url, **params).json()["choices"][0]["message"]["content"]
    chunks = chat_chunks(url, **params, stream_options={"include_usage": True})
    deltas = [c["choices"][0] for c in chunks if c["choices"]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert deltas[0]["delta"]["role"] == "assistant" and all("role" not in d["delta"] for d in deltas[1:])
    assert "".join(d["delta"].get("content", "") for d in deltas) == plain
    assert deltas[-1]["finish_reason"] == "length" and all(d["finish_reason"] is None for d in deltas[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 20


def test_chat_logprobs_and_n(url: str) -> None:
    body = chat(url, max_tokens=6, temperature=1.0, seed=3, n=2, logprobs=True, top_logprobs=2, logit_bias=NO_EOS).json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    for choice in body["choices"]:
        content = choice["logprobs"]["content"]
        assert len(content) == 6
        for entry in content:
            alternatives = [a["token"] for a in entry["top_logprobs"]]
            assert entry["logprob"] <= 0 and (len(alternatives) == 2 or (alternatives and "\ufffd" in alternatives))
            assert all(a["logprob"] <= 0 and a["bytes"] == list(a["token"].encode("utf-8")) for a in entry["top_logprobs"])
            assert entry["bytes"] == list(entry["token"].encode("utf-8"))


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
        ({"messages": MESSAGES, "top_logprobs": 2}, "top_logprobs"),
        ({"messages": MESSAGES, "temperature": 5}, "temperature"),
        ({"messages": MESSAGES, "model": TINY}, "model"),  # a base model: no chat template
        ({"messages": MESSAGES, "max_completion_tokens": 128}, "max_tokens"),  # leaves no room for the prompt
    ],
)
def test_chat_errors_name_the_field(url: str, body: dict, param: str) -> None:
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_base_model_chat_error_points_to_completions(url: str) -> None:
    message = chat(url, model=TINY).json()["error"]["message"]
    assert "/v1/completions" in message and TINY_LLAMA in message


def test_openai_package_chats(url: str) -> None:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    params = dict(model=TINY_LLAMA, messages=MESSAGES, max_tokens=10, temperature=0, logit_bias=NO_EOS)
    plain = client.chat.completions.create(**params)
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**params, stream=True) if c.choices)
    assert plain.choices[0].message.content == streamed and plain.usage.completion_tokens == 10


def test_lazy_loading_loads_a_model_on_its_first_request(duo_repo: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tests.conftest import ServerProcess

    with ServerProcess(duo_repo, [TINY_LLAMA, TINY], env={"SLIPSTREAM_LOAD": "lazy"}) as server:
        ready = httpx.get(f"{server.url}/ready").json()
        assert ready == {"ready": True, "models": {TINY_LLAMA: "standby", TINY: "standby"}}
        cards = {c["id"]: c for c in httpx.get(f"{server.url}/v1/models").json()["data"]}
        assert cards[TINY]["status"] == "standby" and cards[TINY]["ready"] is True and cards[TINY]["parameters"] > 0

        def complete(_i: int) -> str:
            r = httpx.post(
                f"{server.url}/v1/completions",
                json={"model": TINY, "prompt": "def f(x):", "max_tokens": 8, "temperature": 0, "logit_bias": NO_EOS},
                timeout=60,
            )
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["text"]

        with ThreadPoolExecutor(3) as pool:  # three first requests at once share one load
            texts = list(pool.map(complete, range(3)))
        assert len(set(texts)) == 1 and texts[0]
        assert httpx.get(f"{server.url}/ready").json()["models"] == {TINY_LLAMA: "standby", TINY: "ready"}
        assert server.log.read_text().count(f"model {TINY} ready") == 1
