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

__all__ = ["InfillError", "InfillErrorBody", "error_body", "error_response", "llama_cpp_body", "ollama_body"]


class InfillErrorBody(BaseModel):
    code: int
    message: str
    type: str


class InfillError(BaseModel):
    """llama.cpp's error answer: its code is the HTTP status."""

    error: InfillErrorBody


def ollama_body(_status: int, error: ErrorBody) -> dict[str, Any]:
    return OllamaError(error=error.message).model_dump()


def llama_cpp_body(status: int, error: ErrorBody) -> dict[str, Any]:
    return InfillError(error=InfillErrorBody(code=status, message=error.message, type=error.type)).model_dump()


def _openai_body(_status: int, error: ErrorBody) -> dict[str, Any]:
    return ErrorResponse(error=error).model_dump()


# path prefix -> the API's shape; the first that matches (OpenAI's, the Copilot plugin's and ours: the rest)
_SHAPES: tuple[tuple[str, Callable[[int, ErrorBody], dict[str, Any]]], ...] = (
    ("/api/", ollama_body),
    ("/infill", llama_cpp_body),
)


def error_body(path: str, status: int, error: ErrorBody) -> dict[str, Any]:
    shape = next((s for prefix, s in _SHAPES if path.startswith(prefix)), _openai_body)
    return shape(status, error)


def error_response(path: str, status: int, error: ErrorBody, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(path, status, error), status_code=status, headers=headers)
