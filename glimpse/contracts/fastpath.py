"""A front door for a FastAPI app that answers its few hot routes (the searches) itself.

Every request through a FastAPI app crosses about ten ASGI layers (server errors, telemetry,
FastAPI's body limit, our metrics and body limit, exception middleware, exit stacks, the
router's linear match over every route, the endpoint wrapper). Measured on this project's
2-core machine with uvicorn: a trivial route costs 233 µs of CPU per request through the app,
103 µs when answered in front of it. A text search crosses three services, so that is paid
three times per search.

:class:`FastRoutes` wraps the app. A request whose (method, path) is one of ``routes`` goes
straight to its endpoint, an ``async (Request) -> Response`` function, which must be the very
function the app declares for that route (so OpenAPI documents it and the app answers it the
same way when reached without the front door). What the app's layers do for every request is
done here too: the error bodies (GlimpseError, validation errors, and a logged 500 for anything
else), the request metrics, and the body limit. Everything else, lifespan included, goes to the
app; attributes (``state``, ``routes``, ``openapi``) are the app's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Scope, Send

from glimpse.contracts.errors import (
    ErrorType,
    GlimpseError,
    describe_validation_errors,
    error_response,
    http_error_response,
)

log = logging.getLogger("glimpse.fastpath")

Endpoint = Callable[[Request], Awaitable[Response]]


class FastRoutes:
    """``app`` with ``routes`` ((method, path) -> endpoint) answered in front of its stack.

    ``limit_for(path)``, when given, is the largest body a route accepts: a declared
    Content-Length over it is refused before anything is read, and a body that grows past it
    while being read (chunked) is cut off there, with 413 and ``Connection: close``.
    """

    def __init__(
        self,
        app: FastAPI,
        routes: Mapping[tuple[str, str], Endpoint],
        limit_for: Callable[[str], int] | None = None,
    ) -> None:
        self.app = app
        self.endpoints = dict(routes)
        self.limit_for = limit_for
        declared = {
            (method, path)
            for path, route in _flatten(app.routes)
            for method in getattr(route, "methods", None) or ()
        }
        missing = set(self.endpoints) - declared
        if missing:
            raise ValueError(f"fast routes the app does not declare: {sorted(missing)}")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            endpoint = self.endpoints.get((scope["method"], scope["path"]))
            if endpoint is not None:
                await self._serve(endpoint, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _serve(self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        scope["app"] = self.app  # what request.app is inside the app
        path = scope["path"]
        limit = self.limit_for(path) if self.limit_for is not None else None
        response: Response
        try:
            if limit is not None:
                receive = _limited(receive, _declared_length(scope), limit)
            response = await endpoint(Request(scope, receive))
        except GlimpseError as exc:
            response = exc.response()
        except RequestValidationError as exc:
            message, details = describe_validation_errors(list(exc.errors()))
            response = error_response(ErrorType.validation_error, message, details)
        except StarletteHTTPException as exc:  # e.g. a malformed multipart body (400)
            response = http_error_response(scope["method"], path, exc)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], path)
            response = error_response(
                ErrorType.internal_error,
                f"Internal error while handling {scope['method']} {path}; see the service log.",
            )
        try:
            await response(scope, receive, send)
        finally:
            metrics = getattr(self.app.state, "metrics", None)
            if metrics is not None:
                metrics.observe(path, scope["method"], response.status_code,
                                time.perf_counter() - started)


def _flatten(routes: list[Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(full path, route) of every route, inside included routers too."""
    out: list[tuple[str, Any]] = []
    for route in routes:
        inner = getattr(route, "original_router", None)  # FastAPI's included-router wrapper
        if inner is not None:
            context = getattr(route, "include_context", None)
            out += _flatten(inner.routes, prefix + str(getattr(context, "prefix", "") or ""))
        else:
            out.append((prefix + str(getattr(route, "path", "")), route))
    return out


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _too_large(limit: int) -> GlimpseError:
    return GlimpseError(
        ErrorType.payload_too_large,
        f"The request body is larger than the limit of {limit} bytes.",
        # The client may still be sending; tell it the connection will not be reused.
        headers={"Connection": "close"},
    )


def _limited(receive: Receive, declared: int | None, limit: int) -> Receive:
    if declared is not None and declared > limit:
        raise _too_large(limit)
    return counting_receive(receive, limit, lambda: _too_large(limit))


def counting_receive(
    receive: Receive, limit: int, too_large: Callable[[], Exception]
) -> Receive:
    """``receive`` that raises ``too_large()`` once the request's body passes ``limit`` bytes
    (counted as it arrives, so a chunked body without Content-Length is cut off too)."""
    received = 0

    async def counted() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise too_large()
        return message

    return counted
