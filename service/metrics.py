"""Prometheus metrics of the API, on a registry per app (so several apps can live in one test process).

HTTP metrics are labelled by the route *template* (``/v1/jobs/{job_id}``), never the raw path, to keep label
cardinality bounded. The queue-depth and worker gauges are refreshed when /metrics is scraped rather than by a
background loop, so they cost nothing between scrapes.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The method label comes from the client: anything outside this set is counted as "other", otherwise a
# client sending made-up methods (FOO1, FOO2, ...) would create a new time series per request.
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "diffbir_http_requests_total",
            "HTTP requests",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "diffbir_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.jobs_submitted = Counter(
            "diffbir_jobs_submitted_total", "Jobs accepted and enqueued", ["task"], registry=self.registry
        )
        self.rejected = Counter(
            "diffbir_submissions_rejected_total",
            "Submissions refused before enqueueing",
            ["reason"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "diffbir_queue_depth", "Jobs waiting in the broker queue", registry=self.registry
        )
        # From the heartbeat registry, so alerts see what /readyz sees (a worker's own /metrics answers
        # while it is still loading its model, before it takes jobs).
        self.workers_ready = Gauge(
            "diffbir_workers_ready",
            "Workers whose last heartbeat is younger than worker_heartbeat_max_age_s",
            registry=self.registry,
        )
        self.workers_stale = Gauge(
            "diffbir_workers_stale",
            "Workers still registered whose heartbeat stopped (died without deregistering; "
            "forgotten an hour after their last beat)",
            registry=self.registry,
        )


class MetricsMiddleware:
    """Pure ASGI middleware (no BaseHTTPMiddleware: it would add a task per request on the hot path)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            method = method if method in _KNOWN_METHODS else "other"
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - start)
