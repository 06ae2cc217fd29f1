"""JSON request and response bodies on the hot paths (searches), without FastAPI's body machinery.

A route that declares a pydantic body has FastAPI parse the JSON into Python objects with the
stdlib, validate those, and run its dependency solver; answering through a response model
validates every hit again and serialises with the stdlib. On a one-query search that was about
a third of the index service's event-loop time. These routes instead take the raw ``Request``:

- :func:`parse_json_body` validates the bytes with pydantic's own JSON parser (one pass, in
  Rust) and turns a failure into the same 422 error body FastAPI's validation gives
  (:func:`parse_fields` does the same for form fields);
- :func:`json_body_openapi` documents the body in OpenAPI as if it were declared;
- :func:`json_response` serialises with pydantic-core, also in Rust.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from fastapi import Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from pydantic_core import to_json

M = TypeVar("M", bound=BaseModel)


def parse_json_body(model: type[M], raw: bytes) -> M:
    """``raw`` validated as ``model``; RequestValidationError (-> 422 naming each problem)."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise _request_error(exc) from None


def parse_fields(model: type[M], values: Mapping[str, Any]) -> M:
    """Form fields validated as ``model``, with the same 422 as a JSON body."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise _request_error(exc) from None


def _request_error(exc: ValidationError) -> RequestValidationError:
    # The locations FastAPI gives a body's errors, so the error sentence reads the same.
    return RequestValidationError([
        {**error, "loc": ("body", *error["loc"])}
        for error in exc.errors(include_url=False, include_context=False)
    ])


def json_body_openapi(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting a required JSON body of ``model`` (self-contained schema:
    the body models of the hot paths have no nested models)."""
    schema = model.model_json_schema()
    if "$defs" in schema:
        raise ValueError(f"{model.__name__} has nested models; declare it as a body instead")
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    }


def form_body_openapi(files: Mapping[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` documenting a required multipart/form-data body: ``files`` (name ->
    the property's schema; every one required) beside the text ``fields`` (name -> schema)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": list(files),
                        "properties": {**files, **fields},
                    }
                }
            },
        }
    }


def json_response(content: Any, status_code: int = 200) -> Response:
    """``content`` (plain dicts, lists, numbers, strings) as a JSON response."""
    return Response(to_json(content), status_code=status_code, media_type="application/json")
