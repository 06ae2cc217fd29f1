"""Upstream error mapping, the stale-connection retry and the liveness probe (MockTransport)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest

from contracts.errors import GlimpseError
from gateway.clients import Upstream

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


def upstream(handler: Handler, **options: float) -> Upstream:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://up")
    return Upstream("encoder", client, **options)


async def call(up: Upstream) -> httpx.Response:
    try:
        return await up.request("POST", "/v1/embed/text", json={})
    finally:
        await up.aclose()


@pytest.mark.parametrize(
    ("status", "body", "want_status", "want_type"),
    [
        (404, {"error": "No item 7.", "error_type": "not_found"}, 404, "not_found"),
        (422, {"error": "Bad.", "error_type": "invalid_vector", "details": [1]}, 422,
         "invalid_vector"),
        (413, {"error": "Too big.", "error_type": "image_too_large"}, 413, "image_too_large"),
        (429, {"error": "Busy.", "error_type": "overloaded"}, 429, "overloaded"),
        (400, "plain text", 400, "bad_request"),
        (503, {"error": "Loading.", "error_type": "not_ready"}, 503, "upstream_unavailable"),
        (504, {"error": "Slow.", "error_type": "x"}, 504, "upstream_timeout"),
        (500, {"error": "Boom.", "error_type": "internal_error"}, 502, "upstream_error"),
        (507, {"error": "Full.", "error_type": "insufficient_storage"}, 507,
         "insufficient_storage"),
    ],
)
async def test_status_mapping(
    status: int, body: object, want_status: int, want_type: str
) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, dict):
            return httpx.Response(status, json=body)
        return httpx.Response(status, text=str(body))

    with pytest.raises(GlimpseError) as info:
        await call(upstream(handler))
    assert (info.value.status, info.value.error_type) == (want_status, want_type)
    if 400 <= status < 500 and isinstance(body, dict):
        assert info.value.body() == body  # passed through unchanged


async def test_connection_refused_is_503() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(GlimpseError) as info:
        await call(upstream(handler))
    assert (info.value.status, info.value.error_type) == (503, "upstream_unavailable")
    assert "encoder" in info.value.message


async def test_read_timeout_is_504() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(GlimpseError) as info:
        await call(upstream(handler))
    assert (info.value.status, info.value.error_type) == (504, "upstream_timeout")


async def test_a_stale_pooled_connection_is_retried_once() -> None:
    calls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx.RemoteProtocolError("Server disconnected", request=request)
        return httpx.Response(200, json={"ok": True})

    assert (await call(upstream(handler))).json() == {"ok": True}
    assert calls == 2


async def test_a_stopped_upstream_fails_fast() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)  # neither the call nor /healthz ever answers
        raise AssertionError("unreachable")

    start = time.perf_counter()
    with pytest.raises(GlimpseError) as info:
        await call(upstream(handler, patience=0.2, probe_timeout=0.3))
    assert (info.value.status, info.value.error_type) == (503, "upstream_unavailable")
    assert time.perf_counter() - start < 1.5


async def test_a_busy_but_alive_upstream_is_waited_for() -> None:
    probes = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal probes
        if request.url.path == "/healthz":
            probes += 1
            return httpx.Response(200, json={"status": "ok"})
        await asyncio.sleep(0.7)
        return httpx.Response(200, json={"done": True})

    response = await call(upstream(handler, patience=0.2, probe_timeout=0.3))
    assert response.json() == {"done": True}
    assert probes >= 2


async def test_a_caller_cancelling_a_slow_call_still_gets_cancelled() -> None:
    # The patience watchdog cancels a call to a dead upstream; a cancellation of the caller's
    # own (a client that went away) must stay a cancellation, not become a 503.
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        raise AssertionError("unreachable")

    task = asyncio.ensure_future(call(upstream(handler, patience=5.0, probe_timeout=0.3)))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_paths_resolve_under_the_base_url() -> None:
    seen: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={})

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://up/pre/")
    up = Upstream("index", client)
    try:
        await up.request("GET", "/v1/stats")
        await up.request("GET", "/v1/items/7/vector", params={"encoding": "base64"})
        await up.request("GET", "/v1/stats")
    finally:
        await up.aclose()
    assert seen == [
        "http://up/pre/v1/stats",
        "http://up/pre/v1/items/7/vector?encoding=base64",
        "http://up/pre/v1/stats",
    ]
