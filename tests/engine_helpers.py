"""What the engine tests share: a generation's events folded into each choice's text."""

from __future__ import annotations

import threading
from collections.abc import Iterable

from server.engine import Delta, Usage
from server.engine.scheduler import Step


def fold(events: Iterable[Delta | Usage]) -> tuple[dict[int, str], Usage]:
    """Each choice's whole text, by index, and the generation's Usage (which must come)."""
    texts: dict[int, str] = {}
    usage = None
    for event in events:
        if isinstance(event, Delta):
            texts[event.index] = texts.get(event.index, "") + event.text
        else:
            usage = event
    assert usage is not None
    return texts, usage


class Steps(list[Step]):
    """What a scheduler's worker did, one entry per decode step (its observer). With `hold_at`, the worker
    waits at that step, before decoding it, until `release()`: what a test sends meanwhile arrives while
    the rows are mid-decode, whatever the machine's speed (no race of a poll against a short generation)."""

    def __init__(self, hold_at: int | None = None) -> None:
        super().__init__()
        self._hold_at, self._released = hold_at, threading.Event()

    def append(self, step: Step) -> None:
        super().append(step)
        if len(self) == self._hold_at:
            assert self._released.wait(60), "the test never released the worker"

    def release(self) -> None:
        self._released.set()

    def max(self, field: str) -> int:
        return max((getattr(s, field) for s in self), default=0)
