"""Broken clients at the socket level, on a real server process: bodies cut short, connections
dropped before the request ends, streams abandoned at once. Each costs the server nothing lasting:
no 5xx, no stuck generation, and the next request is answered."""

from __future__ import annotations

import json
import socket
import time

import httpx

from tests.conftest import ServerProcess
from tests.test_metrics import scrape

BODY = b'{"prompt": "def fib(n):", "max_tokens": 40, "stream": true}'
# 0.5-1 s of work per request on the tiny model (16 samples x 110 tokens with top-5 logprobs): a request
# decoded whole takes HEAVY_ROWS rows of decode steps (its first token comes from the prefill); one whose
# client left is cancelled long before (the server counts the rows it decoded: slipstream_decoded_rows)
HEAVY_WORK = {"max_tokens": 110, "n": 16, "temperature": 1.0, "ignore_eos": True, "logprobs": 5}
HEAVY_ROWS = 16 * (110 - 1)


def _connect(server: ServerProcess) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    connection.settimeout(10)
    return connection


def _head(length: int) -> bytes:
    return (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def _server_errors(server: ServerProcess) -> float:
    return sum(
        v
        for (name, labels), v in scrape(server.url).items()
        if name == "slipstream_requests_total" and dict(labels)["status"].startswith("5")
    )


def _cancelled(server: ServerProcess) -> float:
    return sum(v for (name, _), v in scrape(server.url).items() if name == "slipstream_cancelled_requests_total")


def decoded_rows(server: ServerProcess) -> float:
    return sum(v for (name, _), v in scrape(server.url).items() if name == "slipstream_decoded_rows_total")


def wait_for_an_empty_batch(
    server: ServerProcess, cancelled_before: float, cancelled: int, decoded_before: float, decoded_at_leave: float | None = None
) -> None:
    """Until no row decodes and `cancelled` more requests are counted cancelled (a guard of 120 s against a
    hang, not a speed bound); then the rows decoded after the clients left (`decoded_at_leave`, default
    `decoded_before`) must be under half of what the heavy requests had left to decode: cancelled, not
    finished, on any machine's speed."""
    deadline = time.monotonic() + 120
    while _batch_rows(server) > 0 or _cancelled(server) < cancelled_before + cancelled:
        assert time.monotonic() < deadline, "the batch never emptied, or the requests were not counted cancelled"
        time.sleep(0.05)
    left_at = decoded_before if decoded_at_leave is None else decoded_at_leave
    left = cancelled * HEAVY_ROWS - (left_at - decoded_before)  # the work still to do when they left
    done = decoded_rows(server) - left_at
    assert done < left / 2, f"{done:.0f} rows decoded after the clients left, of {left:.0f} left: the cancelled requests ran on"


def _batch_rows(server: ServerProcess) -> float:
    rows = [v for (name, _), v in scrape(server.url).items() if name == "slipstream_batch_rows"]
    assert rows, "slipstream_batch_rows is not in /metrics"
    return sum(rows)


def test_cut_bodies_and_dropped_connections_cost_nothing(tiny_server: ServerProcess) -> None:
    errors_before = _server_errors(tiny_server)
    # a body shorter than its Content-Length, then the client stops sending: the server gives up on it
    half = _connect(tiny_server)
    half.sendall(_head(len(BODY)) + BODY[:20])
    half.shutdown(socket.SHUT_WR)
    started = time.monotonic()
    answer = half.recv(65536)  # closed, or a 4xx: not hung, not a 5xx
    assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:200]
    assert time.monotonic() - started < 10
    half.close()
    # the connection dropped in the middle of the body, and right after the headers
    for sent in (_head(len(BODY)) + BODY[:30], _head(len(BODY))):
        dropped = _connect(tiny_server)
        dropped.sendall(sent)
        dropped.close()
    # streaming requests abandoned as soon as they are sent: their generations are cancelled, not left running
    heavy = json.dumps({"prompt": "def fib(n):", **HEAVY_WORK, "stream": True}).encode()
    cancelled, decoded = _cancelled(tiny_server), decoded_rows(tiny_server)
    for _ in range(12):
        gone = _connect(tiny_server)
        gone.sendall(_head(len(heavy)) + heavy)
        gone.close()
    wait_for_an_empty_batch(tiny_server, cancelled, 12, decoded)
    # and the server answers the next client in full
    answer = httpx.post(f"{tiny_server.url}/v1/completions", json={"prompt": "def fib(n):", "max_tokens": 4}, timeout=60)
    assert answer.status_code == 200 and answer.json()["choices"][0]["finish_reason"] in ("length", "stop")
    assert _server_errors(tiny_server) == errors_before
