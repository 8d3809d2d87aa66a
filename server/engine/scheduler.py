"""Continuous batching: the live rows of every request decode together, one step at a time.

One worker thread owns the model. Each turn it admits waiting requests (prefill, first token; their
rows join the batch's KV cache; while rows decode, only up to a prefill budget per turn), then runs
one decode step for every live row of every request, hands each request its new text, and drops at
once the rows that finished and the requests whose client went away. One thread keeps ONNX Runtime's
threads alone on the cores (two sessions running at once would fight over them and both slow down).
The queue is bounded: past it a request is refused at once rather than left waiting behind an
unbounded backlog.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import AsyncIterator

from server.engine.engine import Delta, Engine, Prompt, SamplingParams, Sequence, Usage
from server.engine.runner import KVCache

log = logging.getLogger("slipstream.scheduler")

_DONE = object()
_STOP = object()
# Rows decoded together at most; a request whose rows do not fit waits for rows to finish.
MAX_BATCH_ROWS = 64
# Prompt tokens prefilled between two decode steps while rows are decoding: a prefill holds up every
# live row, so a burst of arrivals is admitted a few per step instead of all before the next token.
# At least one request is admitted per step whatever its length.
PREFILL_TOKENS_PER_STEP = 256


class QueueFull(RuntimeError):
    """More requests are waiting than the scheduler accepts."""


@dataclass
class _Request:
    prompt: Prompt
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[object]
    cancel: threading.Event = field(default_factory=threading.Event)
    sequence: Sequence | None = None

    def send(self, item: object) -> None:
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)


class Scheduler:
    def __init__(self, engine: Engine, max_waiting: int, max_rows: int = MAX_BATCH_ROWS) -> None:
        self.engine = engine
        self._max_waiting, self._max_rows = max_waiting, max_rows
        self._inbox: queue.Queue[object] = queue.Queue()
        self._pending = 0  # submitted and not finished: waiting or decoding
        self.stats = {"steps": 0, "rows_decoded": 0, "max_batch_rows": 0, "max_batch_requests": 0,
                      "max_prefill_tokens_between_steps": 0}
        # what the worker is doing now, read by /metrics: rows decoding, requests not yet admitted
        self.batch_rows = 0
        self.waiting = 0
        self._thread = threading.Thread(target=self._run, name=f"engine-{engine.manifest.name}", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return self._pending

    async def submit(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[Delta | Usage]:
        """Events of one generation as the worker produces them. Leaving the iteration early (the client
        disconnected, the task was cancelled) drops the request's rows at the next step."""
        if self._pending >= self._max_waiting:
            raise QueueFull(f"{self._pending} requests are already queued (limit {self._max_waiting})")
        request = _Request(prompt, params, asyncio.get_running_loop(), asyncio.Queue())
        self._pending += 1
        try:
            self._inbox.put(request)
            while (event := await request.out.get()) is not _DONE:
                if isinstance(event, BaseException):
                    raise event
                yield event  # type: ignore[misc]
        finally:
            request.cancel.set()
            self._pending -= 1

    def close(self) -> None:
        self._inbox.put(_STOP)

    # --- the worker thread ---

    def _run(self) -> None:
        active: list[_Request] = []  # in the order of their rows in the batch
        batch: KVCache | None = None
        waiting: list[_Request] = []
        while True:
            # block for work only when nothing decodes
            try:
                item = self._inbox.get(block=not active and not waiting)
                while True:
                    if item is _STOP:
                        return
                    waiting.append(item)  # type: ignore[arg-type]
                    item = self._inbox.get_nowait()
            except queue.Empty:
                pass
            active, batch = self._drop_cancelled(active, batch)
            self.waiting = len(waiting)
            rows = sum(len(r.sequence.live) for r in active)  # type: ignore[union-attr]
            decoding, prefilled = bool(active), 0
            while waiting and (not active or rows + self._rows_of(waiting[0]) <= self._max_rows):
                if decoding and prefilled >= PREFILL_TOKENS_PER_STEP:
                    break
                request = waiting.pop(0)
                if request.cancel.is_set():
                    request.send(_DONE)
                    continue
                prefilled += len(request.prompt.ids)
                cache = self._admit(request)
                if cache is not None:
                    active.append(request)
                    batch = cache if batch is None else batch.join(cache)
                    rows += cache.batch
            if decoding:
                self.stats["max_prefill_tokens_between_steps"] = max(self.stats["max_prefill_tokens_between_steps"], prefilled)
            self.waiting = len(waiting)
            if not active:
                self.batch_rows = 0
                continue
            active, batch = self._step(active, batch)  # type: ignore[arg-type]

    @staticmethod
    def _rows_of(request: _Request) -> int:
        return request.params.best_of or request.params.n

    def _admit(self, request: _Request) -> KVCache | None:
        try:
            sequence, cache = self.engine.start(request.prompt, request.params)
        except Exception as exc:  # noqa: BLE001 - handed to the request's consumer, the worker goes on
            request.send(exc)
            request.send(_DONE)
            return None
        request.sequence = sequence
        self._deliver(request)
        return cache

    def _step(self, active: list[_Request], batch: KVCache) -> tuple[list[_Request], KVCache | None]:
        tokens = [t for r in active for t in r.sequence.tokens]  # type: ignore[union-attr]
        stats = self.stats
        stats["steps"] += 1
        stats["rows_decoded"] += len(tokens)
        stats["max_batch_rows"] = max(stats["max_batch_rows"], len(tokens))
        stats["max_batch_requests"] = max(stats["max_batch_requests"], len(active))
        self.batch_rows = len(tokens)
        try:
            logits, batch = self.engine.runner.decode(tokens, batch)
        except Exception as exc:  # noqa: BLE001 - every request in the batch learns of it
            log.exception("decode step failed")
            for request in active:
                request.send(exc)
                request.send(_DONE)
            return [], None
        keep: list[int] = []
        still: list[_Request] = []
        offset = 0
        for request in active:
            sequence = request.sequence
            assert sequence is not None
            width = len(sequence.live)
            kept = sequence.advance(logits[offset : offset + width])
            self._deliver(request)
            if kept:
                keep.extend(offset + k for k in kept)
                still.append(request)
            offset += width
        self.batch_rows = len(keep)  # rows still decoding: 0 once the batch is done, not the last step's size
        if not keep:
            return [], None
        return still, batch.select(keep) if len(keep) < batch.batch else batch

    def _drop_cancelled(self, active: list[_Request], batch: KVCache | None) -> tuple[list[_Request], KVCache | None]:
        if batch is None or not any(r.cancel.is_set() for r in active):
            return active, batch
        keep, still, offset = [], [], 0
        for request in active:
            width = len(request.sequence.live)  # type: ignore[union-attr]
            if request.cancel.is_set():
                request.send(_DONE)
            else:
                keep.extend(range(offset, offset + width))
                still.append(request)
            offset += width
        self.batch_rows = len(keep)
        return still, batch.select(keep) if keep else None

    @staticmethod
    def _deliver(request: _Request) -> None:
        sequence = request.sequence
        assert sequence is not None
        for event in sequence.take():
            request.send(event)
        if sequence.done:
            request.send(_DONE)


__all__ = ["MAX_BATCH_ROWS", "PREFILL_TOKENS_PER_STEP", "QueueFull", "Scheduler"]
