"""SIGTERM with generations in flight: a short one finishes, a long one is ended cleanly (an error event,
then [DONE]) before the grace period runs out, and the process exits by itself."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import TINY, ServerProcess

GRACE_S = 1.2  # generations still going 0.2 s after the signal are ended (the last second is for endings)


def stream_events(url: str, body: dict, started: threading.Event, out: list) -> None:
    with httpx.stream("POST", f"{url}/v1/completions", json=body | {"stream": True}, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                out.append(line[6:])
                started.set()


def test_sigterm_finishes_short_streams_and_ends_long_ones_cleanly(tiny_repo: Path) -> None:
    long_job = {
        "prompt": ["def f(x):", "class A:"],
        "max_tokens": 110,
        "n": 16,
        "temperature": 1.0,
        "ignore_eos": True,
        "logprobs": 5,
    }  # seconds of work for this model, past the grace period
    short_job = {"prompt": "x = ", "max_tokens": 4}
    server = ServerProcess(tiny_repo, [TINY], env={"SLIPSTREAM_SHUTDOWN_GRACE_S": str(GRACE_S)})
    with server:
        long_events: list[str] = []
        short_events: list[str] = []
        long_started, short_started = threading.Event(), threading.Event()
        threads = [
            threading.Thread(target=stream_events, args=(server.url, long_job, long_started, long_events)),
            threading.Thread(target=stream_events, args=(server.url, short_job, short_started, short_events)),
        ]
        threads[0].start()
        assert long_started.wait(30)
        threads[1].start()
        assert short_started.wait(30)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        ended = time.monotonic() - signalled
        # uvicorn re-raises the signal once it has shut down: the conventional status of a SIGTERM'd process
        assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)
        assert "Finished server process" in server.log.read_text()
    assert short_events[-1] == "[DONE]" and not any("error" in e for e in short_events)
    assert long_events[-1] == "[DONE]", long_events[-3:]
    error = json.loads(long_events[-2])["error"]
    assert error["type"] == "server_shutting_down" and "shutdown_grace_s" in error["message"]
    assert ended < GRACE_S + 1.5  # ended inside the grace period, not cut after it
