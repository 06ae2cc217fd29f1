from __future__ import annotations

from typing import Annotated

import pytest
from fastapi import FastAPI, Path, Query, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from glimpse.contracts.errors import ErrorType, GlimpseError
from glimpse.contracts.gateway import (
    CompositeSearchRequest,
    ImageSearchForm,
    IngestCheckRequest,
    TextSearchRequest,
)
from glimpse.web.bodies import parse_fields, parse_json_body
from glimpse.web.handlers import install_error_handlers


class Body(BaseModel):
    k: int = Field(ge=1, le=10)


class Item(BaseModel):
    text: str


class Nested(BaseModel):
    # Named like a source of FastAPI's locations, so the name must not be taken for one.
    query: str
    items: list[Item] = []


def make_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/echo")
    def echo(body: Body) -> Body:
        return body

    @app.post("/nested/{item_id}")
    def nested(
        body: Nested,
        item_id: Annotated[int, Path(ge=0)],
        limit: Annotated[int, Query(ge=1)] = 1,
    ) -> None:
        return None

    @app.post("/raw")
    async def raw(request: Request) -> None:
        parse_json_body(TextSearchRequest, await request.body())

    @app.post("/composite")
    def composite(body: CompositeSearchRequest) -> None:
        return None

    @app.post("/check")
    def check(body: IngestCheckRequest) -> None:
        return None

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    @app.get("/typed")
    def typed() -> None:
        raise GlimpseError(ErrorType.payload_too_large, "The body is over 10 bytes.", {"limit": 10})

    return app


def test_validation_error_names_the_field() -> None:
    client = TestClient(make_app())
    r = client.post("/echo", json={"k": 0})
    assert r.status_code == 422
    body = r.json()
    assert body["error_type"] == "validation_error"
    assert "k" in body["error"] and "greater than or equal to 1" in body["error"]
    assert body["details"][0]["loc"][-1] == "k"


@pytest.mark.parametrize(
    ("path", "kwargs", "sentence"),
    [
        # A body field called "query" was once taken for the query string and named "request".
        ("/raw", {"json": {"k": 5}}, "Invalid request: query: Field required."),
        ("/raw", {"json": [1]}, "Invalid request: body: Input should be an object."),
        ("/raw", {"content": b"{oops"}, "Invalid request: body: Invalid JSON"),
        ("/nested/1", {"json": {"k": 5}}, "Invalid request: query: Field required."),
        ("/nested/1", {"json": {"query": "a", "items": [{}]}}, "items.0.text: Field required"),
        ("/nested/1", {}, "Invalid request: body: Field required."),
        ("/nested/1", {"content": b"{oops"}, "body: JSON decode error (Expecting property name"),
        ("/nested/x", {"json": {"query": "a"}}, "item_id: Input should be a valid integer"),
        ("/nested/1?limit=0", {"json": {"query": "a"}}, "limit: Input should be greater than"),
    ],
)
def test_every_validation_error_names_its_field(
    path: str, kwargs: dict[str, object], sentence: str
) -> None:
    client = TestClient(make_app())
    headers = {"content-type": "application/json"} if "content" in kwargs else None
    r = client.post(path, headers=headers, **kwargs)  # type: ignore[arg-type]
    assert r.status_code == 422, r.text
    assert r.json()["error_type"] == "validation_error"
    assert sentence in r.json()["error"], r.json()["error"]
    assert "request:" not in r.json()["error"].removeprefix("Invalid request: ")


@pytest.mark.parametrize(
    ("path", "body", "sentence"),
    [
        # The public bodies are strict: no coercion from other JSON types, no unknown fields.
        ("/raw", {"query": "cat", "k": True}, "k: Input should be a valid integer"),
        ("/raw", {"query": "cat", "k": "5"}, "k: Input should be a valid integer"),
        ("/raw", {"query": "cat", "k": 5.0}, "k: Input should be a valid integer"),
        ("/raw", {"query": 5}, "query: Input should be a valid string"),
        ("/raw", {"query": "cat", "limit": 5}, "limit: Extra inputs are not permitted"),
        ("/composite", {"terms": [{"text": "cat"}], "k": "5"}, "k: Input should be a valid"),
        ("/composite", {"terms": [{"image_id": True}]}, "terms.0.image_id: Input should be"),
        ("/composite", {"terms": [{"text": "a", "w": 1}]}, "terms.0.w: Extra inputs are not"),
        ("/composite", {"term": [{"text": "a"}]}, "term: Extra inputs are not permitted"),
        ("/check", {"sha256": ["a" * 64], "force": 1}, "force: Extra inputs are not permitted"),
        ("/check", {"sha256": ["a" * 64, "zz"]}, "sha256.1: String should match pattern"),
    ],
)
def test_public_bodies_refuse_other_types_and_unknown_fields(
    path: str, body: dict[str, object], sentence: str
) -> None:
    r = TestClient(make_app()).post(path, json=body)
    assert r.status_code == 422, r.text
    assert sentence in r.json()["error"], r.json()["error"]


def test_public_bodies_still_take_what_they_document() -> None:
    client = TestClient(make_app())
    assert client.post("/raw", json={"query": "cat", "k": 5, "offset": 0}).status_code == 200
    # A float field takes a JSON integer: 1 and 1.0 are the same JSON number.
    terms = {"terms": [{"text": "cat", "weight": 1}, {"image_id": 3, "weight": -0.5}]}
    assert client.post("/composite", json=terms).status_code == 200
    assert client.post("/check", json={"sha256": ["aB" * 32]}).status_code == 200
    # Form fields are text by nature: /search/image's k and offset arrive as strings.
    form = parse_fields(ImageSearchForm, {"k": "5", "offset": "40"})
    assert (form.k, form.offset) == (5, 40)


def test_unknown_route_and_method_use_the_error_body() -> None:
    client = TestClient(make_app())
    r = client.get("/nope")
    assert r.status_code == 404
    assert r.json()["error_type"] == "not_found" and "/nope" in r.json()["error"]
    r = client.get("/echo")
    assert r.status_code == 405
    assert r.json()["error_type"] == "method_not_allowed"


def test_glimpse_error_status_comes_from_the_table() -> None:
    client = TestClient(make_app())
    r = client.get("/typed")
    assert r.status_code == 413
    assert r.json() == {
        "error": "The body is over 10 bytes.",
        "error_type": "payload_too_large",
        "details": {"limit": 10},
    }


def test_unhandled_error_is_500_without_internals() -> None:
    client = TestClient(make_app(), raise_server_exceptions=False)
    r = client.get("/boom")
    assert r.status_code == 500
    assert r.json()["error_type"] == "internal_error"
    assert "secret" not in r.text
