"""One engine replica on Ray Serve: the embedded engine (the same one that runs in process and inside
Triton) for every served model, its events streamed to the ingress over a deployment handle.

The stream's first item says which replica took the request (the ingress counts requests per replica
and names the dead one when it fails over); an engine refusal crosses as an item too, by kind, since
the engine's own exceptions do not survive Ray's pickling with their fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from server.backends.base import BackendUnavailable
from server.backends.embedded import EmbeddedBackend
from server.engine import Delta, Prompt, SamplingParams, Usage
from server.settings import Settings
from server.triton import wire

log = logging.getLogger("slipstream.replica")


@dataclass(frozen=True)
class Served:
    """The first item of every stream: the replica that took the request."""

    replica: str
    pid: int
    node: str


@dataclass(frozen=True)
class Refused:
    """The engine refused or failed the request: wire's kinds (a full queue, a bad field, internal)."""

    kind: str
    message: str
    param: str | None = None

    def exception(self) -> Exception:
        """The engine's own exception, as in process; the replica's own failure is a 503 with its reason."""
        if self.kind == wire.INTERNAL:
            return BackendUnavailable(f"the engine replica failed the request: {self.message}")
        return wire.RemoteError(self.kind, self.message, self.param).local()


Item = Served | Refused | Delta | Usage


class EngineReplica:
    """The engine deployment's class (server/rayserve/app.py wraps it in serve.deployment)."""

    async def __init__(self, settings: dict[str, Any]) -> None:  # type: ignore[misc]  # Serve awaits an async constructor
        import ray
        from ray import serve

        self.settings = Settings(**settings)
        self.backend = EmbeddedBackend(self.settings)
        await self.backend.load()
        failed = [f"{n}: {self.backend.failure(n)}" for n in self.backend.names if self.backend.status(n) == "failed"]
        if failed:  # never RUNNING, so never routed to: Serve starts another, and says why on /ready
            raise RuntimeError(f"this engine replica cannot load {'; '.join(failed)}")
        context = serve.get_replica_context()
        self.served = Served(context.replica_id.unique_id, os.getpid(), ray.get_runtime_context().get_node_id())
        log.info("engine replica %s (pid %d) up: %s", self.served.replica, self.served.pid, self._statuses())

    def _statuses(self) -> dict[str, str]:
        return {name: self.backend.status(name) for name in self.backend.names}

    async def generate(self, name: str, prompt: Prompt, params: SamplingParams) -> AsyncGenerator[list[Item], None]:
        """The request's items in lists: Served with the first events at once (until one has text), then
        what the engine made within ray_coalesce_ms of the last list sent, and the last event at once.
        Each list is one message of Ray's stream through the ingress and Serve's proxy, whose CPU a
        machine with no core to spare takes from decoding (bench/README.md, `bench.ray`)."""
        events: asyncio.Queue[Item | None] = asyncio.Queue()  # None: the end
        pump = asyncio.create_task(self._pump(name, prompt, params, events))
        window = self.settings.ray_coalesce_ms / 1000
        try:
            batch: list[Item] = [self.served]
            sent_at, texted = float("-inf"), False  # until the first text is out, nothing waits (TTFT)
            while True:
                item = await events.get()
                if item is None:
                    break
                batch.append(item)
                wait = sent_at + window - time.monotonic()
                if texted and wait > 0 and isinstance(item, Delta) and item.finish_reason is None:
                    await asyncio.sleep(wait)
                ended = False
                while not events.empty():
                    more = events.get_nowait()
                    if more is None:
                        ended = True
                        break
                    batch.append(more)
                texted = texted or any(isinstance(i, Delta) and i.text for i in batch)
                yield batch
                batch, sent_at = [], time.monotonic()
                if ended:
                    break
            if batch:
                yield batch
        finally:
            pump.cancel()  # a client gone: the engine's generator is closed, its rows dropped

    async def _pump(self, name: str, prompt: Prompt, params: SamplingParams, events: asyncio.Queue[Item | None]) -> None:
        try:
            await self.backend.acquire(name)
            async with contextlib.aclosing(self.backend.generate(name, prompt, params)) as generated:
                async for event in generated:
                    events.put_nowait(event)
        except Exception as exc:  # noqa: BLE001 - every failure crosses as an item, by kind
            if not isinstance(exc, wire.REFUSALS):
                log.exception("request failed on replica %s", self.served.replica)
            events.put_nowait(Refused(*wire.error_fields(exc)))
        finally:
            events.put_nowait(None)

    async def check_health(self) -> None:
        """Serve replaces a replica whose health check raises: one whose model could not load."""
        failed = {name: s for name, s in self._statuses().items() if s == "failed"}
        if failed:
            reasons = "; ".join(f"{n}: {self.backend.failure(n)}" for n in failed)
            raise RuntimeError(f"replica {self.served.replica} cannot serve {reasons}")

    def record_routing_stats(self) -> dict[str, Any]:
        """What the router balances on, every request_routing_stats_period_s: requests decoding and
        waiting, rows decoding, prefix-cache bytes held, over every model of this replica."""
        stats = {"rows": 0, "waiting": 0, "cache_bytes": 0, "pid": self.served.pid}
        for name in self.backend.names:
            load, cache = self.backend.batch_load(name), self.backend.cache_stats(name)
            if load is not None:
                stats["rows"] += load.rows
                stats["waiting"] += load.waiting
            if cache is not None:
                stats["cache_bytes"] += cache.bytes
        return stats

    def __del__(self) -> None:
        backend = getattr(self, "backend", None)
        if backend is not None:
            backend.close()
