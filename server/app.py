"""The FastAPI app: its state, middleware, error handlers and lifespan around the routes (server/routes.py)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.requests import ClientDisconnect
from starlette.routing import Route

from server import auth
from server.app_state import AppState
from server.backends.base import Backend
from server.backends.embedded import EmbeddedBackend
from server.body import located
from server.copilot import router as copilot_router
from server.drain import Drain
from server.error_shapes import error_response
from server.errors import APIError, ClientGone
from server.infill import router as infill_router
from server.metrics import Metrics, MetricsMiddleware
from server.ollama import router as ollama_router
from server.openapi import document_schemas
from server.playground import router as playground_router
from server.protocol import ErrorBody
from server.routes import router
from server.settings import Settings

log = logging.getLogger("slipstream.app")
ROUTERS = (router, copilot_router, ollama_router, infill_router, playground_router)  # every API the app serves, listed once


def create_app(settings: Settings, environ: Mapping[str, str] = os.environ, backend: Backend | None = None) -> FastAPI:
    """The app, its state (settings, backend, metrics, drain, keys) read by the routes as app_state(request).
    The backend (settings.backend's, unless given: Ray Serve's ingress gives its own) loads in the
    background once the app starts: liveness answers meanwhile."""
    keys = auth.load_keys(environ)  # AuthConfigError before anything loads: a lock that does not lock is no lock
    backend = backend or _backend(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(backend.load())
        yield
        loading.cancel()
        backend.close()

    app = FastAPI(title="slipstream", version="0.1.0", lifespan=lifespan)
    metrics = Metrics(backend)
    app.state.slipstream = AppState(settings, backend, metrics, Drain(settings.shutdown_grace_s), keys)
    app.add_exception_handler(APIError, _handle_api_error)
    app.add_exception_handler(ClientGone, _handle_client_gone)
    app.add_exception_handler(ClientDisconnect, _handle_body_cut)
    app.add_exception_handler(Exception, _handle_unexpected)
    for api in ROUTERS:
        app.include_router(api)
    document_schemas(app)
    if keys:
        app.add_middleware(auth.APIKeyMiddleware, keys=keys)
        log.info("API keys required (%d configured)", len(keys))
    if settings.cors_origins:  # after the key check: outside it, so that preflights are answered first
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"], allow_headers=["*"])
    # the app's own routes (documents) and each API's: FastAPI keeps an included router's routes apart
    routes = [r for r in (*app.router.routes, *(r for api in ROUTERS for r in api.routes)) if isinstance(r, Route)]
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=routes)  # outermost: refused requests are counted too
    return app


def _backend(settings: Settings) -> Backend:
    if settings.backend == "triton":
        from server.backends.triton import TritonBackend  # tritonclient only when asked for

        return TritonBackend(settings)
    return EmbeddedBackend(settings)


async def _handle_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    cause = exc.__cause__  # a body that failed validation: its whole place, for the shapes without a param
    where = located(cause) if isinstance(cause, ValidationError) else None
    return error_response(request.url.path, exc.status, exc.body().error, exc.headers(), where)


async def _handle_client_gone(request: Request, _exc: Exception) -> JSONResponse:
    log.info("client disconnected before its response: generation cancelled")
    return error_response(request.url.path, 499, ErrorBody(message="client disconnected", type="cancelled"))


async def _handle_body_cut(request: Request, _exc: Exception) -> JSONResponse:
    # nobody reads this answer; the 499 (nginx's "client closed request") keeps it out of the 5xx counts
    log.info("client disconnected before sending its whole request body")
    return error_response(request.url.path, 499, ErrorBody(message="client disconnected before sending its whole body", type="cancelled"))


async def _handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(request.url.path, 500, ErrorBody(message=f"internal error: {type(exc).__name__}: {exc}", type="server_error"))


__all__ = ["create_app"]
