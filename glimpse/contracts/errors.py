"""The one error body and the one table from error type to status.

Every non-2xx answer of every Glimpse service has the body
``{"error": "<human sentence>", "error_type": "<snake_case>", "details": ...}``.
A service raises :class:`GlimpseError`; the handlers in glimpse/web/handlers.py turn it, and
every framework error, into that body.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Any

from pydantic import BaseModel, Field


class ErrorType(str, Enum):
    """Every error type a Glimpse service answers with. The status of each is in STATUS_OF."""

    bad_request = "bad_request"
    validation_error = "validation_error"
    invalid_vector = "invalid_vector"
    invalid_image = "invalid_image"
    unauthorized = "unauthorized"
    forbidden = "forbidden"
    not_found = "not_found"
    method_not_allowed = "method_not_allowed"
    request_timeout = "request_timeout"
    conflict = "conflict"
    payload_too_large = "payload_too_large"
    image_too_large = "image_too_large"
    unsupported_media_type = "unsupported_media_type"
    overloaded = "overloaded"
    internal_error = "internal_error"
    not_ready = "not_ready"
    upstream_unavailable = "upstream_unavailable"
    upstream_timeout = "upstream_timeout"
    upstream_error = "upstream_error"
    insufficient_storage = "insufficient_storage"


STATUS_OF: dict[ErrorType, int] = {
    ErrorType.bad_request: 400,
    ErrorType.validation_error: 422,
    ErrorType.invalid_vector: 422,
    ErrorType.invalid_image: 422,
    ErrorType.unauthorized: 401,
    ErrorType.forbidden: 403,
    ErrorType.not_found: 404,
    ErrorType.method_not_allowed: 405,
    ErrorType.request_timeout: 408,
    ErrorType.conflict: 409,
    ErrorType.payload_too_large: 413,
    ErrorType.image_too_large: 413,
    ErrorType.unsupported_media_type: 415,
    ErrorType.overloaded: 429,
    ErrorType.internal_error: 500,
    ErrorType.upstream_error: 502,
    ErrorType.not_ready: 503,
    ErrorType.upstream_unavailable: 503,
    ErrorType.upstream_timeout: 504,
    ErrorType.insufficient_storage: 507,
}


class ErrorBody(BaseModel):
    """The body of every non-2xx answer."""

    error: str = Field(description="A sentence for a human that names the problem.")
    error_type: str = Field(description="A snake_case name a program can switch on.")
    details: Any = Field(default=None, description="Optional structured detail.")


class GlimpseError(Exception):
    """An error with a type from :class:`ErrorType`; its status comes from ``STATUS_OF``.

    ``status`` may be given to pass through an upstream's status unchanged (the gateway does
    this for an upstream's 4xx), otherwise the table decides.
    """

    def __init__(
        self,
        error_type: ErrorType | str,
        message: str,
        details: Any = None,
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.error_type = str(error_type.value if isinstance(error_type, ErrorType) else error_type)
        self.message = message
        self.details = details
        self.headers = dict(headers) if headers else None
        if status is None:
            try:
                status = STATUS_OF[ErrorType(self.error_type)]
            except ValueError:
                status = 500
        self.status = status

    def body(self) -> dict[str, Any]:
        """The error body; ``details`` go as given, so they hold only JSON values."""
        body: dict[str, Any] = {"error": self.message, "error_type": self.error_type}
        if self.details is not None:
            body["details"] = self.details
        return body


# Where FastAPI says a value came from: the first element of an error's location.
_SOURCES = frozenset({"body", "query", "path", "header", "cookie", "form"})


def _location(err: Mapping[str, Any]) -> str:
    """The field an error is about, e.g. ``query`` or ``terms.0.text``; ``body`` for the body
    as a whole (missing, not an object, not JSON)."""
    parts = [str(p) for p in err.get("loc", ())]
    # Only the first element names a source: a body field may well be called "query".
    if parts and parts[0] in _SOURCES:
        source, parts = parts[0], parts[1:]
        # FastAPI locates a JSON syntax error at its character position, not at a field.
        if err.get("type") == "json_invalid":
            parts = []
        return ".".join(parts) or source
    return ".".join(parts) or "body"


def describe_validation_errors(errors: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """A sentence naming each invalid field and why, plus a JSON-safe list of the errors."""
    details = []
    sentences = []
    for err in errors:
        where = _location(err)
        msg = str(err.get("msg", "is invalid"))
        # pydantic prefixes messages raised from our validators with "Value error, ".
        msg = msg.removeprefix("Value error, ")
        reason = (err.get("ctx") or {}).get("error")
        if err.get("type") == "json_invalid" and isinstance(reason, str):
            msg = f"{msg} ({reason})"
        sentences.append(f"{where}: {msg}")
        loc = [str(p) for p in err.get("loc", ())]
        details.append({"loc": loc, "msg": msg, "type": err.get("type")})
    text = "; ".join(sentences[:5])
    if len(sentences) > 5:
        text += f"; and {len(sentences) - 5} more"
    return f"Invalid request: {text}.", details


def invalid_request(errors: Iterable[Mapping[str, Any]], source: str | None = None) -> GlimpseError:
    """The 422 naming each of pydantic's ``errors``; ``source`` (``body``, ``query``, ...) is put
    before each location, as FastAPI locates a request's errors, so the sentence reads the same."""
    located = [
        {**err, "loc": (source, *err.get("loc", ()))} if source else dict(err) for err in errors
    ]
    message, details = describe_validation_errors(located)
    return GlimpseError(ErrorType.validation_error, message, details)


# OpenAPI: the error answers every route may give, so clients see the error body documented.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorBody, "description": "Invalid input; the sentence names the problem."},
    "4XX": {"model": ErrorBody, "description": "Client error."},
    "5XX": {"model": ErrorBody, "description": "Server or upstream error."},
}
