"""The app's state, typed: what create_app builds once (server/app.py) and every route reads."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from server.backends.base import Backend
from server.drain import Drain
from server.metrics import Metrics
from server.settings import Settings


@dataclass(frozen=True)
class AppState:
    settings: Settings
    backend: Backend
    metrics: Metrics
    drain: Drain  # begun by the server on SIGTERM (cli.py)
    keys: list[str]  # the API keys; [] when the server is open


def app_state(request: Request) -> AppState:
    """The state of the app serving `request`."""
    state: AppState = request.app.state.slipstream
    return state
