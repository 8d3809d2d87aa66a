"""FastAPI app: the OpenAI Completions, Copilot and FauxPilot routes, thin over server.serving."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, Awaitable, Mapping, TypeVar

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from server import auth, serving
from server.backends.base import Backend
from server.backends.embedded import EmbeddedBackend
from server.drain import Drain
from server.errors import APIError, InvalidRequest, PayloadTooLarge, handle_api_error
from server.metrics import CONTENT_TYPE, Metrics, MetricsMiddleware
from server.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorBody,
    ErrorResponse,
    ModelCard,
    ModelList,
)
from server.settings import Settings

log = logging.getLogger("slipstream.app")
Body = TypeVar("Body", CompletionRequest, ChatCompletionRequest)
_COPILOT_TOKEN_TTL_S = 1800

# What a generation route answers besides 200, each with an OpenAI error object (server/errors.py, auth.py)
_ERROR_STATUSES = {
    "400": "Invalid request: the error's `param` names the field",
    "401": "No valid API key (only when keys are configured)",
    "404": "Unknown model",
    "408": "Past request_timeout_s",
    "413": "Body past max_body_bytes",
    "429": "Too many requests waiting for the model (Retry-After)",
    "503": "The model is not loaded or failed, or the server is shutting down (Retry-After)",
}


def _doc(request: type[BaseModel], response: type[BaseModel]) -> dict:
    """OpenAPI for a route that parses its own body (see _parse_body), with its error responses, so that
    a client (or a schema fuzzer) knows every status it can get."""
    ref = "#/components/schemas/{}".format
    error = {"application/json": {"schema": {"$ref": ref(ErrorResponse.__name__)}}}
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": ref(request.__name__)}}}},
        "responses": {
            "200": {"content": {"application/json": {"schema": {"$ref": ref(response.__name__)}}, "text/event-stream": {}}},
            **{status: {"description": why, "content": error} for status, why in _ERROR_STATUSES.items()},
        },
    }


_COMPLETION_DOC = _doc(CompletionRequest, CompletionResponse)
_CHAT_DOC = _doc(ChatCompletionRequest, ChatCompletionResponse)


def create_app(settings: Settings, environ: Mapping[str, str] = os.environ) -> FastAPI:
    keys = auth.load_keys(environ)  # AuthConfigError before anything loads: a lock that does not lock is no lock
    backend = _backend(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(backend.load())
        yield
        loading.cancel()
        backend.close()

    app = FastAPI(title="slipstream", version="0.1.0", lifespan=lifespan)
    app.state.backend = backend
    drain = app.state.drain = Drain(settings.shutdown_grace_s)  # begun by the server on SIGTERM (cli.py)
    app.add_exception_handler(APIError, handle_api_error)
    app.add_exception_handler(ClientGone, _handle_client_gone)
    app.add_exception_handler(ClientDisconnect, _handle_body_cut)
    app.add_exception_handler(Exception, _handle_unexpected)
    _document_schemas(app)
    if keys:
        app.add_middleware(auth.APIKeyMiddleware, keys=keys)
        log.info("API keys required (%d configured)", len(keys))
    if settings.cors_origins:  # after the key check: outside it, so that preflights are answered first
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["*"])
    metrics = Metrics(backend)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: refused requests are counted too

    async def completion(request: Request) -> JSONResponse | StreamingResponse:
        body = await _parse_body(request, CompletionRequest, settings.max_body_bytes)
        job = await serving.prepare(backend, settings, body)
        _track(request, job, body.stream, body.prompt if settings.log_prompts else None)
        if body.stream:
            return await _sse(serving.stream(backend, job, _include_usage(body)), job)
        return _json(await _while_connected(request, serving.complete(backend, job)), job)

    def _track(request: Request, job: serving.Job, stream: bool | None, prompt: object) -> None:
        job.metrics, job.drain = metrics, drain
        job.access.update(model=job.model, stream=bool(stream), n=job.params.n)
        if prompt is not None:
            job.access["prompt"] = prompt
        request.state.access = job.access  # the access-log line reads it when the response has ended

    @app.post("/v1/completions", openapi_extra=_COMPLETION_DOC, response_model=None)
    async def completions(request: Request) -> JSONResponse | StreamingResponse:
        return await completion(request)

    @app.post("/v1/engines/{engine}/completions", openapi_extra=_COMPLETION_DOC, response_model=None)
    async def engine_completions(engine: str, request: Request) -> JSONResponse | StreamingResponse:
        """The Copilot plugin's route; the engine in the path (`codegen`, `copilot-codex`) is not a model name."""
        return await completion(request)

    @app.post("/v1/chat/completions", openapi_extra=_CHAT_DOC, response_model=None)
    async def chat_completions(request: Request) -> JSONResponse | StreamingResponse:
        """Chat, through the model's own chat template; /v1/models says which models chat."""
        body = await _parse_body(request, ChatCompletionRequest, settings.max_body_bytes)
        job = await serving.prepare_chat(backend, settings, body)
        _track(request, job, body.stream, [m.text() for m in body.messages] if settings.log_prompts else None)
        if body.stream:
            return await _sse(serving.chat_stream(backend, job, _include_usage(body)), job)
        return _json(await _while_connected(request, serving.chat_complete(backend, job)), job)

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        cards = []
        for name in backend.names:
            manifest = backend.manifest(name)
            cards.append(
                ModelCard(
                    id=name,
                    architecture=manifest.architecture if manifest else "unknown",
                    parameters=manifest.parameters if manifest else 0,
                    precision=manifest.precision if manifest else "unknown",
                    context_length=manifest.context_length if manifest else 0,
                    chat=bool(manifest and manifest.chat_template),
                    ready=backend.status(name) in ("ready", "standby"),
                    status=backend.status(name),  # type: ignore[arg-type]
                )
            )
        return ModelList(data=cards)

    @app.get("/copilot_internal/v2/token")
    async def copilot_token(request: Request) -> dict[str, object]:
        """The token the Copilot plugin asks for before completing: with API keys set, only a request with a
        valid key gets here, and its key is the token (the plugin then sends it as Bearer)."""
        now = int(time.time())
        token = auth.presented_key(request.headers) if keys else "slipstream-open"
        return {"token": token, "expires_at": now + _COPILOT_TOKEN_TTL_S, "refresh_in": _COPILOT_TOKEN_TTL_S - 300}

    @app.get("/metrics", include_in_schema=False)
    async def metrics_text() -> Response:
        """Prometheus exposition (behind the API keys when they are set: scrapers send a bearer token)."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness: the process answers. Readiness is /ready."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        status = {name: backend.status(name) for name in backend.names}
        return JSONResponse({"ready": backend.ready, "models": status}, status_code=200 if backend.ready else 503)

    return app


def _backend(settings: Settings) -> Backend:
    if settings.backend == "triton":
        from server.backends.triton import TritonBackend  # tritonclient only when asked for

        return TritonBackend(settings)
    return EmbeddedBackend(settings)


def _include_usage(body: CompletionRequest | ChatCompletionRequest) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


def _ignored_header(job: serving.Job) -> dict[str, str]:
    return {"X-Slipstream-Ignored": ",".join(job.ignored)} if job.ignored else {}


async def _sse(events: AsyncIterator[str], job: serving.Job) -> StreamingResponse:
    """The stream, once its first event is there: a failure before it (the backend down, the queue
    full) still gets its own status instead of a 200 with an error inside."""
    first = await events.__anext__()

    async def from_first() -> AsyncIterator[str]:
        try:
            yield first
            async for event in events:
                yield event
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    headers = {"Cache-Control": "no-cache", **_ignored_header(job)}
    return StreamingResponse(from_first(), media_type="text/event-stream", headers=headers)


def _json(response: BaseModel, job: serving.Job) -> JSONResponse:
    return JSONResponse(response.model_dump(), headers=_ignored_header(job))


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it is known to pass `limit` bytes (by its Content-Length, or while it
    streams in): a huge body is never held in memory whole."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body is {int(declared)} bytes, above this server's limit of {limit} "
                              "(max_body_bytes)", code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body passes this server's limit of {limit} bytes (max_body_bytes)",
                                  code="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


async def _parse_body(request: Request, model: type[Body], limit: int) -> Body:
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


async def _handle_client_gone(_request: Request, _exc: Exception) -> JSONResponse:
    log.info("client disconnected before its response: generation cancelled")
    return JSONResponse({"error": {"message": "client disconnected", "type": "cancelled"}}, status_code=499)


async def _handle_body_cut(_request: Request, _exc: Exception) -> JSONResponse:
    # nobody reads this answer; the 499 (nginx's "client closed request") keeps it out of the 5xx counts
    log.info("client disconnected before sending its whole request body")
    return JSONResponse({"error": {"message": "client disconnected before sending its whole body", "type": "cancelled"}},
                        status_code=499)


async def _handle_unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    body = ErrorResponse(error=ErrorBody(message=f"internal error: {type(exc).__name__}: {exc}", type="server_error"))
    return JSONResponse(body.model_dump(), status_code=500)


def _document_schemas(app: FastAPI) -> None:
    """The completion routes parse their own body (see _parse_body), so FastAPI does not see the
    models; add them to the OpenAPI document by hand."""
    original = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (CompletionRequest, CompletionResponse, ChatCompletionRequest, ChatCompletionResponse, ErrorResponse):
            definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(definition.pop("$defs", {}))
            components[model.__name__] = definition
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


__all__ = ["create_app"]


_R = TypeVar("_R")
_DISCONNECT_POLL_S = 0.25


async def _while_connected(request: Request, work: Awaitable[_R]) -> _R:
    """A non-streaming response's work, cancelled (and with it the generation) when the client goes
    away before it is done: an editor drops most requests as the user types on."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=_DISCONNECT_POLL_S)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            raise ClientGone()


class ClientGone(Exception):
    """The client disconnected before its response was ready; nobody reads what is sent back."""
