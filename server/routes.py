"""The HTTP routes: OpenAI Completions and Chat, the Copilot plugin's and FauxPilot's routes, models,
metrics and health. Each reads what it needs from the app's state (server/app.py: settings, backend,
metrics, drain, keys); a generation route parses its body and makes one call into server/serving.py."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from server import serving
from server.app_state import app_state
from server.backends.base import SERVING, Backend
from server.body import parse_body
from server.metrics import CONTENT_TYPE
from server.openapi import CHAT_DOC, COMPLETION_DOC
from server.protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from server.responses import ChatShape, CompletionShape

router = APIRouter()


@router.post("/v1/completions", openapi_extra=COMPLETION_DOC, response_model=None)
async def completions(request: Request) -> JSONResponse | StreamingResponse:
    state = app_state(request)
    body = await parse_body(request, CompletionRequest, state.settings.max_body_bytes)
    return await serving.generate(state, body.generation(state.settings), request, CompletionShape)


@router.post("/v1/engines/{engine}/completions", openapi_extra=COMPLETION_DOC, response_model=None)
async def engine_completions(engine: str, request: Request) -> JSONResponse | StreamingResponse:
    """The Copilot plugin's route. The engine in the path is the model when it names one served here (the
    agent takes it from our /models); other engines (`codegen`, `copilot-codex`) get the body's model or
    the first served one."""
    state = app_state(request)
    body = await parse_body(request, CompletionRequest, state.settings.max_body_bytes)
    if body.model is None and engine in state.backend.names:
        body = body.model_copy(update={"model": engine})
    return await serving.generate(state, body.generation(state.settings), request, CompletionShape)


@router.post("/v1/chat/completions", openapi_extra=CHAT_DOC, response_model=None)
async def chat_completions(request: Request) -> JSONResponse | StreamingResponse:
    """Chat, through the model's own chat template; /v1/models says which models chat."""
    state = app_state(request)
    body = await parse_body(request, ChatCompletionRequest, state.settings.max_body_bytes)
    return await serving.generate(state, body.generation(state.settings), request, ChatShape)


@router.get("/v1/models", response_model=ModelList)
async def models(request: Request) -> ModelList:
    backend: Backend = app_state(request).backend
    cards = []
    for name in backend.names:
        manifest = backend.manifest(name)
        status = backend.status(name)
        stats = backend.cache_stats(name)  # the engine's own (0 when the budget was too small), else the setting
        cache_mb = stats.budget_bytes >> 20 if stats is not None else app_state(request).settings.prefix_cache_mb
        reuse = backend.reuse(name)
        cards.append(
            ModelCard(
                id=name,
                architecture=manifest.architecture if manifest else "unknown",
                parameters=manifest.parameters if manifest else 0,
                precision=manifest.precision if manifest else "unknown",
                context_length=manifest.context_length if manifest else 0,
                chat=bool(manifest and manifest.chat_template),
                fim=bool(manifest and manifest.fim),
                ready=status in SERVING,
                status=status,
                prefix_cache_mb=cache_mb,
                reuse_grid=reuse.grid if reuse is not None and cache_mb else None,  # none with the cache off
                max_batch_rows=app_state(request).settings.max_batch_rows,
                max_n=app_state(request).settings.max_n,
            )
        )
    return ModelList(data=cards)


@router.get("/metrics", include_in_schema=False)
async def metrics_text(request: Request) -> Response:
    """Prometheus exposition (behind the API keys when they are set: scrapers send a bearer token)."""
    return Response(app_state(request).metrics.render(), media_type=CONTENT_TYPE)


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers. Readiness is /ready."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    backend: Backend = app_state(request).backend
    status = {name: backend.status(name) for name in backend.names}
    body: dict = {"ready": backend.ready, "models": status}
    placement = backend.placement()
    if placement is not None:  # engine replicas (Ray Serve): how many run, and why not all where they do not
        body["replicas"] = {"states": dict(placement.replicas), "status": placement.status, "message": placement.message}
    return JSONResponse(body, status_code=200 if backend.ready else 503)
