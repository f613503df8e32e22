"""Prometheus metrics: requests, latency, time to first token, queue depth and tokens.

Each app has its own registry (two apps in one process do not share counters). Labels
never carry tenants, users or keys: the metrics endpoint is not authenticated.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class ServerMetrics:
    """The server's metrics and the registry they live in."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "curp_http_requests",
            "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "curp_http_request_duration_seconds",
            "Time from a request's arrival to the end of its response (a stream's last event).",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.first_token = Histogram(
            "curp_time_to_first_token_seconds",
            "Time from a chat request's arrival to its first generated chunk.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "curp_tokens",
            "Tokens processed: prompt (text and soft tokens) and completion.",
            ["kind"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "curp_chat_requests_in_flight",
            "Chat requests admitted and not finished (preparing, queued or generating).",
            registry=self.registry,
        )
        self.queued = Gauge(
            "curp_generation_queue_depth",
            "Requests waiting for a generation slot.",
            registry=self.registry,
        )
        self.generating = Gauge(
            "curp_generations_active",
            "Requests holding a generation slot.",
            registry=self.registry,
        )

    def watch_scheduler(self, queued: Callable[[], float], active: Callable[[], float]) -> None:
        """Read the queue depth and active generations when metrics are scraped."""
        self.queued.set_function(queued)
        self.generating.set_function(active)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """ASGI middleware: counts each response by its route's template (not the raw path,
    which holds user ids) and times it to its last byte."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
