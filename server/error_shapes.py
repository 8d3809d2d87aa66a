"""Each API's error body: one hook per API, chosen by the request's path, so that every failure reaches
a client in the shape its API documents — a bad key (401), a body too large (413), a client gone (499)
and an unexpected error (500) as well as what its routes raise. An Ollama client reads {"error": "..."};
llama.cpp's (llama.vim's /infill) {"error": {"code", "message", "type"}}; everything else OpenAI's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel

from server.ollama_protocol import OllamaError
from server.protocol import ErrorBody, ErrorResponse

__all__ = ["InfillError", "InfillErrorBody", "error_body", "error_response"]


class InfillErrorBody(BaseModel):
    code: int
    message: str
    type: str


class InfillError(BaseModel):
    """llama.cpp's error answer: its code is the HTTP status."""

    error: InfillErrorBody


# `where`: a body's validation error with its whole place in the body (options.temperature,
# messages.0.role), for the shapes that have no `param` to name the field with


def _ollama_body(_status: int, error: ErrorBody, where: str | None = None) -> dict[str, Any]:
    return OllamaError(error=where or error.message).model_dump()


def _llama_cpp_body(status: int, error: ErrorBody, where: str | None = None) -> dict[str, Any]:
    return InfillError(error=InfillErrorBody(code=status, message=where or error.message, type=error.type)).model_dump()


def _openai_body(_status: int, error: ErrorBody, _where: str | None = None) -> dict[str, Any]:
    return ErrorResponse(error=error).model_dump()


# path prefix -> the API's shape; the first that matches (OpenAI's, the Copilot plugin's and ours: the rest)
_SHAPES: tuple[tuple[str, Callable[[int, ErrorBody, str | None], dict[str, Any]]], ...] = (
    ("/api/", _ollama_body),
    ("/infill", _llama_cpp_body),
)


def error_body(path: str, status: int, error: ErrorBody, where: str | None = None) -> dict[str, Any]:
    shape = next((s for prefix, s in _SHAPES if path.startswith(prefix)), _openai_body)
    return shape(status, error, where)


def error_response(
    path: str, status: int, error: ErrorBody, headers: dict[str, str] | None = None, where: str | None = None
) -> JSONResponse:
    return JSONResponse(error_body(path, status, error, where), status_code=status, headers=headers)
