"""The one load generator: concurrent clients, each sending its next request as soon as its last one
ended (a closed loop, as editors and benchmark harnesses send), until a number of requests or a time
is used up. `eval latency` (a fixed number of requests over N clients), `eval load` (clients ramped
in for a duration) and the speed suite's server path (each client a fixed number) all drive it; what
a request is and how its outcome counts is the caller's `send`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

Send = Callable[[int, int], Awaitable[None]]  # (client, ticket): the ticket numbers requests in the order they start


@dataclass
class ClosedLoop:
    clients: int
    total: int | None = None  # requests in all, each taken by whichever client is free first
    per_client: int | None = None  # requests each client sends
    duration_s: float | None = None  # no request starts after this long from the start
    ramp_s: float = 0.0  # client i starts at ramp_s * i / clients
    active: int = 0  # clients started and not yet done (progress lines read it)
    started: int = 0  # requests started so far
    stopped: bool = False  # stop(): no request starts after it; those in flight end as they would

    def __post_init__(self) -> None:
        if self.clients < 1:
            raise ValueError(f"clients must be at least 1, not {self.clients}")
        if self.total is None and self.per_client is None and self.duration_s is None:
            raise ValueError("a closed loop needs an end: total, per_client or duration_s")

    def stop(self) -> None:
        """End the run early (Ctrl-C): the requests in flight finish, no other starts."""
        self.stopped = True

    async def run(self, send: Send) -> float:
        """Every client's requests through `send`; returns the wall time in seconds."""
        t0 = time.perf_counter()

        def more(sent: int) -> bool:
            return (
                not self.stopped
                and (self.total is None or self.started < self.total)
                and (self.per_client is None or sent < self.per_client)
                and (self.duration_s is None or time.perf_counter() - t0 < self.duration_s)
            )

        async def client(index: int) -> None:
            await asyncio.sleep(self.ramp_s * index / self.clients)
            self.active += 1
            sent = 0
            try:
                while more(sent):
                    ticket, self.started, sent = self.started, self.started + 1, sent + 1
                    await send(index, ticket)
            finally:
                self.active -= 1

        await asyncio.gather(*(client(i) for i in range(self.clients)))
        return time.perf_counter() - t0


__all__ = ["ClosedLoop", "Send"]
