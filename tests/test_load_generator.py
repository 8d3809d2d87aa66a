"""The one load generator and percentile helper that `eval latency`, `eval load` and the speed suite share."""

from __future__ import annotations

import asyncio

import pytest

from eval.load_generator import ClosedLoop
from eval.stats import percentiles


def _drive(loop: ClosedLoop, pause_s: float = 0.0) -> tuple[list[tuple[int, int]], int]:
    """Runs `loop` with requests that take `pause_s`; returns (client, ticket) per request and the most in flight."""
    seen: list[tuple[int, int]] = []
    flight = [0, 0]

    async def send(client: int, ticket: int) -> None:
        flight[0] += 1
        flight[1] = max(flight)
        seen.append((client, ticket))
        await asyncio.sleep(pause_s)
        flight[0] -= 1

    asyncio.run(loop.run(send))
    return seen, flight[1]


def test_a_total_is_shared_by_the_clients_free_first() -> None:
    seen, most = _drive(ClosedLoop(3, total=10), pause_s=0.001)
    assert sorted(t for _, t in seen) == list(range(10)) and most == 3
    assert {c for c, _ in seen} == {0, 1, 2}


def test_per_client_counts_and_tickets_are_unique() -> None:
    seen, most = _drive(ClosedLoop(4, per_client=5))
    assert [sum(c == i for c, _ in seen) for i in range(4)] == [5] * 4
    assert sorted(t for _, t in seen) == list(range(20)) and most <= 4


def test_a_duration_stops_new_requests_and_clients_ramp_in() -> None:
    loop = ClosedLoop(2, duration_s=0.2, ramp_s=0.1)
    seen, _ = _drive(loop, pause_s=0.02)
    # each client sends one request at a time for about 0.2 s (the second from 0.05 s on): about 10 + 8
    assert 8 <= len(seen) <= 22 and loop.active == 0
    with pytest.raises(ValueError, match="needs an end"):
        ClosedLoop(2)


def test_percentiles() -> None:
    assert percentiles([]) == {}
    assert percentiles(list(range(101))) == {"p50": 50.0, "p95": 95.0, "p99": 99.0}
    assert percentiles([0.001, 0.003], (50,), scale=1000) == {"p50": pytest.approx(2.0)}
