"""The plain Starlette app of an internal service (the encoder, the index): its routes and its
OpenAPI document from one list of operations, the error body for every failure, and the HTTP
metrics, so each service's main.py holds only its lifespan and its state."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from glimpse.web.handlers import EXCEPTION_HANDLERS
from glimpse.web.metrics import MetricsMiddleware, ServiceMetrics
from glimpse.web.openapi import Operation, openapi_document, routes
from glimpse.web.responses import OrjsonResponse

Lifespan = Callable[[Starlette], AbstractAsyncContextManager[None]]


class ServiceApp(Starlette):
    """``operations``' routes and ``GET /openapi.json``; ``state.metrics`` counts and times
    every request under ``service``'s name. ``openapi()`` is the document (ci/export_openapi.py
    asks for it)."""

    def __init__(
        self,
        service: str,
        operations: Sequence[Operation],
        lifespan: Lifespan,
        *,
        title: str,
        summary: str,
        version: str = "0.1.0",
    ) -> None:
        self.title, self.summary, self.version = title, summary, version
        self.operations = tuple(operations)
        openapi_json = Route("/openapi.json", self._openapi_json, methods=["GET"])
        super().__init__(
            routes=[*routes(operations), openapi_json],
            exception_handlers=dict(EXCEPTION_HANDLERS),
            lifespan=lifespan,
        )
        self.state.metrics = ServiceMetrics(service)
        self.add_middleware(MetricsMiddleware, metrics=self.state.metrics, router_app=self)

    def openapi(self) -> dict[str, Any]:
        return openapi_document(self.title, self.version, self.summary, self.operations)

    async def _openapi_json(self, request: Request) -> Response:
        return OrjsonResponse(self.openapi())
