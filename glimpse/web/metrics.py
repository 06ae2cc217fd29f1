"""Per-app Prometheus metrics: the HTTP request counter and latency every service exports.

Each app gets its own CollectorRegistry (kept on ``app.state.metrics``), never the process-wide
default, so a test can build many apps in one process without duplicate-metric errors.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from fastapi import FastAPI

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

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count and time one answered request (``route``: the template, not the raw path)."""
        self.requests.labels(self.service, route, method, str(status)).inc()
        self.latency.labels(self.service, route, method).observe(seconds)

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


def _route_template(app: Any, scope: Scope) -> str:
    # The template ("/v1/items/{item_id}"), not the raw path, keeps label cardinality bounded.
    # FastAPI leaves the matched route in the scope; fall back to matching for the rest.
    route = scope.get("route")
    if route is not None and hasattr(route, "path"):
        return str(route.path)
    for candidate in app.router.routes:
        match, _ = candidate.matches(scope)
        if match == Match.FULL:
            return str(getattr(candidate, "path", scope.get("path", "")))
    return "<unmatched>"


class MetricsMiddleware:
    """Counts and times every HTTP request.

    A plain ASGI middleware rather than Starlette's BaseHTTPMiddleware: that one costs about a
    millisecond per request and wraps errors raised while the body is read, which would hide the
    413 of a body-size limit that sits inside it.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, router_app: Any) -> None:
        self.app = app
        self.metrics = metrics
        self.router_app = router_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_recording_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_recording_status)
        finally:
            self.metrics.observe(_route_template(self.router_app, scope),
                                 str(scope.get("method", "")), status,
                                 time.perf_counter() - start)


def install_metrics(app: FastAPI, metrics: ServiceMetrics) -> None:
    """Count and time every request of a FastAPI app, and serve ``GET /metrics`` in Prometheus
    text format (the Starlette services list /metrics among their operations instead)."""
    app.state.metrics = metrics
    app.add_middleware(MetricsMiddleware, metrics=metrics, router_app=app)

    @app.get("/metrics", include_in_schema=True, tags=["ops"], response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus text exposition of this service's metrics."""
        return metrics.render()
