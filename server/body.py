"""A request body read and validated: refused past max_body_bytes while it streams in, parsed as JSON
whatever its Content-Type, every failure a 400 (or 413) that names the field, never a 500."""

from __future__ import annotations

import json
from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from server.errors import InvalidRequest, PayloadTooLarge

Body = TypeVar("Body", bound=BaseModel)


async def parse_body(request: Request, model: type[Body], limit: int) -> Body:
    """JSON whatever the Content-Type says: curl's default form type with a JSON body is still JSON."""
    raw = await _read_body(request, limit)
    if not raw.strip():
        raise InvalidRequest("the request body is empty; send a JSON object")
    data = _load_object(raw)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        # the top-level field: deeper parts of the location are union branches (prompt.str) or keys
        # (logit_bias.abc.[key]); a cross-field rule names its parameter on the error it raises
        cause = first.get("ctx", {}).get("error")
        param = getattr(cause, "param", None) or (str(first["loc"][0]) if first["loc"] else None)
        message = str(cause) if cause is not None else first["msg"]
        raise InvalidRequest(f"{param or 'body'}: {message}", param) from exc


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it is known to pass `limit` bytes (by its Content-Length, or while it
    streams in): a huge body is never held in memory whole."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"the request body is {int(declared)} bytes, above this server's limit of {limit} (max_body_bytes)", code="body_too_large"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body passes this server's limit of {limit} bytes (max_body_bytes)", code="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _load_object(raw: bytes) -> dict:
    """The body as a JSON object whose strings are all text; any other body is the client's error (a 400),
    never a server error."""
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise InvalidRequest(f"the request body must be a JSON object, not {type(data).__name__}")
        for key, value in data.items():
            _check_text(key, value)
    except RecursionError as exc:  # in json.loads, or in the text check of a body just under its limit
        raise InvalidRequest("the request body nests deeper than this server parses") from exc
    except ValueError as exc:  # not JSON, not UTF-8, or an integer of more than 4300 digits (Python's limit)
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from exc
    return data


def _check_text(key: str, value: object) -> None:
    """JSON can escape a lone UTF-16 surrogate ("\\ud800"): json.loads keeps it in a str, which no tokenizer
    (nor UTF-8) accepts. Encoding the field again finds one."""
    try:
        json.dumps([key, value], ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        param = key.encode("utf-8", "backslashreplace").decode()  # the error names the field, and must encode too
        raise InvalidRequest(f"{param}: a lone UTF-16 surrogate escape (\\ud800-\\udfff) is not text", param) from None


def located(exc: ValidationError) -> str:
    """The first error with its whole place in the body (options.temperature, messages.0.role), for the
    APIs whose errors carry no separate param (Ollama's, llama.cpp's)."""
    first = exc.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc']) or 'body'}: {first['msg']}"


__all__ = ["located", "parse_body"]
