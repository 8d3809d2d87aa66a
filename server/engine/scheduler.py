"""Runs generations on one worker thread, first come first served, and hands their events to asyncio.

One generation at a time keeps ONNX Runtime's threads alone on the cores (two sessions running at
once would fight over them and both slow down). The queue is bounded: past it a request is refused at
once rather than left waiting behind an unbounded backlog. Continuous batching replaces this in a
later step; its interface (submit -> async iterator, cancelled when the consumer stops) stays.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator

from server.engine.engine import Delta, Engine, Prompt, SamplingParams, Usage

_DONE = object()


class QueueFull(RuntimeError):
    """More requests are waiting than the scheduler accepts."""


class Scheduler:
    def __init__(self, engine: Engine, max_waiting: int) -> None:
        self.engine = engine
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{engine.manifest.name}")
        self._max_waiting = max_waiting
        self._pending = 0

    @property
    def pending(self) -> int:
        return self._pending

    async def submit(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[Delta | Usage]:
        """Events of one generation as the worker produces them. Leaving the iteration early (the client
        disconnected, the task was cancelled) stops the generation at its next step."""
        if self._pending >= self._max_waiting:
            raise QueueFull(f"{self._pending} requests are already queued (limit {self._max_waiting})")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancel = threading.Event()

        def work() -> None:
            try:
                if not cancel.is_set():
                    for event in self.engine.generate(prompt, params, cancel):
                        loop.call_soon_threadsafe(queue.put_nowait, event)
            except BaseException as exc:  # handed to the consumer, who raises it in its own task
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)

        self._pending += 1
        try:
            future = loop.run_in_executor(self._executor, work)
            while (event := await queue.get()) is not _DONE:
                if isinstance(event, BaseException):
                    raise event
                yield event  # type: ignore[misc]
            await future
        finally:
            cancel.set()
            self._pending -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
