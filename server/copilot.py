"""The routes GitHub's Copilot language server (the agent inside the VS Code extension, copilot.vim,
copilot.lua and any LSP editor) calls before it asks for a completion, when it is pointed at us with
GH_COPILOT_TOKEN, GH_COPILOT_API_URL and GH_COPILOT_SERVER_URL: its session token, the user, the
models, embeddings models and its experiment configuration. Every answer points the agent back at
this server; the completion itself is /v1/engines/{engine}/completions (server/routes.py)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from server import auth
from server.app_state import app_state
from server.backends.base import Backend

router = APIRouter()
_TOKEN_TTL_S = 1800


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _endpoints(request: Request) -> dict[str, str]:
    base = _base(request)
    return {"api": base, "proxy": base, "telemetry": f"{base}/telemetry", "origin-tracker": base}


@router.get("/copilot_internal/v2/token")
async def copilot_token(request: Request) -> dict[str, object]:
    """The session token the agent asks for before completing: with API keys set, only a request with a
    valid key gets here, and its key is the token (the agent then sends it as Bearer)."""
    now = int(time.time())
    token = auth.presented_key(request.headers) if app_state(request).keys else "slipstream-open"
    return {
        "token": token,
        "expires_at": now + _TOKEN_TTL_S,
        "refresh_in": _TOKEN_TTL_S - 300,
        "endpoints": _endpoints(request),
        "chat_enabled": False,
        "sku": "slipstream",
        "individual": True,
    }


@router.get("/copilot_internal/user")
async def copilot_user(request: Request) -> dict[str, object]:
    return {"login": "slipstream", "copilot_plan": "individual", "chat_enabled": False, "endpoints": _endpoints(request)}


@router.get("/models")
async def copilot_models(request: Request) -> dict[str, object]:
    """Every served model as a completion model: the agent completes with the first (or the one its user
    picks) and names it in the completion's path, /v1/engines/{model}/completions."""
    backend: Backend = app_state(request).backend
    return {
        "data": [
            {
                "id": name,
                "name": name,
                "object": "model",
                "version": name,
                "vendor": "slipstream",
                "preview": False,
                "model_picker_enabled": True,
                "capabilities": {
                    "object": "model_capabilities",
                    "type": "completion",
                    "family": name,
                    "tokenizer": "o200k_base",
                    "limits": {},
                    "supports": {"streaming": True},
                },
            }
            for name in backend.names
        ]
    }


@router.get("/embeddings/models")
async def copilot_embeddings_models() -> dict[str, object]:
    return {"models": []}


@router.get("/telemetry")
async def copilot_experiments() -> dict[str, object]:
    """Its experiment configuration (the agent reads it from the telemetry endpoint): none."""
    return {"Configs": [{"Id": "vscode", "Parameters": {}}]}


@router.post("/telemetry")
async def copilot_telemetry() -> dict[str, object]:
    """Its usage events, when its telemetry is on (`telemetry.telemetryLevel` other than "off"): taken and
    dropped, so that its telemetry stays on this machine."""
    return {}
