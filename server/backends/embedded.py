"""The engine in this process: one Engine and Scheduler per served model, loaded in the background so
that the server answers liveness (and says "loading" on readiness) while a model loads or exports."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator

from server.backends.base import SERVING, BatchLoad, ModelFailed, ModelLoading, ModelStatus, Placement
from server.engine import CacheStats, Delta, Engine, Prompt, Prompter, ReusePolicy, SamplingParams, Scheduler, Usage
from server.models import catalog, store
from server.settings import Settings

log = logging.getLogger("slipstream.backend")


class EmbeddedBackend:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.names: list[str] = list(dict.fromkeys(settings.model))
        self._schedulers: dict[str, Scheduler] = {}
        self._failures: dict[str, str] = {}
        self._standby: set[str] = set()  # exported, loaded on first use (load = "lazy")
        self._loading: dict[str, asyncio.Task[None]] = {}

    async def load(self) -> None:
        """Export (when allowed and needed) every model, one after the other, and load it into memory
        now (eager) or leave that to its first request (lazy)."""
        for name in self.names:
            if self.settings.load == "eager":
                await self._load(name)
                continue
            try:
                await asyncio.to_thread(self._ensure_exported, name)
            except Exception as exc:
                self._fail(name, exc)
                continue
            self._standby.add(name)

    async def _load(self, name: str) -> None:
        try:
            engine = await asyncio.to_thread(self._load_engine, name)
        except Exception as exc:  # reported by readiness and by every request for this model
            self._fail(name, exc)
            return
        # past max_queue requests in flight (decoding and waiting), submit raises QueueFull: a 429
        s = self.settings
        self._schedulers[name] = Scheduler(engine, s.max_queue, s.max_batch_rows, s.prefill_tokens_per_step)
        self._standby.discard(name)
        log.info("model %s ready (%s, %s)", name, engine.manifest.precision, engine.manifest.graph)

    def _fail(self, name: str, exc: Exception) -> None:
        log.error("model %s failed to load: %s: %s", name, type(exc).__name__, exc, exc_info=exc)
        self._failures[name] = f"{type(exc).__name__}: {exc}"
        self._standby.discard(name)

    def _ensure_exported(self, name: str) -> None:
        repository = self.settings.model_repository
        try:
            store.read_manifest(repository, name)
        except store.ModelNotExported:
            if not (self.settings.export_missing and name in catalog.CATALOG):
                raise
            from server.models.export_gguf import export_bundled

            export_bundled(name, repository, log=lambda line: log.info("%s", line))

    def _load_engine(self, name: str) -> Engine:
        self._ensure_exported(name)
        return Engine.load(self.settings.model_repository, name, device=self.settings.device, **self.settings.engine_options())

    def status(self, name: str) -> ModelStatus:
        """ready (in memory), standby (exported, loads on first request), loading, or failed."""
        if name in self._schedulers:
            return "ready"
        if name in self._failures:
            return "failed"
        return "standby" if name in self._standby and name not in self._loading else "loading"

    def failure(self, name: str) -> str | None:
        """Why the model failed to load, if it did."""
        return self._failures.get(name)

    @property
    def ready(self) -> bool:
        return all(self.status(n) in SERVING for n in self.names)

    async def acquire(self, name: str) -> Prompter:
        """The model's prompt side, loading a standby model first (concurrent first requests share one load;
        a request that gives up does not cancel it). ModelLoading / ModelFailed say why there is none."""
        if name in self._standby and name not in self._schedulers:
            task = self._loading.get(name)
            if task is None:
                task = self._loading[name] = asyncio.create_task(self._load(name))
                task.add_done_callback(lambda _t: self._loading.pop(name, None))
            await asyncio.shield(task)
        return self.engine(name).prompter

    def engine(self, name: str) -> Engine:
        """The loaded engine; ModelLoading / ModelFailed say why there is none yet."""
        if name in self._schedulers:
            return self._schedulers[name].engine
        if name in self._failures:
            raise ModelFailed(f"model {name!r} failed to load: {self._failures[name]}")
        raise ModelLoading(f"model {name!r} is still loading")

    def manifest(self, name: str) -> store.Manifest | None:
        if name in self._schedulers:
            return self._schedulers[name].engine.manifest
        try:
            return store.read_manifest(self.settings.model_repository, name)
        except store.ModelNotExported:
            return None

    def batch_load(self, name: str) -> BatchLoad | None:
        """None before the model loads."""
        scheduler = self._schedulers.get(name)
        if scheduler is None:
            return None
        engine = scheduler.engine
        drafted, accepted = engine.speculator.counts()
        return BatchLoad(
            scheduler.batch_rows,
            scheduler.waiting,
            scheduler.rows_decoded,
            drafted,
            accepted,
            running=scheduler.running,
            max_rows=self.settings.max_batch_rows,
        )

    def cache_stats(self, name: str) -> CacheStats | None:
        scheduler = self._schedulers.get(name)
        return None if scheduler is None else scheduler.engine.cache_stats

    def placement(self) -> Placement | None:
        return None

    def reuse(self, name: str) -> ReusePolicy | None:
        scheduler = self._schedulers.get(name)
        return None if scheduler is None else scheduler.engine.reuse

    async def generate(self, name: str, prompt: Prompt, params: SamplingParams) -> AsyncGenerator[Delta | Usage, None]:
        self.engine(name)
        # closed with this generator (serving closes it when the client goes): the rows drop at once
        async with contextlib.aclosing(self._schedulers[name].submit(prompt, params)) as events:
            async for event in events:
                yield event

    def close(self) -> None:
        for scheduler in self._schedulers.values():
            scheduler.close()
