"""The HTTP routes: OpenAI Completions and Chat, the Copilot plugin's and FauxPilot's routes, models,
metrics and health. Each reads what it needs from the app's state (server/app.py: settings, backend,
metrics, drain, keys); a generation route parses its body and makes one call into server/serving.py."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from server import auth, serving
from server.backends.base import SERVING, Backend
from server.body import parse_body
from server.metrics import CONTENT_TYPE
from server.openapi import CHAT_DOC, COMPLETION_DOC
from server.protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList

router = APIRouter()
_COPILOT_TOKEN_TTL_S = 1800


@router.post("/v1/completions", openapi_extra=COMPLETION_DOC, response_model=None)
async def completions(request: Request) -> JSONResponse | StreamingResponse:
    body = await parse_body(request, CompletionRequest, request.app.state.settings.max_body_bytes)
    return await serving.completion(request.app.state, body, request)


@router.post("/v1/engines/{engine}/completions", openapi_extra=COMPLETION_DOC, response_model=None)
async def engine_completions(engine: str, request: Request) -> JSONResponse | StreamingResponse:
    """The Copilot plugin's route; the engine in the path (`codegen`, `copilot-codex`) is not a model name."""
    body = await parse_body(request, CompletionRequest, request.app.state.settings.max_body_bytes)
    return await serving.completion(request.app.state, body, request)


@router.post("/v1/chat/completions", openapi_extra=CHAT_DOC, response_model=None)
async def chat_completions(request: Request) -> JSONResponse | StreamingResponse:
    """Chat, through the model's own chat template; /v1/models says which models chat."""
    body = await parse_body(request, ChatCompletionRequest, request.app.state.settings.max_body_bytes)
    return await serving.chat(request.app.state, body, request)


@router.get("/v1/models", response_model=ModelList)
async def models(request: Request) -> ModelList:
    backend: Backend = request.app.state.backend
    cards = []
    for name in backend.names:
        manifest = backend.manifest(name)
        status = backend.status(name)
        stats = backend.cache_stats(name)  # the engine's own (0 when the budget was too small), else the setting
        cache_mb = stats.budget_bytes >> 20 if stats is not None else request.app.state.settings.prefix_cache_mb
        cards.append(
            ModelCard(
                id=name,
                architecture=manifest.architecture if manifest else "unknown",
                parameters=manifest.parameters if manifest else 0,
                precision=manifest.precision if manifest else "unknown",
                context_length=manifest.context_length if manifest else 0,
                chat=bool(manifest and manifest.chat_template),
                ready=status in SERVING,
                status=status,
                prefix_cache_mb=cache_mb,
            )
        )
    return ModelList(data=cards)


@router.get("/copilot_internal/v2/token")
async def copilot_token(request: Request) -> dict[str, object]:
    """The token the Copilot plugin asks for before completing: with API keys set, only a request with a
    valid key gets here, and its key is the token (the plugin then sends it as Bearer)."""
    now = int(time.time())
    token = auth.presented_key(request.headers) if request.app.state.keys else "slipstream-open"
    return {"token": token, "expires_at": now + _COPILOT_TOKEN_TTL_S, "refresh_in": _COPILOT_TOKEN_TTL_S - 300}


@router.get("/metrics", include_in_schema=False)
async def metrics_text(request: Request) -> Response:
    """Prometheus exposition (behind the API keys when they are set: scrapers send a bearer token)."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers. Readiness is /ready."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    backend: Backend = request.app.state.backend
    status = {name: backend.status(name) for name in backend.names}
    return JSONResponse({"ready": backend.ready, "models": status}, status_code=200 if backend.ready else 503)
