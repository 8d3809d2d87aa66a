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
from typing import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.backends.base import SERVING, Backend

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/copilot_internal/v2/token", "/health", "/ready",
          "/metrics", "/docs", "/openapi.json")
_ENGINE_ROUTE = "/v1/engines/{engine}/completions"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
access_log = logging.getLogger("slipstream.access")
_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def route_of(path: str) -> str:
    if path in ROUTES:
        return path
    if path.startswith("/v1/engines/") and path.endswith("/completions"):
        return _ENGINE_ROUTE
    return "other"


class Metrics:
    def __init__(self, backend: Backend) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("slipstream_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.duration = Histogram("slipstream_request_duration_seconds", "From request to the end of its response "
                                  "(a stream's last event)", ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("slipstream_time_to_first_token_seconds", "From generation start to the first text",
                              ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.gap = Histogram("slipstream_inter_token_seconds", "Between successive text events of one choice",
                             ["model"], buckets=_GAP_BUCKETS, registry=r)
        self.completion_tokens = Counter("slipstream_completion_tokens", "Tokens generated", ["model"], registry=r)
        self.prompt_tokens = Counter("slipstream_prompt_tokens", "Prompt tokens processed", ["model"], registry=r)
        self.cancelled = Counter("slipstream_cancelled_requests", "Generations ended early: the client went away or "
                                 "the request ran past its time limit", ["model"], registry=r)
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

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        rows = GaugeMetricFamily("slipstream_batch_rows", "Rows decoding now (0 when idle)", labels=["model"])
        waiting = GaugeMetricFamily("slipstream_queue_depth", "Requests waiting to join the batch", labels=["model"])
        ready = GaugeMetricFamily("slipstream_model_ready", "1 when the model takes requests", labels=["model"])
        cache = {
            "lookups": CounterMetricFamily("slipstream_prefix_cache_lookups", "Prompts looked up in the prefix cache",
                                           labels=["model"]),
            "hits": CounterMetricFamily("slipstream_prefix_cache_hits", "Lookups that reused at least one token",
                                        labels=["model"]),
            "tokens_reused": CounterMetricFamily("slipstream_prefix_cache_reused_tokens",
                                                 "Prompt tokens reused instead of prefilled", labels=["model"]),
            "evictions": CounterMetricFamily("slipstream_prefix_cache_evictions",
                                             "Stored runs dropped to stay under prefix_cache_mb", labels=["model"]),
        }
        held = GaugeMetricFamily("slipstream_prefix_cache_bytes", "Bytes of keys and values the prefix cache holds",
                                 labels=["model"])
        for name in self._backend.names:
            stats = self._backend.cache_stats(name)
            if stats is not None:
                for field, family in cache.items():
                    family.add_metric([name], getattr(stats, field))
                held.add_metric([name], stats.bytes)
            load = self._backend.batch_load(name)
            if load is not None:
                rows.add_metric([name], load[0])
                waiting.add_metric([name], load[1])
            ready.add_metric([name], 1.0 if self._backend.status(name) in SERVING else 0.0)
        yield from (rows, waiting, ready, *cache.values(), held)


class MetricsMiddleware:
    """Counts every response by route and status, times it to its last byte, and writes its access-log
    line (one JSON object: route, status, duration, client, and what the handler put in
    scope["state"]["access"]: model, tokens, prompt only when log_prompts is on); outermost, so that a
    request refused by the key check or by a limit is counted and logged too."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = route_of(scope["path"])
        started = time.perf_counter()
        status = [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.duration.labels(route).observe(elapsed)
            client = scope.get("client")
            line = {"method": scope.get("method"), "route": route, "status": status[0],
                    "duration_ms": round(1000 * elapsed, 1), "client": client[0] if client else None,
                    **scope.get("state", {}).get("access", {})}
            access_log.info(json.dumps(line))
