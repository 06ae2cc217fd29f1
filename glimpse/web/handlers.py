"""Exception handlers of the plain Starlette services: every failure answers the error body
(``{"error", "error_type", "details"}``), written by orjson."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from glimpse.contracts.errors import ErrorType, GlimpseError, http_error_response
from glimpse.web.responses import OrjsonResponse

logger = logging.getLogger("glimpse.web")


def error_answer(error: GlimpseError) -> Response:
    return OrjsonResponse(error.body(), status_code=error.status, headers=error.headers)


async def _glimpse_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GlimpseError)
    return error_answer(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # Starlette's own: no route (404), wrong method (405)
    # The sentence and error type the shared handler gives them, written by orjson.
    shared = http_error_response(request.method, request.url.path, exc)
    body = orjson.loads(shared.body)
    return error_answer(GlimpseError(body["error_type"], body["error"],
                                     status=shared.status_code, headers=exc.headers))


async def _unhandled(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_answer(GlimpseError(
        ErrorType.internal_error,
        f"Internal error while handling {request.method} {request.url.path}; see the service log.",
    ))


#: ``Starlette(exception_handlers=...)`` for a service answering the error body.
EXCEPTION_HANDLERS: Mapping[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    GlimpseError: _glimpse_error, HTTPException: _http_error, Exception: _unhandled,
}
