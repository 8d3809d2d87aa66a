"""The prefix cache as a client of a real server sees it: usage.prompt_tokens_details.cached_tokens on
completions and chat (streaming too), the opt-out, a 400 for a cache_prompt of the wrong type, the
counters on /metrics, the budget on /v1/models, and, with API keys on, no reuse across keys."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.api_helpers import assert_error, post, sse_payloads
from tests.conftest import TINY, TINY_LLAMA, ServerProcess
from tests.test_metrics import scrape, value

# 84 tokens of the tiny models' 128
PROMPT = "def walk(top):\n    for entry in os.scandir(top):\n        if entry.is_dir():\n" * 2
KEYS = ("sk-slip-alice-0123456789", "sk-slip-bob-9876543210")


def cached(response: httpx.Response) -> int:
    assert response.status_code == 200, response.text
    return response.json()["usage"]["prompt_tokens_details"]["cached_tokens"]


def test_cached_tokens_are_reported_and_counted(duo_server: ServerProcess) -> None:
    url = duo_server.url
    before = scrape(url)
    body = {"model": TINY, "prompt": PROMPT + "            yield", "max_tokens": 4, "temperature": 0}
    first = post(url, body)
    assert first.status_code == 200, first.text
    stored = first.json()["usage"]["prompt_tokens"]
    reused = cached(post(url, body | {"prompt": body["prompt"] + " from walk(entry.path)"}))
    [card] = [m for m in httpx.get(f"{url}/v1/models", timeout=30).json()["data"] if m["id"] == TINY]
    grid = card["reuse_grid"]  # measured on this machine at load
    assert stored - grid < reused <= stored and reused % grid == 0  # the prompt before it, down to the grid
    assert cached(post(url, body | {"cache_prompt": False})) == 0
    # streaming: the usage chunk carries it
    raw = httpx.post(f"{url}/v1/completions", json=body | {"stream": True, "stream_options": {"include_usage": True}}, timeout=30).text
    usage = [json.loads(p) for p in sse_payloads(raw) if p != "[DONE]" and json.loads(p).get("usage")][-1]["usage"]
    assert usage["prompt_tokens"] - grid - 1 <= usage["prompt_tokens_details"]["cached_tokens"] < usage["prompt_tokens"]
    after = scrape(url)
    for name in (
        "slipstream_prefix_cache_lookups_total",
        "slipstream_prefix_cache_hits_total",
        "slipstream_prefix_cache_reused_tokens_total",
    ):
        assert value(after, name, model=TINY) > value(before, name, model=TINY), name
    assert value(after, "slipstream_prefix_cache_bytes", model=TINY) > 0
    models = {m["id"]: m for m in httpx.get(f"{url}/v1/models", timeout=30).json()["data"]}
    assert models[TINY]["prefix_cache_mb"] == 256


def test_chat_requests_sharing_a_system_prompt_reuse_it(duo_server: ServerProcess) -> None:
    system = {"role": "system", "content": "You write short Python functions with docstrings. " * 3}
    body = {"model": TINY_LLAMA, "max_tokens": 3, "temperature": 0}
    first = httpx.post(
        f"{duo_server.url}/v1/chat/completions",
        json=body | {"messages": [system, {"role": "user", "content": "Add two numbers."}]},
        timeout=30,
    )
    second = httpx.post(
        f"{duo_server.url}/v1/chat/completions",
        json=body | {"messages": [system, {"role": "user", "content": "Reverse a list."}]},
        timeout=30,
    )
    # the template's start and the system prompt, to the reuse grid: all but the user's turn (the first
    # request may reuse the template's start from other tests' chats on this server, not the system prompt)
    shared = second.json()["usage"]["prompt_tokens"] - len("Reverse a list.")
    assert shared - 64 < cached(second) < shared, second.json()["usage"]
    assert cached(first) < cached(second) - 32, (first.json()["usage"], second.json()["usage"])


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_a_cache_prompt_of_the_wrong_type_is_a_400_naming_it(duo_server: ServerProcess, bad: object) -> None:
    assert_error(post(duo_server.url, {"model": TINY, "prompt": PROMPT, "cache_prompt": bad}), 400, "cache_prompt")


def test_with_api_keys_a_request_never_reuses_another_keys_prefix(tiny_repo: Path) -> None:
    """Reuse would show in the response time what another key's requests typed: each key its own cache."""
    body = {"prompt": PROMPT + "            return", "max_tokens": 2, "temperature": 0}
    with ServerProcess(tiny_repo, [TINY], env={"SLIPSTREAM_API_KEYS": ",".join(KEYS)}) as server:

        def send(key: str) -> httpx.Response:
            return httpx.post(f"{server.url}/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)

        assert cached(send(KEYS[0])) == 0
        assert cached(send(KEYS[1])) == 0  # the same prompt, the other key: nothing of the first's reused
        assert cached(send(KEYS[0])) > 0 and cached(send(KEYS[1])) > 0


@pytest.mark.bundled
@pytest.mark.parametrize("name", ["gemma3-270m", "smollm2-135m"])
def test_a_long_editor_prompt_on_a_cached_prefix_completes_as_a_cold_one(bundled_server: ServerProcess, name: str) -> None:
    """The real models, past Gemma-3's 512-token sliding window: about 1,450 of 1,500 tokens reused (on
    the reuse grid measured at load), the greedy text and its logprobs are the cold prefill's, to the bit."""
    import textwrap

    tokens = httpx.post(
        f"{bundled_server.url}/v1/completions",
        timeout=120,
        json={
            "model": name,
            "prompt": Path(textwrap.__file__).read_text()[:12000],
            "max_tokens": 0,
            "echo": True,
            "logprobs": 0,
            "cache_prompt": False,
        },
    ).json()["choices"][0]["logprobs"]["tokens"]
    text = "".join(tokens[1:1501])  # past the model's prefix token; decoded pieces, as an editor sends text
    body = {"model": name, "max_tokens": 24, "temperature": 0, "logprobs": 1}
    cached(post(bundled_server.url, body | {"prompt": text[:-40], "max_tokens": 1}))  # a word before
    warm = post(bundled_server.url, body | {"prompt": text})
    cold = post(bundled_server.url, body | {"prompt": text, "cache_prompt": False})
    assert cached(warm) >= 1400 and cached(cold) == 0
    assert warm.json()["choices"][0]["text"] == cold.json()["choices"][0]["text"]
    warm_lp = warm.json()["choices"][0]["logprobs"]["token_logprobs"]
    cold_lp = cold.json()["choices"][0]["logprobs"]["token_logprobs"]
    assert warm_lp == cold_lp


def test_a_server_over_its_budget_evicts_and_counts(tiny_repo: Path) -> None:
    """prefix_cache_mb 1: distinct prompts past a megabyte of keys and values (the tiny CodeGen holds 1 KiB a
    token) push the oldest out; the bytes held stay within the budget and the evictions are counted."""
    with ServerProcess(tiny_repo, [TINY], env={"SLIPSTREAM_PREFIX_CACHE_MB": "1"}) as server:
        for i in range(24):  # about 100 tokens each, none a prefix of another
            prompt = f"# module {i}\n" + PROMPT.replace("walk", f"walk_{i}").replace("top", f"top{i}")
            assert post(server.url, {"model": TINY, "prompt": prompt, "max_tokens": 2}).status_code == 200
        metrics = scrape(server.url)
    assert value(metrics, "slipstream_prefix_cache_evictions_total", model=TINY) > 0
    assert 0 < value(metrics, "slipstream_prefix_cache_bytes", model=TINY) <= 1 << 20
