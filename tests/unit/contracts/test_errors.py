from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from glimpse.contracts.errors import ErrorType, GlimpseError, install_error_handlers


class Body(BaseModel):
    k: int = Field(ge=1, le=10)


def make_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/echo")
    def echo(body: Body) -> Body:
        return body

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
