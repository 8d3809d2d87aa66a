"""client.api (Client, AsyncClient) and the `slipstream complete` CLI against a real tiny server."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx
import pytest

from client.api import APIError, AsyncClient, Client
from tests.conftest import ROOT, TINY, free_port

NO_EOS = {"0": -100}  # the tiny model's EOS is token 0
PROMPT = "def fibonacci(n):"
GREEDY = {"max_tokens": 12, "temperature": 0, "logit_bias": NO_EOS}


@pytest.fixture(scope="module")
def url(tiny_server) -> str:
    return tiny_server.url


def server_text(url: str, **body) -> str:
    """The completion straight from the server, without the client under test."""
    response = httpx.post(url + "/v1/completions", json={"prompt": PROMPT, **body}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


def joined(chunks: list[dict]) -> str:
    return "".join(choice["text"] for chunk in chunks for choice in chunk["choices"])


# --- Client --------------------------------------------------------------------------------------


def test_client_complete_and_stream(url):
    expected = server_text(url, **GREEDY)
    with Client(url) as client:
        body = client.complete(PROMPT, **GREEDY)
        chunks = list(client.stream(PROMPT, **GREEDY))
    assert body["object"] == "text_completion" and body["model"] == TINY
    assert body["choices"][0]["text"] == expected
    assert body["usage"]["completion_tokens"] == GREEDY["max_tokens"]
    assert len(chunks) > 1
    assert joined(chunks) == expected
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_client_stream_stopped_early_leaves_client_usable(url):
    with Client(url) as client:
        stream = client.stream(PROMPT, max_tokens=40, temperature=0, logit_bias=NO_EOS)
        next(stream)
        stream.close()
        assert client.complete(PROMPT, **GREEDY)["choices"][0]["text"] == server_text(url, **GREEDY)


def test_client_models(url):
    with Client(url) as client:
        [card] = client.models()
    assert card["id"] == TINY and card["ready"] is True and card["context_length"] == 128


def test_client_raises_api_error_with_the_server_error(url):
    with Client(url) as client:
        with pytest.raises(APIError) as bad:
            client.complete(PROMPT, temperature=3)
        with pytest.raises(APIError) as bad_stream:
            list(client.stream(PROMPT, top_p=0))
        with pytest.raises(APIError) as missing:
            client.complete(PROMPT, model="no-such-model")
    assert bad.value.status == 400
    assert bad.value.error["type"] == "invalid_request_error" and bad.value.error["param"] == "temperature"
    assert "temperature" in str(bad.value) and "400" in str(bad.value)
    assert bad_stream.value.status == 400 and bad_stream.value.error["param"] == "top_p"
    assert missing.value.status == 404 and missing.value.error["code"] == "model_not_found"


# --- AsyncClient ---------------------------------------------------------------------------------


def test_async_client(url):
    expected = server_text(url, **GREEDY)

    async def run() -> tuple[dict, list[dict], list[dict], APIError]:
        async with AsyncClient(url) as client:
            body = await client.complete(PROMPT, **GREEDY)
            chunks = [chunk async for chunk in client.stream(PROMPT, **GREEDY)]
            models = await client.models()
            try:
                await client.complete(PROMPT, n=0)
            except APIError as exc:
                error = exc
            else:
                raise AssertionError("n=0 was accepted")
        return body, chunks, models, error

    body, chunks, models, error = asyncio.run(run())
    assert body["choices"][0]["text"] == expected
    assert len(chunks) > 1 and joined(chunks) == expected
    assert [m["id"] for m in models] == [TINY]
    assert error.status == 400 and error.error["param"] == "n"


def test_async_client_concurrent_requests(url):
    prompts = ["import os\n", "class Stack:", PROMPT]
    expected = [httpx.post(url + "/v1/completions", json={"prompt": p, **GREEDY}, timeout=30).json()["choices"][0]["text"] for p in prompts]

    async def run() -> list[str]:
        async with AsyncClient(url) as client:
            bodies = await asyncio.gather(*(client.complete(p, **GREEDY) for p in prompts))
        return [b["choices"][0]["text"] for b in bodies]

    assert asyncio.run(run()) == expected


# --- the CLI -------------------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "slipstream.cli", "complete", *args], cwd=ROOT, capture_output=True, timeout=60, encoding="utf-8"
    )


def test_cli_complete_prints_prompt_and_completion(url):
    expected = server_text(url, max_tokens=8)  # the CLI sends no temperature: the server's greedy default
    result = cli(PROMPT, "--url", url, "--max-tokens", "8")
    assert result.returncode == 0, result.stderr
    assert result.stdout == PROMPT + expected + "\n"


def test_cli_complete_stderr_is_clean(url):
    result = cli(PROMPT, "--url", url, "--max-tokens", "8")
    assert result.returncode == 0
    assert "ERROR" not in result.stderr and "Task was destroyed" not in result.stderr, result.stderr


def test_cli_complete_reports_server_errors(url):
    result = cli(PROMPT, "--url", url, "--model", "no-such-model")
    assert result.returncode != 0
    assert "404" in result.stderr and "no-such-model" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def closed_port_run() -> tuple[str, subprocess.CompletedProcess]:
    closed = f"http://127.0.0.1:{free_port()}"
    return closed, cli(PROMPT, "--url", closed, "--max-tokens", "8", "--timeout", "5")


def test_cli_complete_against_a_closed_port_fails(closed_port_run):
    _closed, result = closed_port_run
    assert result.returncode != 0


def test_cli_complete_against_a_closed_port_says_why(closed_port_run):
    closed, result = closed_port_run
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "cannot reach" in result.stderr and closed in result.stderr


# --- timing and peers' differences ----------------------------------------------------------------


def test_timed_completion(url):
    with Client(url) as client:
        timing = client.timed(PROMPT, max_tokens=10, temperature=0, ignore_eos=True)
    assert timing.completion_tokens == 10 and timing.prompt_tokens and timing.finish_reason == "length"
    assert 0 < timing.ttft_s <= timing.total_s
    assert timing.chunks >= 1 and len(timing.gaps_s) == timing.chunks - 1 and all(g >= 0 for g in timing.gaps_s)
    assert timing.text == server_text(url, max_tokens=10, temperature=0, ignore_eos=True)


class _Peer:
    """A replay of a peer server's answer on 127.0.0.1 (these peers do not run here): it records the
    request body and sends the given JSON."""

    def __init__(self, answer: dict) -> None:
        import http.server
        import json
        import threading

        peer = self
        self.bodies: list[dict] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                peer.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.handle_request, daemon=True).start()


def test_llama_cpp_logprobs_become_the_legacy_layout() -> None:
    answer = {
        "choices": [
            {
                "index": 0,
                "text": "x = 1",
                "finish_reason": "length",
                "logprobs": {
                    "content": [
                        {
                            "id": 87,
                            "token": "x",
                            "logprob": -0.5,
                            "bytes": [120],
                            "top_logprobs": [{"id": 87, "token": "x", "logprob": -0.5}],
                        },
                        {"id": 284, "token": " = 1", "logprob": -1.25, "bytes": [32, 61, 32, 49], "top_logprobs": []},
                    ]
                },
            }
        ]
    }
    peer = _Peer(answer)
    with Client(peer.url) as client:
        body = client.complete("y", max_tokens=2, logprobs=1, stop="\n")
    assert body["choices"][0]["logprobs"] == {
        "tokens": ["x", " = 1"],
        "token_logprobs": [-0.5, -1.25],
        "top_logprobs": [{"x": -0.5}, {}],
        "text_offset": [0, 1],
    }
    assert peer.bodies[0]["stop"] == ["\n"]  # a string stop goes as a list: FauxPilot splits strings into characters


def test_a_200_without_choices_is_an_error() -> None:
    peer = _Peer({"id": "cmpl-1", "object": "text_completion", "choices": []})  # FauxPilot's backend failure
    with Client(peer.url) as client, pytest.raises(APIError, match="without any choice"):
        client.complete("y", max_tokens=2)
