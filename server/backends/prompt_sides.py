"""The served models' prompt sides in the API's process, for a backend whose engine runs elsewhere
(Triton, Ray Serve): the API tokenises and trims, so a bad request is refused before anything leaves."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from server.backends.base import ModelFailed, ModelLoading, ModelStatus
from server.engine import Prompter
from server.models import store

log = logging.getLogger("slipstream.backend")


class PromptSides:
    def __init__(self, repository: Path, names: list[str]) -> None:
        self.repository, self.names = repository, names
        self._loaded: dict[str, Prompter] = {}
        self._failures: dict[str, str] = {}  # name -> why its prompt side cannot load

    async def load(self) -> None:
        for name in self.names:
            try:
                self._loaded[name] = await asyncio.to_thread(Prompter, self.repository, name)
            except Exception as exc:  # reported by readiness and by every request for this model
                log.error("model %s cannot be served: %s", name, exc)
                self._failures[name] = f"{type(exc).__name__}: {exc}"

    def failed(self, name: str) -> bool:
        return name in self._failures

    def loaded(self, name: str) -> bool:
        return name in self._loaded

    def get(self, name: str) -> Prompter:
        """The model's prompt side; ModelFailed where it cannot load, ModelLoading before it has."""
        if name in self._failures:
            raise ModelFailed(f"model {name!r} cannot be served: {self._failures[name]}")
        if name not in self._loaded:
            raise ModelLoading(f"model {name!r} is still loading")
        return self._loaded[name]

    def status(self, name: str, engine_has_it: bool) -> ModelStatus:
        """failed (the prompt side cannot load), ready (loaded, and the engine elsewhere has the model), or loading."""
        if self.failed(name):
            return "failed"
        return "ready" if self.loaded(name) and engine_has_it else "loading"

    def acquire(self, name: str, engine_has_it: bool, why_not: Callable[[], str]) -> Prompter:
        """The prompt side of a model whose engine takes requests now; else ModelFailed or ModelLoading (with
        why_not(): what the backend knows of its engine)."""
        prompter = self.get(name)
        if not engine_has_it:
            raise ModelLoading(why_not())
        return prompter

    def manifest(self, name: str) -> store.Manifest | None:
        """The loaded manifest, else the store's (before loading), else None."""
        if name in self._loaded:
            return self._loaded[name].manifest
        try:
            return store.read_manifest(self.repository, name)
        except store.ModelNotExported:
            return None
