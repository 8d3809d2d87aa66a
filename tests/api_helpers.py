"""What the HTTP API tests share: requests to a real server, SSE parsing, error checks."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from tokenizers import Tokenizer

from server.models.store import model_dir, read_manifest
from tests.conftest import TINY

NO_EOS = {"0": -100}  # the tiny model's EOS is token 0: with this, generation runs to max_tokens
PROMPT = "def fibonacci(n):"
TIMEOUT = 30.0


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
    return [event[len("data: ") :] for event in events]


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
