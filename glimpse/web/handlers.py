"""Exception handlers of every Glimpse service: each failure answers the error body
(``{"error", "error_type", "details"}``, glimpse/contracts/errors.py), written by orjson.

The plain Starlette services pass :data:`EXCEPTION_HANDLERS` to their app; the FastAPI gateway
calls :func:`install_error_handlers`, which adds FastAPI's request validation errors.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from glimpse.contracts.errors import ErrorType, GlimpseError, invalid_request
from glimpse.web.responses import OrjsonResponse

if TYPE_CHECKING:
    from fastapi import FastAPI

logger = logging.getLogger("glimpse.web")

# Starlette raises HTTPException with a bare status; this names the type we answer with.
_TYPE_OF_STATUS: dict[int, ErrorType] = {
    400: ErrorType.bad_request,
    401: ErrorType.unauthorized,
    403: ErrorType.forbidden,
    404: ErrorType.not_found,
    405: ErrorType.method_not_allowed,
    408: ErrorType.request_timeout,
    409: ErrorType.conflict,
    413: ErrorType.payload_too_large,
    415: ErrorType.unsupported_media_type,
    422: ErrorType.validation_error,
    429: ErrorType.overloaded,
    502: ErrorType.upstream_error,
    503: ErrorType.upstream_unavailable,
    504: ErrorType.upstream_timeout,
    507: ErrorType.insufficient_storage,
}


def error_answer(error: GlimpseError) -> Response:
    """The response of ``error``, for code that answers without raising (middleware)."""
    return OrjsonResponse(error.body(), status_code=error.status, headers=error.headers)


def http_error_answer(method: str, path: str, exc: HTTPException) -> Response:
    """The error body for an HTTPException (Starlette's 404/405, a malformed form's 400)."""
    error_type = _TYPE_OF_STATUS.get(exc.status_code, ErrorType.bad_request)
    if exc.status_code >= 500 and exc.status_code not in _TYPE_OF_STATUS:
        error_type = ErrorType.internal_error
    detail = exc.detail
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"No route matches {method} {path}."
    elif exc.status_code == 405:
        detail = f"Method {method} is not allowed on {path}."
    message = detail if isinstance(detail, str) else "The request failed."
    return error_answer(GlimpseError(error_type, message, status=exc.status_code,
                                     headers=exc.headers))


async def _glimpse_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GlimpseError)
    return error_answer(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return http_error_answer(request.method, request.url.path, exc)


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


def install_error_handlers(app: FastAPI) -> None:
    """The same handlers on a FastAPI app, and a 422 naming each field of its validation errors."""
    # Imported here so that the Starlette services, which use this module, never load FastAPI.
    from fastapi.exceptions import RequestValidationError

    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_answer(invalid_request(exc.errors()))

    for kind, handler in EXCEPTION_HANDLERS.items():
        app.add_exception_handler(kind, handler)
    app.add_exception_handler(RequestValidationError, invalid)
