"""Ollama's API, for the plugins that speak it (Continue, Twinny, Cody's local mode, the `ollama` client):
/api/generate (with `suffix` through our fill-in-the-middle), /api/chat, streaming NDJSON; /api/tags,
/api/show, /api/ps, /api/version. Each generation route converts its body into the neutral request
(server/ollama_protocol.py) and makes the one call into serving, with an Ollama shape for the answer.
Errors come back in Ollama's shape, {"error": "..."}, with the status the same failure gets on the
OpenAI routes: the app's error hook picks the shape by the path (server/error_shapes.py)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from server import serving
from server.app_state import app_state
from server.backends.base import SERVING, Backend
from server.body import parse_body
from server.engine import Delta
from server.errors import InvalidRequest, ModelNotFound
from server.models.store import MANIFEST, Manifest, model_dir
from server.ollama_protocol import ChatRequest, GenerateRequest, OllamaError, ShowRequest
from server.openapi import route_doc
from server.protocol import Usage as WireUsage
from server.responses import Collected

router = APIRouter(prefix="/api")
OLLAMA_VERSION = "0.12.0"  # the Ollama release whose API these routes answer as (clients check it for features)
_DONE_REASON = {"stop": "stop", "length": "length"}


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class _NDJSON:
    """Ollama's answer: one JSON object per line while it streams, the last with `done` and the counts
    and durations (nanoseconds: prompt_eval is the time to the first token, eval the rest)."""

    media_type = "application/x-ndjson"

    def __init__(self, model: str) -> None:
        self._model = model
        self._started = time.perf_counter_ns()
        self._first: int | None = None
        self._finish = "stop"

    def _piece(self, text: str) -> dict[str, Any]:
        raise NotImplementedError

    def _line(self, data: dict[str, Any]) -> str:
        return json.dumps(data) + "\n"

    def chunk(self, index: int, delta: Delta) -> str | None:
        if self._first is None:
            self._first = time.perf_counter_ns()
        if delta.finish_reason is not None:
            self._finish = _DONE_REASON.get(delta.finish_reason, "stop")
        if not delta.text:
            return None
        return self._line({"model": self._model, "created_at": _now(), **self._piece(delta.text), "done": False})

    def _done(self, usage: WireUsage, text: str = "") -> dict[str, Any]:
        end = time.perf_counter_ns()
        first = self._first or end
        return {
            "model": self._model,
            "created_at": _now(),
            **self._piece(text),
            "done": True,
            "done_reason": self._finish,
            "total_duration": end - self._started,
            "load_duration": 0,
            "prompt_eval_count": usage.prompt_tokens,
            "prompt_eval_duration": first - self._started,
            "eval_count": usage.completion_tokens,
            "eval_duration": end - first,
        }

    def closing(self, usage: WireUsage, include_usage: bool) -> list[str]:
        return [self._line(self._done(usage))]

    def error_event(self, message: str, kind: str) -> str:
        return self._line({"error": message})

    def response(self, got: Collected) -> dict[str, Any]:
        self._first = None if got.first_token_at is None else int(got.first_token_at * 1e9)
        self._finish = _DONE_REASON.get(got.finish[0] or "stop", "stop")
        return self._done(got.usage, got.texts[0])


class OllamaGenerateShape(_NDJSON):
    def _piece(self, text: str) -> dict[str, Any]:
        return {"response": text}


class OllamaChatShape(_NDJSON):
    def _piece(self, text: str) -> dict[str, Any]:
        return {"message": {"role": "assistant", "content": text}}


def _served(request: Request, name: str) -> tuple[str, Manifest | None]:
    backend: Backend = app_state(request).backend
    if name not in backend.names:
        raise ModelNotFound(f"model '{name}' not found; served here: {', '.join(backend.names)}")
    return name, backend.manifest(name)


def _refuse(unsupported: str | None) -> None:
    if unsupported is not None:
        raise InvalidRequest(f"{unsupported} not supported by this server (its models take text only)", unsupported)


async def _parse(request: Request, model: type[BaseModel]) -> Any:
    return await parse_body(request, model, app_state(request).settings.max_body_bytes)


@router.post("/generate", openapi_extra=route_doc(GenerateRequest, error=OllamaError, stream="application/x-ndjson"))
async def generate(request: Request) -> Response:
    state = app_state(request)
    body: GenerateRequest = await _parse(request, GenerateRequest)
    name, manifest = _served(request, body.served_name())
    _refuse(body.unsupported())
    if not body.prompt and not body.suffix:  # Ollama's way to load a model ahead of use
        await state.backend.acquire(name)
        return JSONResponse({"model": body.model, "created_at": _now(), "response": "", "done": True, "done_reason": "load"})
    chats = manifest is not None and bool(manifest.chat_template)
    shape = lambda _m: OllamaGenerateShape(body.model)  # noqa: E731 - the name as the client gave it
    return await serving.generate(state, body.generation(state.settings, name, chats), request, shape)


@router.post("/chat", openapi_extra=route_doc(ChatRequest, error=OllamaError, stream="application/x-ndjson"))
async def chat(request: Request) -> Response:
    state = app_state(request)
    body: ChatRequest = await _parse(request, ChatRequest)
    name, _manifest = _served(request, body.served_name())
    _refuse(body.unsupported())
    shape = lambda _m: OllamaChatShape(body.model)  # noqa: E731
    return await serving.generate(state, body.generation(state.settings, name), request, shape)


def _details(manifest: Manifest | None) -> dict[str, Any]:
    if manifest is None:
        return {}
    return {
        "parent_model": "",
        "format": "onnx",
        "family": manifest.architecture,
        "families": [manifest.architecture],
        "parameter_size": f"{manifest.parameters / 1e6:.0f}M" if manifest.parameters < 1e9 else f"{manifest.parameters / 1e9:.1f}B",
        "quantization_level": manifest.precision.upper(),
    }


def _entry(request: Request, name: str) -> dict[str, Any]:
    manifest = app_state(request).backend.manifest(name)
    folder = model_dir(app_state(request).settings.model_repository, name)
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    written = (folder / MANIFEST).stat().st_mtime if (folder / MANIFEST).is_file() else 0.0
    return {
        "name": f"{name}:latest",
        "model": f"{name}:latest",
        "modified_at": datetime.fromtimestamp(written, UTC).isoformat().replace("+00:00", "Z"),
        "size": sum(p.stat().st_size for p in files),
        "digest": manifest.content_sha256 if manifest else "",
        "details": _details(manifest),
    }


@router.get("/tags")
async def tags(request: Request) -> dict[str, Any]:
    return {"models": [_entry(request, name) for name in app_state(request).backend.names]}


@router.get("/ps")
async def running(request: Request) -> dict[str, Any]:
    """The models in memory (every ready one stays there while the server runs)."""
    backend: Backend = app_state(request).backend
    return {
        "models": [
            {**_entry(request, name), "expires_at": "9999-12-31T23:59:59Z", "size_vram": 0}
            for name in backend.names
            if backend.status(name) in SERVING
        ]
    }


def _template(manifest: Manifest) -> str:
    """What Ollama's /api/show calls the template: Continue reads `.Suffix` in it to send a suffix."""
    if manifest.fim is not None:
        fim = manifest.fim
        return (
            f"{{{{- if .Suffix }}}}{fim.prefix}{{{{ .Prompt }}}}{fim.suffix}{{{{ .Suffix }}}}{fim.middle}"
            "{{- else }}{{ .Prompt }}{{- end }}"
        )
    return manifest.chat_template or "{{ .Prompt }}"


@router.post("/show", openapi_extra=route_doc(ShowRequest, error=OllamaError))
async def show(request: Request) -> Response:
    body: ShowRequest = await _parse(request, ShowRequest)
    if (served := body.served_name()) is None:
        raise InvalidRequest("model is required", "model")
    name, manifest = _served(request, served)
    assert manifest is not None
    capabilities = ["completion", *(["insert"] if manifest.fim else [])]
    info = {
        "general.architecture": manifest.architecture,
        "general.parameter_count": manifest.parameters,
        f"{manifest.architecture}.context_length": manifest.context_length,
    }
    return JSONResponse(
        {
            "license": "",
            "modelfile": f"FROM {name}\n",
            "parameters": "",
            "template": _template(manifest),
            "details": _details(manifest),
            "model_info": info,
            "capabilities": capabilities,
            "modified_at": _entry(request, name)["modified_at"],
        }
    )


@router.get("/version")
async def version() -> dict[str, str]:
    return {"version": OLLAMA_VERSION}
