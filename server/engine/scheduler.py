"""Continuous batching: the live rows of every request decode together, one step at a time.

One worker thread owns the model. Each turn it admits waiting requests (their prompts prefilled chunk
by chunk, then the first tokens; their rows join the batch's KV cache; while rows decode, only up to a
prefill budget per turn, so a long prompt goes in between decode steps), then runs
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
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field

from server.engine.batch import Batch
from server.engine.engine import Engine, Prefill
from server.engine.events import Delta, Usage
from server.engine.prompts import Prompt
from server.engine.sampling import SamplingParams
from server.engine.sequence import Sequence

log = logging.getLogger("slipstream.scheduler")

_DONE = object()


class QueueFull(RuntimeError):
    """More requests are waiting than the scheduler accepts."""


@dataclass
class _Request:
    prompt: Prompt
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[Delta | Usage | BaseException | object]  # object: _DONE
    cancel: threading.Event = field(default_factory=threading.Event)
    prefill: Prefill | None = None  # its prompt on its way in, chunk by chunk
    sequence: Sequence | None = None  # its rows, once the prompt is in

    def send(self, item: object) -> None:
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)

    @property
    def done(self) -> bool:
        """Its rows have all finished (a request in the batch has its sequence)."""
        return self.sequence is not None and self.sequence.done


@dataclass(frozen=True)
class Step:
    """What one turn of the worker did, for an observer (tests, benchmarks): the decode step's rows and
    requests, and the prompt tokens prefilled before it while rows were decoding."""

    rows: int
    requests: int
    prefilled: int


class Scheduler:
    """One model's worker thread. `max_waiting` bounds the requests it holds (decoding and waiting);
    `max_rows` the rows decoded together; `prefill_tokens` the prompt tokens prefilled between two
    decode steps while rows decode (Settings: max_queue, max_batch_rows, prefill_tokens_per_step)."""

    def __init__(
        self, engine: Engine, max_waiting: int, max_rows: int, prefill_tokens: int, observer: Callable[[Step], None] | None = None
    ) -> None:
        self.engine = engine
        self._max_waiting, self._max_rows, self._prefill_tokens = max_waiting, max_rows, prefill_tokens
        self._observer = observer
        self._inbox: queue.Queue[_Request | None] = queue.Queue()  # None: stop
        self._pending = 0  # submitted and not finished: waiting or decoding
        # what the worker is doing now, read by /metrics: rows decoding, requests not yet admitted
        self.batch_rows = 0
        self.rows_decoded = 0  # every row of every decode step: the work done, whatever became of it
        self.waiting = 0
        self.running = 0  # requests whose rows are in the batch
        self._thread = threading.Thread(target=self._run, name=f"engine-{engine.manifest.name}", daemon=True)
        self._thread.start()

    async def submit(
        self, prompt: Prompt, params: SamplingParams, cancel: threading.Event | None = None
    ) -> AsyncGenerator[Delta | Usage, None]:
        """Events of one generation as the worker produces them. Leaving the iteration early (the client
        disconnected, the task was cancelled), or setting `cancel` from anywhere, drops the request's rows
        at the next step: a consumer that lags behind its events can still stop the work."""
        if self._pending >= self._max_waiting:
            raise QueueFull(f"{self._pending} requests are already decoding or waiting (limit {self._max_waiting}, max_queue)")
        request = _Request(prompt, params, asyncio.get_running_loop(), asyncio.Queue(), cancel or threading.Event())
        self._pending += 1
        try:
            self._inbox.put(request)
            while (event := await request.out.get()) is not _DONE:
                if isinstance(event, BaseException):
                    raise event
                assert isinstance(event, Delta | Usage)
                yield event
        finally:
            request.cancel.set()
            self._pending -= 1

    def close(self) -> None:
        self._inbox.put(None)

    # --- the worker thread ---

    def _run(self) -> None:
        batch = Batch()
        active: list[_Request] = []  # the requests whose sequences are in the batch
        waiting: list[_Request] = []
        while True:
            # block for work only when nothing decodes
            try:
                item = self._inbox.get(block=not batch and not waiting)
                while True:
                    if item is None:
                        return
                    waiting.append(item)
                    item = self._inbox.get_nowait()
            except queue.Empty:
                pass
            active = self._drop_cancelled(active, batch)
            prefilled = self._admit(waiting, active, batch)
            self.waiting = len(waiting)
            self.batch_rows, self.running = batch.rows, len(active)
            if not batch:
                continue
            if self._observer is not None:
                self._observer(Step(batch.rows, len(active), prefilled))
            try:
                self.engine.step(batch)
                self.rows_decoded += self.batch_rows  # the step's rows, as they were before it
            except Exception as exc:  # noqa: BLE001 - every request in the batch learns of it
                log.exception("decode step failed")
                for request in active:
                    request.send(exc)
                    request.send(_DONE)
                batch, active = Batch(), []
                continue
            for request in active:
                self._deliver(request)
            active = [r for r in active if not r.done]
            self.batch_rows, self.running = batch.rows, len(active)  # rows still decoding: 0 once the batch is done

    def _admit(self, waiting: list[_Request], active: list[_Request], batch: Batch) -> int:
        """Prefill the waiting requests in turn, chunk by chunk, into the batch while their rows fit; while
        rows decode, only up to the prefill budget per turn (at least one chunk). Returns the prompt
        tokens prefilled while rows decoded."""
        decoding, prefilled = bool(batch), 0
        while waiting and (not batch or batch.rows + self._rows_of(waiting[0]) <= self._max_rows):
            if decoding and prefilled >= self._prefill_tokens:
                break
            request = waiting[0]  # the head stays waiting while its chunks go in
            if request.cancel.is_set():
                waiting.pop(0)
                request.send(_DONE)
                continue
            try:
                if request.prefill is None:
                    request.prefill = self.engine.start(request.prompt, request.params)
                prefilled += self.engine.prefill(request.prefill)
                if request.prefill.remaining:
                    continue
                waiting.pop(0)
                sequence, cache = self.engine.first_tokens(request.prefill)
            except Exception as exc:  # noqa: BLE001 - handed to the request's consumer, the worker goes on
                if waiting and waiting[0] is request:
                    waiting.pop(0)
                request.send(exc)
                request.send(_DONE)
                continue
            request.prefill, request.sequence = None, sequence
            self._deliver(request)
            if cache is not None:
                batch.add(sequence, cache)
                active.append(request)
        return prefilled if decoding else 0

    @staticmethod
    def _rows_of(request: _Request) -> int:
        return request.params.best_of or request.params.n

    @staticmethod
    def _drop_cancelled(active: list[_Request], batch: Batch) -> list[_Request]:
        gone = [r for r in active if r.cancel.is_set()]
        if not gone:
            return active
        batch.remove([r.sequence for r in gone if r.sequence is not None])
        for request in gone:
            request.send(_DONE)
        return [r for r in active if not r.cancel.is_set()]

    @staticmethod
    def _deliver(request: _Request) -> None:
        sequence = request.sequence
        assert sequence is not None
        for event in sequence.take():
            request.send(event)
        if sequence.done:
            request.send(_DONE)


__all__ = ["QueueFull", "Scheduler", "Step"]
