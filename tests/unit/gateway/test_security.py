"""The body limit middleware (declared and chunked bodies) and the API key check."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI, Request

from glimpse.contracts.errors import GlimpseError, install_error_handlers
from glimpse.gateway.security import BodySizeLimitMiddleware, check_api_key

LIMIT = 1000


def make_app() -> tuple[FastAPI, list[int]]:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, limit_for=lambda path: LIMIT)
    seen: list[int] = []

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            seen.append(size)
        return {"size": size}

    return app, seen


async def post(app: FastAPI, **kwargs: object) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.post("/echo", **kwargs)  # type: ignore[arg-type]


async def test_body_at_the_limit_passes() -> None:
    app, _ = make_app()
    response = await post(app, content=b"x" * LIMIT)
    assert response.status_code == 200 and response.json() == {"size": LIMIT}


async def test_declared_oversize_is_refused_before_reading() -> None:
    app, seen = make_app()
    response = await post(app, content=b"x" * (LIMIT + 1))
    assert response.status_code == 413
    assert response.json()["error_type"] == "payload_too_large"
    assert seen == []  # the route never got a byte


async def test_chunked_oversize_is_cut_off_at_the_limit() -> None:
    app, seen = make_app()
    sent = 0

    async def chunks() -> object:
        nonlocal sent
        for _ in range(100):
            sent += 300
            yield b"x" * 300

    response = await post(app, content=chunks())
    assert response.status_code == 413
    assert response.json()["error_type"] == "payload_too_large"
    assert not seen or seen[-1] <= LIMIT
    assert sent < 100 * 300  # reading stopped early: the rest was never pulled


class FakeRequest:
    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


@pytest.mark.parametrize(
    ("headers", "ok"),
    [
        ({"authorization": "Bearer s3cret-key"}, True),
        ({"authorization": "bearer s3cret-key"}, True),
        ({"authorization": "Bearer wrong-key"}, False),
        ({"authorization": "Bearer s3cret-ke"}, False),
        ({"authorization": "Basic s3cret-key"}, False),
        ({"authorization": "Bearer "}, False),
        ({}, False),
    ],
)
def test_api_key(headers: dict[str, str], ok: bool) -> None:
    request = FakeRequest(headers)
    if ok:
        check_api_key(request, "s3cret-key")  # type: ignore[arg-type]
    else:
        with pytest.raises(GlimpseError) as info:
            check_api_key(request, "s3cret-key")  # type: ignore[arg-type]
        assert info.value.status == 401


def test_no_key_configured_is_open() -> None:
    check_api_key(FakeRequest({}), None)  # type: ignore[arg-type]
