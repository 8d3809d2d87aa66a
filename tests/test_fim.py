"""Fill-in-the-middle through `suffix`, on a tiny StarCoder2 exported with its FIM sentinels: the prompt
ids in prefix-suffix-middle order, trimmed on the far side of the cursor, and the API using it (no
longer reporting the suffix as ignored); a model without sentinels still says it ignored the suffix."""

from __future__ import annotations

from pathlib import Path

import httpx

from server.engine.prompts import Prompter
from server.models.catalog import PRESETS
from tests.conftest import ServerProcess

NAME = "starcoder2-3b"
FIM = PRESETS[NAME].fim


def test_prompt_ids_in_prefix_suffix_middle_order(fim_repo: Path) -> None:
    prompter = Prompter(fim_repo, NAME)
    token = prompter.tokenizer.token_to_id
    pre, suf, mid = token(FIM.prefix), token(FIM.suffix), token(FIM.middle)
    before, after = "def add(a, b):\n    ", "\n\nprint(add(1, 2))\n"
    prompt = prompter.prepare(before, 8, suffix=after)
    ids = prompt.ids[prompt.prefix :]
    assert ids == [pre, *prompter.encode(before), suf, *prompter.encode(after), mid]
    assert prompt.trimmed == 0 and prompt.text == before
    # both sides too long for the context (128): the code before keeps its end, the code after its start
    long_before, long_after = "x = 1\n" * 100, "y = 2\n" * 100
    trimmed = prompter.prepare(long_before, 16, suffix=long_after)
    ids = trimmed.ids[trimmed.prefix :]
    assert len(trimmed.ids) + 16 <= prompter.manifest.context_length and trimmed.trimmed > 0
    cut_before, cut_after = ids[1 : ids.index(suf)], ids[ids.index(suf) + 1 : -1]
    assert cut_before == prompter.encode(long_before)[-len(cut_before) :]
    assert cut_after == prompter.encode(long_after)[: len(cut_after)]
    assert abs(len(cut_before) - len(cut_after)) <= 1  # both long: the room is shared
    # a short suffix leaves the rest of the room to the code before the cursor
    short = prompter.prepare(long_before, 16, suffix="\n")
    assert len(short.ids) + 16 == prompter.manifest.context_length
    assert prompter.prepare("", 4, suffix="return 1\n").ids[-1] == mid  # the cursor at the top of a file


def test_the_api_fills_in_the_middle(fim_repo: Path, tiny_server) -> None:
    body = {"prompt": "def add(a, b):\n    ", "suffix": "\n\nprint(add(1, 2))\n", "max_tokens": 4, "temperature": 0}
    with ServerProcess(fim_repo, [NAME]) as server:
        response = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
        plain = httpx.post(f"{server.url}/v1/completions", json={k: v for k, v in body.items() if k != "suffix"}, timeout=60)
    assert response.status_code == 200 and "x-slipstream-ignored" not in response.headers
    assert response.json()["usage"]["prompt_tokens"] == plain.json()["usage"]["prompt_tokens"] + 3 + len(
        Prompter(fim_repo, NAME).encode(body["suffix"])
    )
    ignored = httpx.post(f"{tiny_server.url}/v1/completions", json=body, timeout=60)  # CodeGen: no sentinels
    assert ignored.status_code == 200 and ignored.headers["x-slipstream-ignored"] == "suffix"
