"""Editor and tool integrations, each replaying its client's own request (route, body, headers) against a
real server process that asks for an API key, and reading the answer the way that client reads it.

Where the shapes come from (README "Point your editor at it" has the settings):
- Tabby's `openai/completion` backend (TabbyML/tabby, crates/http-api-bindings/src/completion/openai.rs
  and mod.rs): POST {api_endpoint}/completions with exactly model, prompt, suffix, max_tokens,
  temperature, stream: true, presence_penalty; `Authorization: Bearer {api_key}`; the prompt template is
  fixed to "{prefix}<|FIM|>{suffix}" and split there into prompt and suffix (null without the marker,
  "" at the end of a file). Its event source (reqwest-eventsource) sends `Accept: text/event-stream`, takes
  only a 200 of type text/event-stream, and Tabby stops reading at the first chunk with a finish_reason.
  Defaults: max_decoding_tokens 64, presence_penalty 0.5; temperature 0.1 is its code-completion default.
- copilot.vim runs GitHub's Copilot language server, the agent the VS Code extension runs: its
  completions are POST {proxy}/v1/engines/{engine}/completions, no `model`, `stream: true`, and the body
  and headers below (a recorded request of Copilot 1.254.0, and the agent's fetchWithParameters: the
  cycling/panel request adds n > 1, a temperature by n, and logprobs 2; python stops).
- The `openai` package's legacy completions, streamed, with its api_key.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from server.engine.prompts import Prompter
from server.models.catalog import PRESETS
from server.models.export import export_checkpoint
from tests.api_helpers import NO_EOS, sse_payloads
from tests.conftest import TINY, ServerProcess
from tests.test_metrics import completion_lines
from tests.tiny_model import build_tiny

KEY = "sk-slip-editor-0123456789"
FIM_MODEL = "starcoder2-3b"  # a tiny StarCoder2 with the preset's FIM sentinels
FIM = PRESETS[FIM_MODEL].fim
CONTEXT = 1024  # room for the Copilot agent's max_tokens of 500
BEFORE, AFTER = "def add(a, b):\n    ", "\n\nprint(add(1, 2))\n"


@pytest.fixture(scope="module")
def repository(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model with FIM sentinels first (what a request without `model` gets), the tiny CodeGen (none) second."""
    root = tmp_path_factory.mktemp("integrations")
    checkpoint = build_tiny("starcoder2", root / "hf", n_positions=CONTEXT, special=(FIM.prefix, FIM.suffix, FIM.middle))
    export_checkpoint(checkpoint, root / "repo", FIM_MODEL, preset=PRESETS[FIM_MODEL], log=lambda _line: None)
    shutil.copytree(tiny_repo / TINY, root / "repo" / TINY)
    return root / "repo"


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[ServerProcess]:
    with ServerProcess(repository, [FIM_MODEL, TINY], env={"SLIPSTREAM_API_KEYS": KEY}) as process:
        yield process


def completion_events(payloads: list[str]) -> list[dict]:
    assert payloads[-1] == "[DONE]" and "[DONE]" not in payloads[:-1]
    return [json.loads(p) for p in payloads[:-1]]


def fim_prompt_tokens(repository: Path, before: str, after: str) -> int:
    """prefix sentinel, code before, suffix sentinel, code after, middle sentinel"""
    prompter = Prompter(repository, FIM_MODEL)
    return len(prompter.encode(before)) + len(prompter.encode(after)) + 3


def logged_request(server: ServerProcess, count: int) -> dict:
    """The access-log line of the server's `count`-th generation request (written when its response ended)."""
    return completion_lines(server, count)[count - 1]


# --- Tabby: [model.completion.http] kind = "openai/completion" --------------------------------------------


def tabby_request(model_name: str, prefix: str, suffix: str | None) -> dict:
    """Tabby's CompletionRequest as serde serialises it (an absent suffix is null, not left out)."""
    return {
        "model": model_name,
        "prompt": prefix,
        "suffix": suffix,
        "max_tokens": 64,
        "temperature": 0.1,
        "stream": True,
        "presence_penalty": 0.5,
    }


def tabby_read(response: httpx.Response) -> tuple[str, str, list[str]]:
    """What Tabby takes from the stream: the text of choices[0] up to the first chunk with a finish_reason,
    where it stops reading; also that reason and the events it left unread."""
    assert response.status_code == 200, response.text  # anything else is an error to reqwest-eventsource
    assert response.headers["content-type"].split(";")[0].strip() == "text/event-stream"
    payloads = sse_payloads(response.text)
    text = ""
    for number, payload in enumerate(payloads):
        chunk = json.loads(payload)  # Tabby panics on a payload that is not a chunk: [DONE] must never be read
        if chunk["choices"]:
            text += chunk["choices"][0]["text"]
            if chunk["choices"][0]["finish_reason"] is not None:
                return text, chunk["choices"][0]["finish_reason"], payloads[number + 1 :]
    raise AssertionError(f"no chunk with a finish_reason: {payloads[-3:]}")


def test_tabby_fills_in_the_middle_with_its_key(server: ServerProcess, repository: Path) -> None:
    headers = {"Authorization": f"Bearer {KEY}", "Accept": "text/event-stream"}
    url = f"{server.url}/v1/completions"  # api_endpoint = "{server}/v1", Tabby adds /completions
    before = len([line for line in server.access_log() if "completions" in line.get("route", "")])
    response = httpx.post(url, json=tabby_request(FIM_MODEL, BEFORE, AFTER), headers=headers, timeout=60)
    text, reason, unread = tabby_read(response)
    assert "x-slipstream-ignored" not in response.headers  # the suffix was used
    assert reason in ("stop", "length") and unread == ["[DONE]"]  # nothing Tabby stops before is lost
    logged = logged_request(server, before + 1)
    assert logged["model"] == FIM_MODEL and logged["stream"] is True
    assert logged["prompt_tokens"] == fim_prompt_tokens(repository, BEFORE, AFTER)  # prefix, suffix and sentinels
    assert logged["completion_tokens"] <= 64 and (reason != "length" or logged["completion_tokens"] == 64)
    assert text or reason == "stop"  # sampled (temperature 0.1, no seed): only an end of sequence leaves it empty
    # without the key (api_key unset in config.toml) Tabby gets the 401 it logs as an event-source error
    refused = httpx.post(url, json=tabby_request(FIM_MODEL, BEFORE, AFTER), headers={"Accept": "text/event-stream"}, timeout=60)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    "suffix, ignored",
    [
        pytest.param(AFTER, "suffix", id="code-after-the-cursor"),
        pytest.param("", None, id="end-of-file"),  # "prefix<|FIM|>" splits into an empty suffix
        pytest.param(None, None, id="no-fim-marker"),  # a prompt without the marker: suffix null
    ],
)
def test_tabby_on_a_model_without_fim_sentinels(server: ServerProcess, suffix: str | None, ignored: str | None) -> None:
    response = httpx.post(
        f"{server.url}/v1/completions",
        json=tabby_request(TINY, BEFORE, suffix),
        headers={"Authorization": f"Bearer {KEY}", "Accept": "text/event-stream"},
        timeout=60,
    )
    _text, reason, unread = tabby_read(response)
    assert response.headers.get("x-slipstream-ignored") == ignored
    assert reason in ("stop", "length") and unread == ["[DONE]"]


# --- copilot.vim: GitHub's Copilot language server with the proxy URL overridden ---------------------------


def copilot_headers() -> dict[str, str]:
    """The agent's headers on a completion request (its token as Bearer: the key, from /copilot_internal/v2/token)."""
    return {
        "Authorization": f"Bearer {KEY}",
        "X-Request-Id": str(uuid.uuid4()),
        "Openai-Organization": "github-copilot",
        "VScode-SessionId": f"{uuid.uuid4()}{int(time.time() * 1000)}",
        "VScode-MachineId": uuid.uuid4().hex * 2,
        "X-GitHub-Api-Version": "2024-12-15",
        "Editor-Version": "Neovim/0.10.2",
        "Editor-Plugin-Version": "copilot.vim/1.41.0",
        "Copilot-Language-Server-Version": "1.254.0",
        "Annotations-Enabled": "true",
        "Code-Quote-Enabled": "true",
        "Openai-Intent": "copilot-ghost",
        "Content-Type": "application/json",
        "User-Agent": "GithubCopilot/1.254.0",
        "Accept": "*/*",
        "Accept-Encoding": "gzip,deflate,br",
    }


PATH_HEADER = "# Path: app/calc.py\n"


def copilot_ghost_text_body() -> dict:
    """The inline suggestion: one greedy sample, stopped at the end of the line."""
    prompt = PATH_HEADER + BEFORE
    return {
        "prompt": prompt,
        "suffix": AFTER,
        "max_tokens": 500,
        "temperature": 0,
        "top_p": 1,
        "n": 1,
        "stop": ["\n"],
        "nwo": "octo-org/calc",
        "stream": True,
        "extra": {"language": "python", "next_indent": 0, "trim_by_indentation": True, "prompt_tokens": 14, "suffix_tokens": 9},
    }


def copilot_cycling_body() -> dict:
    """:Copilot panel and cycling (<M-]>): several samples, a temperature for their number, logprobs 2, the
    python stop list, and the indentation the block must not leave."""
    return {
        **copilot_ghost_text_body(),
        "n": 3,
        "temperature": 0.2,
        "logprobs": 2,
        "stop": ["\ndef ", "\nclass ", "\nif ", "\n\n#"],
        "extra": {
            "language": "python",
            "next_indent": 4,
            "trim_by_indentation": True,
            "prompt_tokens": 14,
            "suffix_tokens": 9,
            "force_indent": -1,
        },
    }


def copilot_stream(server: ServerProcess, body: dict, engine: str = "copilot-codex") -> tuple[httpx.Response, dict[int, dict]]:
    """The choices as the agent assembles them from the stream: text, finish_reason and logprobs per index."""
    response = httpx.post(f"{server.url}/v1/engines/{engine}/completions", content=json.dumps(body), headers=copilot_headers(), timeout=120)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    choices: dict[int, dict] = {}
    for chunk in completion_events(sse_payloads(response.text)):
        for part in chunk["choices"]:
            choice = choices.setdefault(
                part["index"],
                {"text": "", "finish_reason": None, "tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []},
            )
            assert choice["finish_reason"] is None, "a chunk after the choice's finish_reason"
            choice["text"] += part["text"]
            choice["finish_reason"] = part["finish_reason"]
            for key, values in (part["logprobs"] or {}).items():
                choice[key] += values
    return response, choices


def test_copilot_ghost_text(server: ServerProcess, repository: Path) -> None:
    response, choices = copilot_stream(server, copilot_ghost_text_body())
    assert "x-slipstream-ignored" not in response.headers  # no `model`: the first one, which fills in the middle
    [choice] = choices.values()
    assert choice["finish_reason"] in ("stop", "length") and "\n" not in choice["text"]
    assert choice["tokens"] == []  # no logprobs asked for, none sent
    # greedy: the stream holds what the same request answers in one piece
    plain = httpx.post(
        f"{server.url}/v1/engines/codegen/completions",
        json={**copilot_ghost_text_body(), "stream": False},
        headers=copilot_headers(),
        timeout=120,
    )
    assert plain.status_code == 200 and plain.json()["model"] == FIM_MODEL
    assert plain.json()["choices"][0]["text"] == choice["text"]
    assert plain.json()["usage"]["prompt_tokens"] == fim_prompt_tokens(repository, PATH_HEADER + BEFORE, AFTER)


def test_copilot_cycling_with_logprobs(server: ServerProcess) -> None:
    _response, choices = copilot_stream(server, copilot_cycling_body())
    assert sorted(choices) == [0, 1, 2]
    stops = copilot_cycling_body()["stop"]
    assert any(choice["tokens"] for choice in choices.values())
    for choice in choices.values():
        assert choice["finish_reason"] in ("stop", "length")
        assert not any(stop in choice["text"] for stop in stops)
        # the agent reads the four arrays in step: one entry per token, up to logprobs + 1 alternatives each
        count = len(choice["tokens"])
        assert len(choice["token_logprobs"]) == len(choice["top_logprobs"]) == len(choice["text_offset"]) == count
        assert all(1 <= len(top) <= 3 and all(v <= 0 for v in top.values()) for top in choice["top_logprobs"])
        offsets = [0]
        for token in choice["tokens"][:-1]:
            offsets.append(offsets[-1] + len(token))
        assert choice["text_offset"] == offsets  # counted on across chunks, not restarted in each


def test_copilot_token_then_completion_on_any_engine(server: ServerProcess) -> None:
    """The agent asks for a token with the GitHub form of the key, then completes on the engine it was told
    (debug.overrideEngine) or its default; the engine is not a model name."""
    token = httpx.get(
        f"{server.url}/copilot_internal/v2/token",
        headers={
            "Authorization": f"token {KEY}",
            "Editor-Version": "Neovim/0.10.2",
            "Editor-Plugin-Version": "copilot.vim/1.41.0",
            "User-Agent": "GithubCopilot/1.254.0",
        },
        timeout=30,
    )
    assert token.status_code == 200 and token.json()["token"] == KEY
    for engine in ("copilot-codex", "gpt-4o-copilot", "codegen"):
        _response, choices = copilot_stream(server, {**copilot_ghost_text_body(), "max_tokens": 4}, engine)
        assert choices[0]["finish_reason"] in ("stop", "length")


def test_copilot_engine_naming_a_served_model_picks_it(server: ServerProcess) -> None:
    """The agent names the model it took from our /models in the path: that model answers; the models
    list it reads offers every served model as a completion model."""
    headers = {"Authorization": f"Bearer {KEY}"}
    listed = httpx.get(f"{server.url}/models", headers=headers, timeout=30).json()["data"]
    assert [m["id"] for m in listed] == [FIM_MODEL, TINY] and all(m["capabilities"]["type"] == "completion" for m in listed)
    for engine, model in ((TINY, TINY), (FIM_MODEL, FIM_MODEL), ("copilot-codex", FIM_MODEL)):
        response = httpx.post(
            f"{server.url}/v1/engines/{engine}/completions", headers=headers, timeout=60, json={"prompt": "def f():", "max_tokens": 2}
        )
        assert response.status_code == 200 and response.json()["model"] == model
        assert response.headers["x-github-request-id"] == response.headers["x-request-id"]


def test_other_files_through_the_copilot_route(server: ServerProcess) -> None:
    """`input_extra` (other files' code) on the Copilot and OpenAI routes alike: laid out before the
    prompt with the model's file tokens, the same prompt on both routes."""
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {
        "prompt": "def area(r):\n    return ",
        "suffix": "\n",
        "max_tokens": 4,
        "temperature": 0,
        "input_extra": [{"filename": "geometry.py", "text": "import math\nPI = math.pi\n"}],
    }
    copilot = httpx.post(f"{server.url}/v1/engines/{FIM_MODEL}/completions", json=body, headers=headers, timeout=60).json()
    openai_route = httpx.post(f"{server.url}/v1/completions", json={**body, "model": FIM_MODEL}, headers=headers, timeout=60).json()
    alone = httpx.post(
        f"{server.url}/v1/completions", json={**body, "model": FIM_MODEL, "input_extra": None}, headers=headers, timeout=60
    ).json()
    assert copilot["choices"][0]["text"] == openai_route["choices"][0]["text"]
    assert copilot["usage"]["prompt_tokens"] == openai_route["usage"]["prompt_tokens"] > alone["usage"]["prompt_tokens"] + 5


# --- the openai package: legacy completions, streamed, with its api_key -----------------------------------


def test_openai_package_streams_n_choices_with_its_key(server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)
    request = {
        "model": TINY,
        "prompt": BEFORE,
        "suffix": AFTER,
        "max_tokens": 6,
        "n": 2,
        "temperature": 0.8,
        "seed": 3,
        "logit_bias": NO_EOS,
    }
    raw = client.completions.with_raw_response.create(**request, stream=True)
    assert raw.headers["x-slipstream-ignored"] == "suffix"  # the tiny CodeGen has no FIM sentinels
    texts: dict[int, str] = {}
    finish: dict[int, str | None] = {}
    for chunk in raw.parse():
        assert chunk.object == "text_completion" and chunk.model == TINY
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            finish[choice.index] = choice.finish_reason
    assert sorted(texts) == [0, 1] and finish == {0: "length", 1: "length"}
    plain = client.completions.create(**request)  # seeded: the same samples in one piece
    assert [c.text for c in sorted(plain.choices, key=lambda c: c.index)] == [texts[0], texts[1]]
    assert plain.usage.completion_tokens == 2 * 6
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY + "x", max_retries=0).completions.create(**request)
