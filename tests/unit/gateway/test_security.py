"""The body guard middleware (declared and chunked bodies over the limit, a body that stalls)
and the API key check."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from glimpse.contracts.errors import GlimpseError
from glimpse.gateway.security import (
    BodyGuardMiddleware,
    check_api_key,
)
from glimpse.web.handlers import install_error_handlers

LIMIT = 1000


def make_app(timeout: float = 60.0) -> tuple[FastAPI, list[int]]:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(BodyGuardMiddleware, limit_for=lambda path: LIMIT, timeout=timeout)
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


# The body timeout ------------------------------------------------------------------------------

TIMEOUT = 0.2


def timed_app() -> FastAPI:
    app, _ = make_app(TIMEOUT)

    @app.post("/json")
    async def json_body(body: dict[str, int]) -> dict[str, int]:
        return body

    @app.get("/slow")
    async def slow(request: Request) -> dict[str, bool]:
        # A route that waits on receive() after the body (as a response watching for a
        # disconnect does): that wait is not the client's body and must not time out.
        await request.body()
        try:
            await asyncio.wait_for(request.receive(), TIMEOUT * 2)
        except TimeoutError:
            return {"ok": True}
        return {"ok": False}

    return app


async def call(
    app: Any, method: str, path: str, pieces: list[bytes], stall: bool, chunked: bool = False
) -> tuple[int, dict[str, str], bytes, float]:
    """Send the body in ``pieces``; with ``stall`` the client then sends nothing more; with
    ``chunked`` the body has no Content-Length."""
    queue = list(pieces)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if queue:
            body = queue.pop(0)
            return {"type": "http.request", "body": body, "more_body": bool(queue) or stall}
        await asyncio.sleep(3600)  # a client that stalls (or, after the body, never leaves)
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    declared = sum(len(p) for p in pieces) * (2 if stall else 1)
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
        "headers": [(b"content-type", b"application/json"),
                    (b"transfer-encoding", b"chunked") if chunked
                    else (b"content-length", str(declared).encode())],
    }
    started = time.perf_counter()
    await asyncio.wait_for(app(scope, receive, send), 5)
    took = time.perf_counter() - started
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], headers, body, took


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("path", ["/echo", "/json"])
async def test_a_body_that_stalls_is_answered_408(path: str, chunked: bool) -> None:
    app = timed_app()
    status, headers, body, took = await call(
        app, "POST", path, [b'{"a": 1', b", "], stall=True, chunked=chunked
    )
    assert status == 408
    assert headers["connection"] == "close"
    error = json.loads(body)
    assert error["error_type"] == "request_timeout" and "0.2 s" in error["error"]
    assert TIMEOUT <= took < TIMEOUT + 1.0


async def test_a_body_that_keeps_coming_is_read() -> None:
    app = timed_app()
    status, _, body, _ = await call(app, "POST", "/json", [b'{"a": ', b"1}"], stall=False)
    assert status == 200 and json.loads(body) == {"a": 1}


async def test_waits_after_the_body_are_not_bounded() -> None:
    app = timed_app()
    status, _, body, took = await call(app, "GET", "/slow", [b""], stall=False)
    assert status == 200 and json.loads(body) == {"ok": True}
    assert took >= TIMEOUT * 2
