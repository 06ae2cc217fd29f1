"""Routes of a plain Starlette service, and its OpenAPI document, from one list of operations.

Each :class:`Operation` names its endpoint and the contract models of its body and answers;
``routes`` gives Starlette its routes and ``openapi_document`` the document, with every model's
schema from pydantic (``models_json_schema``), so the two cannot disagree about which routes
exist and the document shows the same models the code validates with.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

Endpoint = Callable[[Request], Awaitable[Response]]
# status -> {"model": a pydantic model or None, "description": str}, as FastAPI's ``responses``
Responses = Mapping[int | str, Mapping[str, Any]]


@dataclass(frozen=True)
class Operation:
    """One route: ``body`` is a model (a JSON body) or a whole OpenAPI ``requestBody``."""

    method: Literal["GET", "POST", "PATCH", "DELETE"]
    path: str
    endpoint: Endpoint
    tags: tuple[str, ...]
    answer: type[BaseModel] | None = None
    body: type[BaseModel] | Mapping[str, Any] | None = None
    responses: Responses = field(default_factory=dict)
    parameters: Sequence[Mapping[str, Any]] = ()
    answer_content: Mapping[str, Any] | None = None  # the 200's content, when not a model's
    status: int = 200  # the success status (204: no content)
    body_required: bool = True

    @property
    def name(self) -> str:
        return self.endpoint.__name__


def routes(operations: Sequence[Operation]) -> list[Route]:
    return [Route(op.path, op.endpoint, methods=[op.method]) for op in operations]


def _models(operations: Sequence[Operation]) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    found: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {}
    for op in operations:
        if isinstance(op.body, type):
            found[(op.body, "validation")] = None
        if op.answer is not None:
            found[(op.answer, "serialization")] = None
        for extra in op.responses.values():
            if extra.get("model") is not None:
                found[(extra["model"], "serialization")] = None
    return list(found)


def openapi_document(
    title: str, version: str, summary: str, operations: Sequence[Operation]
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``operations``, named and laid out as FastAPI lays out its
    own (operation ids, summaries from the endpoint's name, descriptions from its docstring)."""
    refs, schemas = models_json_schema(
        _models(operations), ref_template="#/components/schemas/{model}"
    )

    def json_content(model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        return {"application/json": {"schema": refs[(model, mode)]}}

    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        ok = str(op.status)
        answers: dict[str, Any] = {ok: {"description": "Successful Response"}}
        if op.answer is not None:
            answers[ok]["content"] = json_content(op.answer, "serialization")
        elif op.answer_content is not None:
            answers[ok]["content"] = dict(op.answer_content)
        for status, extra in op.responses.items():
            answers[str(status)] = {"description": extra["description"]}
            if extra.get("model") is not None:
                answers[str(status)]["content"] = json_content(extra["model"], "serialization")
        operation: dict[str, Any] = {
            "tags": list(op.tags),
            "summary": op.name.replace("_", " ").title(),
            "description": inspect.cleandoc(op.endpoint.__doc__ or ""),
            "operationId": re.sub(r"\W", "_", f"{op.name}{op.path}") + f"_{op.method.lower()}",
            "responses": answers,
        }
        if op.parameters:
            operation["parameters"] = [dict(p) for p in op.parameters]
        if isinstance(op.body, type):
            operation["requestBody"] = {
                "required": op.body_required, "content": json_content(op.body, "validation")
            }
        elif op.body is not None:
            operation["requestBody"] = dict(op.body)
        paths.setdefault(op.path, {})[op.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "summary": summary, "version": version},
        "paths": paths,
        "components": {"schemas": schemas.get("$defs", {})},
    }


def json_body_openapi(model: type[BaseModel]) -> dict[str, Any]:
    """FastAPI's ``openapi_extra`` documenting a required JSON body of ``model``, for a route
    that reads its body itself (a self-contained schema: such bodies have no nested models)."""
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
    """The ``requestBody`` of a required multipart/form-data body (under ``openapi_extra`` for
    FastAPI): ``files`` (name -> the property's schema; every one required) beside the text
    ``fields`` (name -> schema)."""
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
