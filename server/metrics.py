"""Prometheus metrics (GET /metrics): requests by route and status, their duration, time to first
token and inter-token gaps per model, tokens in and out, cancellations, and, read at scrape time from
the scheduler, the rows decoding and the requests waiting per model, and whether each model is ready.

A registry per app (not the library's global one), so that several apps in one process do not collide.
Routes are labelled by their template, never by the raw path, which a client could fill with anything.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.backends.base import SERVING, Backend, Placement
from server.engine import DRAFTERS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
access_log = logging.getLogger("slipstream.access")
_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def route_of(scope: Scope, routes: Sequence[Route]) -> str:
    """The template of the route that served a request (`/v1/engines/{engine}/completions`): routing
    leaves it in the scope; a request refused before routing (a missing key) is matched here."""
    route = scope.get("route")
    if isinstance(route, Route):
        return route.path
    for candidate in routes:
        if candidate.matches(scope)[0] is not Match.NONE:
            return candidate.path
    return "other"


class Metrics:
    def __init__(self, backend: Backend) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("slipstream_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.duration = Histogram(
            "slipstream_request_duration_seconds",
            "From request to the end of its response (a stream's last event)",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "slipstream_time_to_first_token_seconds",
            "From generation start to the first text",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.gap = Histogram(
            "slipstream_inter_token_seconds", "Between successive text events of one choice", ["model"], buckets=_GAP_BUCKETS, registry=r
        )
        self.completion_tokens = Counter("slipstream_completion_tokens", "Tokens generated", ["model"], registry=r)
        self.prompt_tokens = Counter("slipstream_prompt_tokens", "Prompt tokens processed", ["model"], registry=r)
        self.cancelled = Counter(
            "slipstream_cancelled_requests",
            "Generations ended early: the client went away or the request ran past its time limit",
            ["model"],
            registry=r,
        )
        r.register(_BackendCollector(backend))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class GenerationClock:
    """Times one generation's events for the metrics: the first text, then the gaps per choice."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self._metrics, self._model = metrics, model
        self._started = time.perf_counter()
        self._first = True
        self._last: dict[int, float] = {}

    def text(self, index: int) -> None:
        now = time.perf_counter()
        if self._first:
            self._metrics.ttft.labels(self._model).observe(now - self._started)
            self._first = False
        if index in self._last:
            self._metrics.gap.labels(self._model).observe(now - self._last[index])
        self._last[index] = now

    def usage(self, prompt_tokens: int, completion_tokens: int) -> None:
        self._metrics.prompt_tokens.labels(self._model).inc(prompt_tokens)
        self._metrics.completion_tokens.labels(self._model).inc(completion_tokens)

    def cancelled(self) -> None:
        self._metrics.cancelled.labels(self._model).inc()


class _BackendCollector(Collector):
    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    def collect(self) -> Iterable[Metric]:
        rows = GaugeMetricFamily("slipstream_batch_rows", "Rows decoding now (0 when idle)", labels=["model"])
        waiting = GaugeMetricFamily("slipstream_queue_depth", "Requests waiting to join the batch", labels=["model"])
        decoded = CounterMetricFamily(
            "slipstream_decoded_rows", "Rows of every decode step (a token each), cancelled ones included", labels=["model"]
        )
        drafted = CounterMetricFamily("slipstream_draft_tokens", "Draft tokens a speculative step verified", labels=["model", "drafter"])
        accepted = CounterMetricFamily(
            "slipstream_accepted_draft_tokens", "Draft tokens the rows' own decisions confirmed", labels=["model", "drafter"]
        )
        ready = GaugeMetricFamily("slipstream_model_ready", "1 when the model takes requests", labels=["model"])
        cache = {
            "lookups": CounterMetricFamily("slipstream_prefix_cache_lookups", "Prompts looked up in the prefix cache", labels=["model"]),
            "hits": CounterMetricFamily("slipstream_prefix_cache_hits", "Lookups that reused at least one token", labels=["model"]),
            "tokens_reused": CounterMetricFamily(
                "slipstream_prefix_cache_reused_tokens", "Prompt tokens reused instead of prefilled", labels=["model"]
            ),
            "evictions": CounterMetricFamily(
                "slipstream_prefix_cache_evictions", "Stored runs dropped to stay under prefix_cache_mb", labels=["model"]
            ),
        }
        held = GaugeMetricFamily("slipstream_prefix_cache_bytes", "Bytes of keys and values the prefix cache holds", labels=["model"])
        gateway = _gateway_families()
        for name in self._backend.names:
            stats = self._backend.cache_stats(name)
            if stats is not None:
                for field, family in cache.items():
                    family.add_metric([name], getattr(stats, field))
                held.add_metric([name], stats.bytes)
            load = self._backend.batch_load(name)
            if load is not None:
                rows.add_metric([name], load.rows)
                waiting.add_metric([name], load.waiting)
                decoded.add_metric([name], load.rows_decoded)
                for drafter in DRAFTERS:
                    drafted.add_metric([name, drafter], load.drafted.get(drafter, 0))
                    accepted.add_metric([name, drafter], load.accepted.get(drafter, 0))
                gateway["waiting"].add_metric([name], load.waiting)
                gateway["running"].add_metric([name], load.running)
                gateway["kv"].add_metric([name], min(1.0, load.rows / max(load.max_rows, 1)))
            ready.add_metric([name], 1.0 if self._backend.status(name) in SERVING else 0.0)
        yield from (rows, waiting, decoded, drafted, accepted, ready, *cache.values(), held, *gateway.values())
        placement = self._backend.placement()
        if placement is not None:
            yield from _placement_families(placement)


def _gateway_families() -> dict[str, GaugeMetricFamily]:
    """The gauges Kubernetes inference gateways route on, under the names their endpoint pickers read by
    default (the Gateway API Inference Extension, llm-d, KServe: vLLM's), so a pool of slipstream pods
    needs no engineConfigs of its own. KV-cache use is the batch's rows over max_batch_rows: our KV
    cache is sized per row, so the rows taken are the share of it in use."""
    return {
        "waiting": GaugeMetricFamily("vllm:num_requests_waiting", "Requests waiting to join the batch", labels=["model_name"]),
        "running": GaugeMetricFamily("vllm:num_requests_running", "Requests whose rows are decoding", labels=["model_name"]),
        "kv": GaugeMetricFamily("vllm:kv_cache_usage_perc", "Share of the batch's KV-cache rows in use, 0-1", labels=["model_name"]),
    }


def _placement_families(placement: Placement) -> Iterable[Metric]:
    """The engine replicas (Ray Serve): by state, the requests each took, the requests resumed."""
    replicas = GaugeMetricFamily("slipstream_engine_replicas", "Engine replicas by state (Ray Serve)", labels=["state"])
    for state, count in placement.replicas.items():
        replicas.add_metric([state], count)
    routed = CounterMetricFamily("slipstream_replica_requests", "Requests each engine replica took", labels=["replica"])
    for replica, count in placement.routed.items():
        routed.add_metric([replica], count)
    resumed = CounterMetricFamily("slipstream_failovers", "Requests resumed on another replica after theirs died")
    resumed.add_metric([], placement.resumed)
    yield from (replicas, routed, resumed)


class MetricsMiddleware:
    """Counts every response by route and status, times it to its last byte, and writes its access-log
    line (one JSON object: route, status, duration, client, request id, the path of a request no route
    matched, and what the handler put in scope["state"]["access"]: model, tokens, prompt only when
    log_prompts is on); outermost, so that a request refused by the key check or by a limit is counted
    and logged too. Every response carries its request id as X-Request-Id and as X-GitHub-Request-Id:
    the Copilot agent refuses any answer without the latter ("does not appear to originate from GitHub")."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Sequence[Route]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]
        request_id = uuid.uuid4().hex
        id_headers = [(b"x-request-id", request_id.encode()), (b"x-github-request-id", request_id.encode())]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), *id_headers]}
            await send(message)

        # the handler's to read (request.state.request_id): a failure logged later names the request
        scope.setdefault("state", {})["request_id"] = request_id
        try:
            await self.app(scope, receive, sending)
        finally:
            elapsed = time.perf_counter() - started
            route = route_of(scope, self.routes)
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.duration.labels(route).observe(elapsed)
            client = scope.get("client")
            line = {
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "method": scope.get("method"),
                "route": route,
                "status": status[0],
                "duration_ms": round(1000 * elapsed, 1),
                "client": client[0] if client else None,
                "request_id": request_id,
                **scope.get("state", {}).get("access", {}),
            }
            if route == "other":  # what a plugin asked for that nothing serves (in the log, never a label)
                line["path"] = scope["path"][:200]
            access_log.info(json.dumps(line))
