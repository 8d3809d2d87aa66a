"""Graceful shutdown: on SIGTERM or Ctrl-C the server stops taking connections (uvicorn does that) and
its in-flight generations get `shutdown_grace_s` to finish. One that would outlive the grace period is
ended one second before it, cleanly: a stream gets an error event and `[DONE]`, a plain request a 503,
instead of a connection cut when uvicorn cancels what is left."""

from __future__ import annotations

import time
from types import FrameType

import uvicorn

_MARGIN_S = 1.0  # the last second of the grace period is left to write the endings


class Drain:
    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self._deadline: float | None = None  # time.monotonic() at which generations are ended

    def begin(self) -> None:
        if self._deadline is None:
            self._deadline = time.monotonic() + max(0.0, self.grace_s - _MARGIN_S)

    def seconds_left(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()


class DrainingServer(uvicorn.Server):
    """uvicorn's server, telling the app's Drain when a shutdown signal arrives."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.drain.begin()
        super().handle_exit(sig, frame)
