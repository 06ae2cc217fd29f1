"""JSON and form-field bodies read by the routes themselves, validated by the contract models.

A route that declares a pydantic body has FastAPI parse the JSON into Python objects, validate
those and run its dependency solver; the gateway's search routes instead take the raw request
and validate the bytes with pydantic's own JSON parser in one pass. A failure is the same 422
FastAPI's validation gives, naming each field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from glimpse.contracts.errors import invalid_request

M = TypeVar("M", bound=BaseModel)


def parse_json_body(model: type[M], raw: bytes) -> M:
    """``raw`` validated as ``model``; else a GlimpseError (422) naming each problem."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise invalid_request(exc.errors(include_url=False, include_context=False),
                              "body") from None


def parse_fields(model: type[M], values: Mapping[str, Any]) -> M:
    """Form fields validated as ``model``, with the same 422 as a JSON body."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise invalid_request(exc.errors(include_url=False, include_context=False),
                              "body") from None
