"""GET /metrics on a real server: Prometheus text that counts what the requests did."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TINY

TIMEOUT = 60


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{url}/metrics", timeout=TIMEOUT).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_requests_tokens_latency_and_cancellations(tiny_server) -> None:
    url = tiny_server.url
    before = scrape(url)
    ok = httpx.post(
        f"{url}/v1/completions", json={"prompt": "def f(x):", "max_tokens": 6, "n": 2, "temperature": 0.8}, timeout=TIMEOUT
    ).json()
    bad = httpx.post(f"{url}/v1/completions", json={"prompt": "x", "max_tokens": -1}, timeout=TIMEOUT)
    assert bad.status_code == 400
    copilot = httpx.post(f"{url}/v1/engines/codegen/completions", json={"prompt": "x = ", "max_tokens": 3, "stream": True}, timeout=TIMEOUT)
    assert copilot.status_code == 200
    # a client that leaves mid-stream: its generation is cancelled and counted
    with httpx.stream(
        "POST", f"{url}/v1/completions", json={"prompt": "def g():", "max_tokens": 100, "stream": True, "ignore_eos": True}, timeout=TIMEOUT
    ) as stream:
        next(stream.iter_lines())
    after = scrape(url)
    for _ in range(50):  # the cancellation is counted when the server notices the closed connection
        cancelled = "slipstream_cancelled_requests_total"
        if value(after, cancelled, model=TINY) > value(before, cancelled, model=TINY):
            break
        httpx.get(f"{url}/health", timeout=TIMEOUT)
        after = scrape(url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("slipstream_requests_total", route="/v1/completions", status="200") == 2
    assert delta("slipstream_requests_total", route="/v1/completions", status="400") == 1
    assert delta("slipstream_requests_total", route="/v1/engines/{engine}/completions", status="200") == 1
    assert delta("slipstream_cancelled_requests_total", model=TINY) == 1
    assert delta("slipstream_completion_tokens_total", model=TINY) >= ok["usage"]["completion_tokens"] + 1
    assert delta("slipstream_prompt_tokens_total", model=TINY) >= ok["usage"]["prompt_tokens"]
    assert delta("slipstream_time_to_first_token_seconds_count", model=TINY) == 3
    assert delta("slipstream_inter_token_seconds_count", model=TINY) >= 2
    assert delta("slipstream_request_duration_seconds_count", route="/v1/completions") == 3
    assert value(after, "slipstream_model_ready", model=TINY) == 1.0
    assert value(after, "slipstream_queue_depth", model=TINY) == 0.0
    assert ("slipstream_batch_rows", (("model", TINY),)) in after
    # a path nobody routes is one label, not one per path
    httpx.get(f"{url}/no/such/{'x' * 20}", timeout=TIMEOUT)
    assert value(scrape(url), "slipstream_requests_total", route="other", status="404") >= 1


def completion_lines(server, at_least: int) -> list[dict]:
    """The server's access-log lines of generation requests, once there are `at_least`: a line is written
    after its response has gone out, so the client may read its answer before the line is there."""
    deadline = time.monotonic() + 10
    while True:
        lines = [line for line in server.access_log() if "completions" in line.get("route", "")]
        if len(lines) >= at_least or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_access_log_lines_without_prompt_text_unless_asked(tiny_server, tiny_repo) -> None:
    from tests.conftest import ServerProcess

    secret = "def secret_function_name_42():"
    before = len(completion_lines(tiny_server, 0))
    response = httpx.post(f"{tiny_server.url}/v1/completions", json={"prompt": secret, "max_tokens": 3}, timeout=TIMEOUT)
    done = response.json()
    last = completion_lines(tiny_server, before + 1)[-1]
    assert last["status"] == 200 and last["model"] == TINY and last["method"] == "POST" and last["duration_ms"] > 0
    assert last["request_id"] == response.headers["x-request-id"] and last["time"].endswith("+00:00")
    assert last["prompt_tokens"] == done["usage"]["prompt_tokens"] and last["completion_tokens"] == 3
    assert secret not in tiny_server.log.read_text()
    with ServerProcess(tiny_repo, [TINY], env={"SLIPSTREAM_LOG_PROMPTS": "true"}) as server:
        httpx.post(f"{server.url}/v1/completions", json={"prompt": secret, "max_tokens": 2}, timeout=TIMEOUT)
        refused = httpx.post(f"{server.url}/v1/completions", content=b"{not json", timeout=TIMEOUT)
        logged = completion_lines(server, 2)
    assert refused.status_code == 400
    assert [line.get("prompt") for line in logged][-2:] == [secret, None]
    assert logged[-2]["completions"] and isinstance(logged[-2]["completions"][0], str)  # the generated text too
    assert logged[-1]["status"] == 400  # a refused request is logged too
    with ServerProcess(tiny_repo, [TINY], env={"SLIPSTREAM_LOG_LEVEL": "warning"}) as quiet:
        httpx.post(f"{quiet.url}/v1/completions", json={"prompt": secret, "max_tokens": 2}, timeout=TIMEOUT)
        time.sleep(0.5)
        assert quiet.access_log() == [] and "INFO" not in quiet.log.read_text()
