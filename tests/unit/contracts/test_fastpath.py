"""The front door answers its routes exactly as the app would, and passes everything else on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from glimpse.contracts.bodies import json_body_openapi, json_response, parse_json_body
from glimpse.contracts.errors import ErrorType, GlimpseError, install_error_handlers
from glimpse.contracts.fastpath import FastRoutes
from glimpse.contracts.observability import ServiceMetrics, install_metrics


class Query(BaseModel):
    k: int = Field(ge=1, le=10)


async def search(request: Request) -> Response:
    body = parse_json_body(Query, await request.body())
    if body.k == 7:
        raise GlimpseError(ErrorType.not_found, "No seven here.")
    if body.k == 8:
        raise HTTPException(400, "Bad form.")
    if body.k == 9:
        raise RuntimeError("secret internals")
    return json_response({"k": body.k, "state": request.app.state.flag})


def make_app() -> FastAPI:
    app = FastAPI()
    app.state.flag = "from the app"
    install_error_handlers(app)
    install_metrics(app, ServiceMetrics("test"))
    app.post("/search", openapi_extra=json_body_openapi(Query))(search)

    @app.get("/other")
    async def other() -> dict[str, str]:
        return {"answered": "by the app"}

    return app


@pytest.fixture
def both() -> Iterator[tuple[TestClient, TestClient]]:
    front = FastRoutes(make_app(), {("POST", "/search"): search}, limit_for=lambda path: 64)
    with TestClient(make_app(), raise_server_exceptions=False) as plain, TestClient(
        front, raise_server_exceptions=False  # type: ignore[arg-type]
    ) as fast:
        yield plain, fast


@pytest.mark.parametrize(
    "body",
    [b'{"k": 3}', b'{"k": 0}', b'{"k": "x"}', b"{oops", b"", b'{"k": 7}', b'{"k": 8}',
     b'{"k": 9}'],
)
def test_answers_as_the_app_does(both: tuple[TestClient, TestClient], body: bytes) -> None:
    plain, fast = both
    want = plain.post("/search", content=body)
    got = fast.post("/search", content=body)
    assert (got.status_code, got.json()) == (want.status_code, want.json())
    assert got.headers["content-type"] == "application/json"


def test_the_error_bodies(both: tuple[TestClient, TestClient]) -> None:
    _, fast = both
    assert fast.post("/search", content=b'{"k": 3}').json() == {"k": 3, "state": "from the app"}
    bad = fast.post("/search", content=b'{"k": 0}')
    assert bad.status_code == 422 and bad.json()["error_type"] == "validation_error"
    assert "k: Input should be greater than or equal to 1" in bad.json()["error"]
    assert fast.post("/search", content=b'{"k": 7}').json() == {
        "error": "No seven here.", "error_type": "not_found"}
    assert fast.post("/search", content=b'{"k": 8}').json() == {
        "error": "Bad form.", "error_type": "bad_request"}
    boom = fast.post("/search", content=b'{"k": 9}')
    assert boom.status_code == 500 and "secret" not in boom.text
    assert boom.json()["error_type"] == "internal_error"


def test_other_routes_and_attributes_are_the_apps(both: tuple[TestClient, TestClient]) -> None:
    _, fast = both
    assert fast.get("/other").json() == {"answered": "by the app"}
    assert fast.get("/search").status_code == 405  # another method: the app's answer
    front = fast.app
    assert isinstance(front, FastRoutes)
    assert front.state.flag == "from the app"
    assert "/search" in front.openapi()["paths"]


def test_body_limit_declared_and_counted(both: tuple[TestClient, TestClient]) -> None:
    _, fast = both
    big = b'{"k": 3, "pad": "' + b"x" * 100 + b'"}'
    r = fast.post("/search", content=big)
    assert r.status_code == 413 and r.json()["error_type"] == "payload_too_large"
    assert r.headers["connection"] == "close"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"k": 3, "pad": "'
        yield b"x" * 100
        yield b'"}'

    r = fast.post("/search", content=chunks())
    assert r.status_code == 413 and "64 bytes" in r.json()["error"]


def test_metrics_count_the_fast_route(both: tuple[TestClient, TestClient]) -> None:
    _, fast = both
    fast.post("/search", content=b'{"k": 3}')
    fast.post("/search", content=b'{"k": 0}')
    text = fast.get("/metrics").text
    assert 'route="/search",service="test",status="200"' in text
    assert 'route="/search",service="test",status="422"' in text


def test_a_route_the_app_does_not_declare_is_refused() -> None:
    with pytest.raises(ValueError, match="does not declare"):
        FastRoutes(make_app(), {("POST", "/nowhere"): search})
