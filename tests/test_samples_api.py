"""Many samples of one prompt through the API (the researcher's n): 1 to 64 choices in one request,
each choice's text the same whatever n it came with (the fused graph's rows are independent), min-p
taken by every API that has it and checked."""

from __future__ import annotations

import pytest

from tests.api_helpers import assert_error, complete, post
from tests.conftest import TINY_LLAMA

SAMPLED = dict(
    model=TINY_LLAMA, prompt="def merge(a, b):\n", max_tokens=10, temperature=0.9, top_p=0.95, min_p=0.02, seed=5, ignore_eos=True
)


@pytest.fixture(scope="module")
def url(duo_server) -> str:
    return duo_server.url


def test_n_from_1_to_64_choices_each_as_with_any_other_n(url: str) -> None:
    by_n = {}
    for n in (1, 4, 16, 64):
        body = complete(url, n=n, logprobs=0, **SAMPLED)
        choices = sorted(body["choices"], key=lambda c: c["index"])
        assert [c["index"] for c in choices] == list(range(n))
        assert body["usage"]["completion_tokens"] == 10 * n
        assert all(len(c["logprobs"]["token_logprobs"]) == 10 for c in choices)
        by_n[n] = [c["text"] for c in choices]
    for n in (4, 16, 64):
        assert by_n[n][: len(by_n[n // 4 if n > 4 else 1])] == by_n[n // 4 if n > 4 else 1]  # choice i: the same text
    assert len(set(by_n[64])) > 32  # they really sample


def test_min_p_cuts_and_is_checked(url: str) -> None:
    # min_p = 1 keeps only the most likely token: the greedy text, whatever the seed
    greedy = complete(url, **{**SAMPLED, "temperature": 0.0, "min_p": 0.0})["choices"][0]["text"]
    for seed in (1, 2):
        assert complete(url, **{**SAMPLED, "min_p": 1.0, "seed": seed})["choices"][0]["text"] == greedy
    assert_error(post(url, {**SAMPLED, "min_p": 1.5}), 400, "min_p")
    ollama = post(
        url,
        {"model": TINY_LLAMA, "prompt": "x", "raw": True, "stream": False, "options": {"min_p": 1.0, "num_predict": 4}},
        "/api/generate",
    )
    assert ollama.status_code == 200, ollama.text
    assert "options.min_p" not in ollama.headers.get("X-Slipstream-Ignored", "")
    assert post(url, {"model": TINY_LLAMA, "prompt": "x", "options": {"min_p": -1}}, "/api/generate").status_code == 400
