"""Optional API keys, checked before any route runs.

Keys come from the environment only, never from a flag (a flag shows in `ps`) and never into a log:
`SLIPSTREAM_API_KEYS` (comma-separated) and/or `SLIPSTREAM_API_KEYS_FILE` (one key per line, `#`
comments). With no key configured the server is open, as a local editor endpoint usually is. A key is
accepted in the header forms clients send: `Authorization: Bearer KEY` (OpenAI clients, Tabby, the
Copilot plugin's completion calls), `Authorization: token KEY` (the Copilot plugin's call for a
token), `X-API-Key: KEY` and `api-key: KEY`. Every configured key is compared in constant time
(hmac.compare_digest, all of them, no early exit), so timing does not leak how much of a key matched
or which key it was. Liveness, readiness and the API documents stay open (probes carry no key), and so do the Copilot
agent's /telemetry and the playground's page and files (server/playground.py), which hold nothing: the page asks for
the key and sends it on every API call.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Mapping
from pathlib import Path

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from server.error_shapes import error_body
from server.protocol import ErrorBody

ENV_KEYS = "SLIPSTREAM_API_KEYS"
ENV_KEYS_FILE = "SLIPSTREAM_API_KEYS_FILE"
# /telemetry: the Copilot agent asks it for its (empty) experiment configuration without a bearer
OPEN_PATHS = frozenset({"/health", "/ready", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect", "/telemetry", "/"})
OPEN_PREFIXES = ("/playground/",)


class AuthConfigError(ValueError):
    """The keys were asked for but cannot be used (an empty list, an unreadable file)."""


def load_keys(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The configured keys; [] when neither variable is set. A variable that is set but yields no key
    is an error: the operator meant to lock the server, and an open one would be a silent failure."""
    keys: list[str] = []
    if ENV_KEYS in environ:
        found = [k.strip() for k in environ[ENV_KEYS].split(",") if k.strip()]
        if not found:
            raise AuthConfigError(f"{ENV_KEYS} is set but holds no key (expected comma-separated keys)")
        keys += found
    if ENV_KEYS_FILE in environ:
        path = Path(environ[ENV_KEYS_FILE])
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise AuthConfigError(f"{ENV_KEYS_FILE}={path}: cannot read it ({exc.strerror})") from None
        found = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not found:
            raise AuthConfigError(f"{ENV_KEYS_FILE}={path} holds no key (one per line)")
        keys += found
    short = [k for k in keys if len(k) < 8]
    if short:
        raise AuthConfigError(f"{len(short)} API key(s) shorter than 8 characters: use longer, random keys")
    return keys


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request carries, in any of the accepted header forms (lower-case names: a plain dict so
    written, or Starlette's Headers, which match any case)."""
    authorization = headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() in ("bearer", "token") and value.strip():
        return value.strip()
    for name in ("x-api-key", "api-key"):
        if headers.get(name, "").strip():
            return headers[name].strip()
    return None


def key_matches(presented: str | None, keys: list[str]) -> bool:
    matched = False
    candidate = (presented or "").encode()
    for key in keys:  # every key compared, whatever matched before
        matched |= hmac.compare_digest(candidate, key.encode())
    return matched and presented is not None


class APIKeyMiddleware:
    """401 for a request without a valid key, before routing, in its API's error shape."""

    def __init__(self, app: ASGIApp, keys: list[str]) -> None:
        self.app, self.keys = app, keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES) or scope.get("method") == "OPTIONS":
            await self.app(scope, receive, send)  # CORS preflights carry no credentials by design
            return
        presented = presented_key(Headers(scope=scope))
        if key_matches(presented, self.keys):
            await self.app(scope, receive, send)
            return
        message = "no API key: send Authorization: Bearer <key>" if presented is None else "the API key is not valid"
        # in the shape of the API the request was for: an Ollama client reads {"error": "..."}
        error = ErrorBody(message=message, type="invalid_request_error", code="invalid_api_key")
        body = json.dumps(error_body(scope["path"], 401, error)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="slipstream"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
