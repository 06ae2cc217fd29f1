"""Per-app Prometheus metrics and the shared service plumbing every Glimpse app installs.

Each app gets its own CollectorRegistry (kept on ``app.state.metrics``), never the process-wide
default, so a test can build many apps in one process without duplicate-metric errors.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from starlette.routing import Match

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)


class ServiceMetrics:
    """The HTTP metrics every service exports; services register more on ``registry``."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "glimpse_http_requests_total",
            "HTTP requests by route template, method and status.",
            ["service", "route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "glimpse_http_request_seconds",
            "HTTP request latency by route template and method.",
            ["service", "route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


def _route_template(request: Request) -> str:
    # The template ("/v1/items/{item_id}"), not the raw path, keeps label cardinality bounded.
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match == Match.FULL:
            return str(getattr(route, "path", request.url.path))
    return "<unmatched>"


def install_metrics(app: FastAPI, metrics: ServiceMetrics) -> None:
    """Count and time every request, and serve ``GET /metrics`` in Prometheus text format."""
    app.state.metrics = metrics

    @app.middleware("http")
    async def _record(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = _route_template(request)
            metrics.requests.labels(metrics.service, route, request.method, str(status)).inc()
            metrics.latency.labels(metrics.service, route, request.method).observe(
                time.perf_counter() - start
            )

    @app.get("/metrics", include_in_schema=True, tags=["ops"], response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus text exposition of this service's metrics."""
        return metrics.render()
