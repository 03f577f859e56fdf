"""The server's Prometheus metrics, in a registry of each app's own (prometheus_client's global one would clash
when one process runs two servers: a test, an embedding application).

    fastpix_requests_total{code}           translate requests answered, by HTTP status
    fastpix_queue_depth                    requests waiting for the model worker
    fastpix_batch_size                     requests per forward pass (histogram)
    fastpix_request_latency_seconds        from a translate request's head to its answer (histogram)
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, queue_depth):
        """queue_depth: a function giving the number of requests waiting, read at each scrape."""
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "fastpix_requests", "Translate requests answered, by HTTP status.", ["code"], registry=self.registry
        )
        Gauge("fastpix_queue_depth", "Requests waiting for the model worker.", registry=self.registry).set_function(
            queue_depth
        )
        self.batch_size = Histogram(
            "fastpix_batch_size", "Requests per forward pass.", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.latency = Histogram(
            "fastpix_request_latency_seconds",
            "Time from a translate request's head to its answer.",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )

    def request(self, status: int, seconds: float):
        self.requests.labels(code=str(status)).inc()
        self.latency.observe(seconds)

    def batch(self, size: int):
        self.batch_size.observe(size)

    def mean_batch_size(self) -> float:
        """Requests per forward pass so far, on average (0 before the first)."""
        count = self.registry.get_sample_value("fastpix_batch_size_count") or 0
        return (self.registry.get_sample_value("fastpix_batch_size_sum") or 0) / count if count else 0.0

    def render(self) -> bytes:
        return generate_latest(self.registry)


class CountRequests:
    """ASGI middleware: every answer to `method path` (status and latency) into `metrics`, including the 500 of an
    exception that escapes the app (ServerErrorMiddleware, outside this one, answers it)."""

    def __init__(self, app, metrics: ServerMetrics, method: str, path: str):
        self.app, self.metrics, self.method, self.path = app, metrics, method, path

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != self.method or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def send_noting_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            self.metrics.request(status, time.perf_counter() - started)
