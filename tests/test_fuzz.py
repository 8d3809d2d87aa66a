"""Schemathesis over the server's OpenAPI document, against a real server on the tiny models: every
operation, with the examples, boundary (coverage) and fuzzing phases. No response may be a server error,
in its status or inside a stream, and every response must be one the document describes. Then the
bodies that once got a 500, each kept as a regression case.

The operations are collected from the same document the live server serves (the first test checks
that): schemathesis' lazy loader (`schemathesis.pytest.from_fixture`) reads a pytest node attribute that
pytest 9 removed, so the schema is built in process and the cases are sent to the server process."""

from __future__ import annotations

import copy
import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from server.app import create_app
from server.settings import Settings
from tests.api_helpers import assert_error, post
from tests.conftest import TINY, TINY_LLAMA, ServerProcess
from tests.tiny_model import VOCAB_SIZE

MAX_EXAMPLES = 60  # per operation and generation mode; about 30 s for the whole file on two cores


def _config(mode: str) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": 8,  # with deterministic generation and derandomize below: the same cases on every run
            "generation": {"deterministic": True, "mode": mode},
            "request-timeout": 60,
            "max-stream-events": 100_000,  # a whole stream is read: its end ([DONE]) is checked too
        }
    )


DOCUMENT = create_app(Settings(model=[TINY_LLAMA, TINY]), environ={}).openapi()
schema = schemathesis.openapi.from_dict(DOCUMENT, config=_config("all"))


def _within_limits(document: dict) -> dict:
    """The document with the tiny models' own limits written into its request bodies (their names and
    vocabulary, a short max_tokens, a small n): its cases are then mostly served rather than refused, and
    reach the engine with every sampling option in every combination."""
    document = copy.deepcopy(document)
    bodies = document["components"]["schemas"]
    text, token = {"type": "string", "minLength": 1}, {"type": "integer", "minimum": 0, "maximum": VOCAB_SIZE - 1}

    def up_to(top: int, bottom: int = 1) -> dict:
        return {"anyOf": [{"type": "integer", "minimum": bottom, "maximum": top}, {"type": "null"}]}

    def listed(item: dict, most: int) -> dict:
        return {"type": "array", "items": item, "minItems": 1, "maxItems": most}

    shared = {
        "model": {"anyOf": [{"enum": [TINY_LLAMA, TINY]}, {"type": "null"}]},
        "n": {"type": "integer", "minimum": 1, "maximum": 3},
        "stop": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}, {"type": "null"}]},
        "logit_bias": {
            "anyOf": [
                {
                    "type": "object",
                    "propertyNames": {"pattern": "^[0-9]{1,3}$"},
                    "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
                },
                {"type": "null"},
            ]
        },
    }
    bodies["CompletionRequest"]["properties"].update(
        shared,
        best_of=up_to(3),
        max_tokens=up_to(24, 0),
        prompt={"anyOf": [text, listed(text, 2), listed(token, 64), listed(listed(token, 64), 2)]},
    )
    bodies["ChatCompletionRequest"]["properties"].update(
        shared, max_tokens=up_to(24), max_completion_tokens=up_to(24), messages=listed({"$ref": "#/components/schemas/ChatMessage"}, 4)
    )
    # the plugins' routes (Ollama's, llama.cpp's /infill): the same models and short generations
    named = {"enum": [TINY_LLAMA, TINY, f"{TINY}:latest"]}
    for ollama in ("GenerateRequest", "ChatRequest"):
        bodies[ollama]["properties"].update(model=named)
    bodies["ChatRequest"]["properties"].update(messages=listed({"$ref": "#/components/schemas/ChatTurn"}, 4))
    bodies["Options"]["properties"].update(num_predict=up_to(24, 0))
    bodies["InfillRequest"]["properties"].update(
        model=shared["model"],
        n_predict={"type": "integer", "minimum": -1, "maximum": 24},
        input_extra=listed({"$ref": "#/components/schemas/InputExtra"}, 3),
    )
    return document


generating = schemathesis.openapi.from_dict(_within_limits(DOCUMENT), config=_config("positive")).include(method="POST")

# Not a server error, with no exception: 503 (a model loading, the server shutting down), 429 (max_queue requests
# queued) and 408 (300 s of generation) cannot happen to one request at a time on a ready server, so any
# 5xx here is a bug. Not checked: positive_data_acceptance (the limits that depend on the model and the
# settings, such as its context and vocabulary, max_n or the stop-list size, are not in the schema) and
# negative_data_rejection (pydantic's lax mode takes "16" or 16.0 for 16, by design of the models).
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance, response_headers_conformance]


@pytest.fixture(scope="module")
def url(duo_server: ServerProcess) -> str:
    """The tiny Llama (a chat template: chat is generated, not refused) first, the tiny CodeGen second."""
    return duo_server.url


def test_the_fuzzed_document_is_the_one_served(url: str) -> None:
    served = httpx.get(f"{url}/openapi.json", timeout=30)
    assert served.status_code == 200
    assert served.json() == json.loads(json.dumps(DOCUMENT))
    operations = {(method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item}
    assert {
        ("POST", "/v1/completions"),
        ("POST", "/v1/engines/{engine}/completions"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
        ("GET", "/copilot_internal/v2/token"),
        ("GET", "/health"),
        ("GET", "/ready"),
    } <= operations


FUZZING = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


@schema.parametrize()
@FUZZING
def test_no_server_error(case: schemathesis.Case, url: str) -> None:
    """Any request the document allows, and many it does not."""
    _call_and_check(case, url)


@generating.parametrize()
@FUZZING
def test_no_server_error_while_generating(case: schemathesis.Case, url: str) -> None:
    """Requests within the tiny models' limits: the engine's paths, with the options in every combination."""
    _call_and_check(case, url)


def _call_and_check(case: schemathesis.Case, url: str) -> None:
    response = case.call_and_validate(base_url=url, checks=CHECKS)
    kind = response.headers.get("content-type", [""])[0]
    if response.status_code != 200:
        return
    # a failure after the first event can no longer change the status: it would hide in the stream
    if kind.startswith("text/event-stream"):
        events = response.content.decode().split("\n\n")
        if case.path == "/infill":  # llama.cpp's: no [DONE], the last event says stop (unless response_fields leave it out)
            assert events[-1] == "" and json.loads(events[-2][len("data: ") :]).get("stop", True) is True, events[-3:]
            events = events[:-1]
        else:
            assert events[-2:] == ["data: [DONE]", ""], events[-3:]
            events = events[:-2]
        for event in events:
            assert event.startswith("data: ") and "error" not in json.loads(event[len("data: ") :]), event
    elif kind.startswith("application/x-ndjson"):  # Ollama's: one object per line, the last one done
        lines = [json.loads(line) for line in response.content.decode().splitlines() if line]
        assert lines[-1]["done"] is True and not any("error" in line for line in lines), lines[-3:]


# --- what the fuzzing found: each got a 500 before its fix ------------------------------------------------

SURROGATE = "\\ud800"  # a lone UTF-16 surrogate, as a JSON escape: json.loads takes it, no tokenizer does


@pytest.mark.parametrize(
    "path, body, param",
    [
        pytest.param("/v1/completions", {"prompt": "x", "seed": -1}, "seed", id="negative-seed"),
        pytest.param("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "seed": -5}, "seed", id="chat-negative-seed"),
        pytest.param("/v1/completions", f'{{"prompt": "{SURROGATE}"}}', "prompt", id="surrogate-prompt"),
        pytest.param("/v1/completions", f'{{"prompt": ["ok", "x{SURROGATE}"]}}', "prompt", id="surrogate-in-prompt-list"),
        pytest.param("/v1/completions", f'{{"prompt": "x", "suffix": "{SURROGATE}"}}', "suffix", id="surrogate-suffix"),
        pytest.param("/v1/completions", f'{{"prompt": "x", "stop": ["{SURROGATE}"]}}', "stop", id="surrogate-stop"),
        pytest.param(
            "/v1/engines/codegen/completions",
            f'{{"prompt": "x", "extra": {{"language": "{SURROGATE}"}}}}',
            "extra",
            id="surrogate-in-an-ignored-field",
        ),
        pytest.param("/v1/completions", f'{{"prompt": "x", "{SURROGATE}": 1}}', SURROGATE, id="surrogate-in-a-key"),
        pytest.param(
            "/v1/chat/completions",
            f'{{"messages": [{{"role": "user", "content": "{SURROGATE}"}}]}}',
            "messages",
            id="surrogate-chat-content",
        ),
        pytest.param("/v1/completions", '{"prompt": "x", "max_tokens": ' + "9" * 5000 + "}", None, id="5000-digit-integer"),
        pytest.param("/v1/completions", '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}", None, id="deep-nesting"),
    ],
)
def test_what_the_fuzzing_found_is_a_400(url: str, path: str, body: dict | str, param: str | None) -> None:
    assert_error(post(url, body, path), 400, param)


def test_nesting_around_the_parsers_limit_is_never_a_server_error(url: str) -> None:
    """Just under json.loads' recursion limit, encoding the body again (the text check) once passed it."""
    statuses = set()
    with httpx.Client(base_url=url, timeout=30) as http:
        for depth in range(850, 1050):  # every depth: the band that failed was two deep
            body = '{"prompt": "x", "max_tokens": 0, "extra": ' + "[" * depth + "]" * depth + "}"
            statuses.add(http.post("/v1/completions", content=body, headers={"Content-Type": "application/json"}).status_code)
    assert statuses == {200, 400}  # ignored while it parses, refused past the limit: both seen, nothing else
