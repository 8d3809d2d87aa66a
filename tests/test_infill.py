"""llama.cpp's /infill with the request bodies llama.vim sends (its FIM request and its warm-up of the
cache as its ring of other files' chunks changes), against real servers: a tiny StarCoder2 with FIM
sentinels and repository tokens, and the tiny CodeGen without. The prompt's layout (other files first,
with the model's tokens, dropped whole from the first when long), prefix-cache hits keystroke after
keystroke, n_indent and t_max_predict_ms, llama.cpp's response fields and error shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.engine import ContextFile, Prompter
from server.engine.text import StopMatcher
from tests.conftest import FIM_MODEL, TINY, ServerProcess

PREFIX = "import math\n\n\ndef area(r):\n"
LINE = "    return "
SUFFIX = "\n\n\nprint(area(2))\n"
EXTRA = [
    {"text": "def circumference(r):\n    return 2 * math.pi * r\n", "time": 1733000000, "filename": "geometry.py"},
    {"text": "RADIUS = 3\n", "time": 1733000001, "filename": "config.py"},
]


def llama_vim_fim(**changes: object) -> dict:
    """The body of llama.vim's FIM request (autoload/llama.vim, llama#fim), greedy here so that it compares."""
    return {
        "id_slot": 0,
        "input_prefix": PREFIX,
        "input_suffix": SUFFIX,
        "input_extra": EXTRA,
        "prompt": LINE,
        "n_predict": 8,
        "stop": [],
        "n_indent": 0,
        "top_k": 40,
        "top_p": 0.90,
        "stream": False,
        "samplers": ["top_k", "top_p", "infill"],
        "cache_prompt": True,
        "t_max_prompt_ms": 500,
        "t_max_predict_ms": 1000,
        "temperature": 0,
        **changes,
    }


def llama_vim_warm_up(extra: list[dict]) -> dict:
    """llama.vim's ring update: the new extra context alone, nothing predicted, to fill the cache."""
    return {
        "id_slot": 0,
        "input_prefix": "",
        "input_suffix": "",
        "input_extra": extra,
        "prompt": "",
        "n_predict": 0,
        "temperature": 0.0,
        "stream": False,
        "samplers": ["temperature"],
        "cache_prompt": True,
        "t_max_prompt_ms": 1,
        "t_max_predict_ms": 1,
    }


@pytest.fixture(scope="module")
def fim_server(fim_repo: Path) -> Iterator[ServerProcess]:
    with ServerProcess(fim_repo, [FIM_MODEL]) as server:
        yield server


def post(server: ServerProcess, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=60)


def test_layout_other_files_first_with_the_repository_tokens(fim_repo: Path) -> None:
    prompter = Prompter(fim_repo, FIM_MODEL)
    fim = prompter.manifest.fim
    assert fim is not None and fim.repo_name and fim.file_sep
    token = prompter.tokenizer.token_to_id
    files = [ContextFile(e["filename"], e["text"]) for e in EXTRA]
    prompt = prompter.prepare(PREFIX + LINE, 8, suffix=SUFFIX, extra=files)
    ids = prompt.ids[prompt.prefix :]
    chunks = [[token(fim.file_sep), *prompter.encode(f"{f.filename}\n{f.text}")] for f in files]
    head = [token(fim.repo_name), *prompter.encode("project\n"), *chunks[0], *chunks[1]]
    assert ids == [
        *head,
        token(fim.prefix),
        *prompter.encode(PREFIX + LINE),
        token(fim.suffix),
        *prompter.encode(SUFFIX),
        token(fim.middle),
    ]
    # long: the code at the cursor keeps its room, files go whole from the first; the last file stays
    big = [ContextFile(f"f{i}.py", f"value_{i} = {i}\n" * 6) for i in range(8)]
    long = prompter.prepare(PREFIX + LINE, 8, suffix=SUFFIX, extra=big)
    ids = long.ids[long.prefix :]
    assert len(long.ids) + 8 <= prompter.manifest.context_length and long.trimmed > 0
    present = [contains(ids, [token(fim.file_sep), *prompter.encode(f"{f.filename}\n{f.text}")]) for f in big]
    kept = [i for i, here in enumerate(present) if here]
    assert kept and kept == list(range(8 - len(kept), 8))  # whole files, a run ending at the last one
    start = ids.index(token(fim.prefix))
    assert ids[-1] == token(fim.middle) and ids[start + 1 : start + 5] == prompter.encode(PREFIX + LINE)[:4]
    # one keystroke later the files, and so the prompt's start, are the same
    later = prompter.prepare(PREFIX + LINE + "m", 8, suffix=SUFFIX, extra=big)
    assert later.ids[: later.ids.index(token(fim.prefix))] == long.ids[: long.ids.index(token(fim.prefix))]


def contains(ids: list[int], part: list[int]) -> bool:
    return any(ids[at : at + len(part)] == part for at in range(len(ids) - len(part) + 1))


def test_llama_vim_fim_request(fim_server: ServerProcess) -> None:
    response = post(fim_server, "/infill", llama_vim_fim())
    assert response.status_code == 200, response.text
    got = response.json()
    same = post(
        fim_server, "/v1/completions", {"prompt": PREFIX + LINE, "suffix": SUFFIX, "input_extra": EXTRA, "max_tokens": 8, "temperature": 0}
    ).json()
    assert got["content"] == same["choices"][0]["text"]
    assert got["tokens_evaluated"] == same["usage"]["prompt_tokens"] and got["tokens_predicted"] <= 8
    assert got["stop"] is True and got["stop_type"] in ("eos", "limit") and got["model"] == FIM_MODEL
    timings = got["timings"]
    assert timings["prompt_n"] + timings["cache_n"] == got["tokens_evaluated"] and timings["predicted_n"] == got["tokens_predicted"]
    assert timings["prompt_ms"] > 0 and {"prompt_per_second", "predicted_per_token_ms"} <= set(timings)
    assert timings["predicted_n"] < 2 or timings["predicted_ms"] > 0  # the first token's time, not the response's
    ignored = set(response.headers["x-slipstream-ignored"].split(","))
    assert ignored == {"samplers", "t_max_prompt_ms", "id_slot"}


def test_speculation_on_infill_counts_drafts_as_llama_cpp_does(fim_server: ServerProcess) -> None:
    """`speculative` (our extension) on /infill: the same content as without, and timings' draft_n and
    draft_n_accepted, as llama.cpp's server reports its speculation (absent where nothing was drafted)."""
    body = llama_vim_fim(n_predict=32, prompt="x = [1, 2, 3]\ny = [1, 2, 3]\nz = [1, 2", input_extra=[])
    plain = post(fim_server, "/infill", body).json()
    drafted = post(fim_server, "/infill", body | {"speculative": True}).json()
    assert drafted["content"] == plain["content"]
    assert "draft_n" not in plain["timings"]
    assert drafted["timings"]["draft_n"] >= drafted["timings"]["draft_n_accepted"] > 0, drafted["timings"]
    refused = post(fim_server, "/infill", body | {"speculative": "yes"})
    assert refused.status_code == 400 and "speculative" in refused.json()["error"]["message"]


def test_response_fields_and_streaming(fim_server: ServerProcess) -> None:
    fields = ["content", "timings/prompt_n", "timings/predicted_n", "tokens_cached", "truncated"]
    got = post(fim_server, "/infill", llama_vim_fim(response_fields=fields)).json()
    assert set(got) == set(fields)  # llama.cpp keeps each path as the key
    events = []
    with httpx.stream("POST", f"{fim_server.url}/infill", json=llama_vim_fim(stream=True), timeout=60) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: ") :])
    assert "[DONE]" not in events  # llama.cpp's own endpoints end with the stop event
    parsed = [json.loads(e) for e in events]
    assert parsed[-1]["stop"] is True and all(e["stop"] is False for e in parsed[:-1])
    assert "".join(e["content"] for e in parsed) == got["content"]


def test_warm_up_then_keystrokes_hit_the_prefix_cache(fim_server: ServerProcess) -> None:
    extra = [{"text": f"def helper_{i}(x):\n    return x + {i}\n", "filename": f"helpers_{i}.py"} for i in range(3)]
    warm = post(fim_server, "/infill", llama_vim_warm_up(extra))
    assert warm.status_code == 200 and warm.json()["content"] == "" and warm.json()["tokens_predicted"] == 0
    first = post(fim_server, "/infill", llama_vim_fim(input_extra=extra)).json()
    files = warm.json()["tokens_evaluated"] - 3  # the warm-up's prompt: the files and three sentinels
    [card] = [m for m in httpx.get(f"{fim_server.url}/v1/models", timeout=30).json()["data"] if m["id"] == FIM_MODEL]
    grid = card["reuse_grid"]  # measured on this machine at load (1 to 64)
    assert first["tokens_cached"] > files - grid  # the files came from the cache, down to the reuse grid
    typed = post(fim_server, "/infill", llama_vim_fim(input_extra=extra, prompt=LINE + "m")).json()
    assert typed["tokens_cached"] >= files + len(PREFIX) // 8  # and, next keystroke, the code before the cursor


def test_on_a_model_without_sentinels(tiny_server: ServerProcess) -> None:
    response = post(tiny_server, "/infill", llama_vim_fim())
    assert response.status_code == 200
    assert "suffix" in response.headers["x-slipstream-ignored"].split(",")
    same = post(tiny_server, "/v1/completions", {"prompt": PREFIX + LINE, "input_extra": EXTRA, "max_tokens": 8, "temperature": 0}).json()
    assert response.json()["content"] == same["choices"][0]["text"]
    # each file under a `--- path ---` line; in this 128-token context the files get half the room: the
    # last file fits, the first does not and is left out whole (and counted as trimmed)
    last = EXTRA[-1]
    plain = post(
        tiny_server,
        "/v1/completions",
        {"prompt": f"--- {last['filename']} ---\n{last['text']}\n\n" + PREFIX + LINE, "max_tokens": 8, "temperature": 0},
    ).json()
    assert same["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]
    assert same["choices"][0]["text"] == plain["choices"][0]["text"]
    assert same["usage"]["prompt_tokens_trimmed"] > 0 and plain["usage"]["prompt_tokens_trimmed"] == 0


def test_t_max_predict_ms_ends_at_a_newline(tiny_server: ServerProcess, tiny_repo: Path) -> None:
    newline = Prompter(tiny_repo, TINY).encode("\n")[0]
    body = {"prompt": PREFIX, "max_tokens": 60, "temperature": 0, "logit_bias": {str(newline): 100}}
    unbounded = post(tiny_server, "/v1/completions", body).json()
    bounded = post(tiny_server, "/v1/completions", {**body, "t_max_predict_ms": 1}).json()
    assert unbounded["usage"]["completion_tokens"] == 60
    assert bounded["usage"]["completion_tokens"] < 60 and bounded["choices"][0]["finish_reason"] == "length"
    # past the time, the completion ends only at a newline: with none possible, it runs to max_tokens
    tokenizer = Prompter(tiny_repo, TINY).tokenizer
    no_newline = {str(i): -100 for i in range(tokenizer.get_vocab_size()) if "\n" in tokenizer.decode([i])}
    waiting = post(tiny_server, "/v1/completions", {**body, "logit_bias": no_newline, "t_max_predict_ms": 1}).json()
    assert waiting["usage"]["completion_tokens"] == 60 and "\n" not in waiting["choices"][0]["text"]


def test_n_indent_ends_before_a_dedented_line() -> None:
    stops = StopMatcher([], min_indent=4)
    pieces = ["x = 1", "\n", "    ", "y = 2\n", "  ", "  ", "z\n", "def", " f():\n"]
    sent = "".join(stops.push(p) for p in pieces)
    assert sent == "x = 1\n    y = 2\n    z\n" and stops.stopped
    # a line of whitespace is held back until its first character shows whether it is dedented
    held = StopMatcher([], min_indent=4)
    assert held.push("a\n") == "a\n" and held.push("  ") == "" and held.push("  b") == "    b"


@pytest.mark.parametrize(
    "body, status, says",
    [
        ({"input_prefix": "x", "n_predict": -5}, 400, "n_predict"),
        ({"input_prefix": "x", "model": "no-such-model"}, 404, "not served"),
        ({"input_prefix": "x", "input_extra": [{"filename": "a.py"}]}, 400, "input_extra.0.text"),  # its whole place
        ({"input_prefix": "x", "cache_prompt": "yes"}, 400, "cache_prompt"),
    ],
)
def test_errors_in_llama_cpps_shape(tiny_server: ServerProcess, body: dict, status: int, says: str) -> None:
    response = post(tiny_server, "/infill", body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == status and says in error["message"] and error["type"]
