"""Several replicas of one upstream: spreading, failing over, taking a replica back, DNS.

Each replica is a real HTTP server on a loopback port (``FakeUpstream``) whose every answer the
test controls; the processes case (real encoders behind a real gateway) is
tests/integration/test_replicas.py.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
from pydantic import ValidationError

from glimpse.contracts.errors import GlimpseError
from glimpse.gateway.config import Settings
from glimpse.gateway.http import HttpPool
from glimpse.gateway.replicas import ReplicaSet, preferred_addresses, split_urls
from glimpse.gateway.upstream import Upstream, build_client, build_replicas
from tests.unit.gateway.test_http import FakeUpstream, Handler, Request, answer, response


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def upstream(urls: Sequence[str], *, recheck: float = 0.05, **options: float) -> Upstream:
    replicas = build_replicas(
        ",".join(urls), name="encoder", connect_timeout=1.0, read_timeout=5.0,
        max_connections=4, resolve_interval=0.0, recheck_interval=recheck,
    )
    return Upstream("encoder", replicas, **options)


async def ok(request: Request, writer: asyncio.StreamWriter) -> None:
    await answer(writer, response(200, {"ok": True}))


def calls(server: FakeUpstream, path: str = "/v1/embed/text") -> int:
    return sum(r.target == path for r in server.requests)


@asynccontextmanager
async def servers(*handlers: Handler) -> AsyncIterator[list[FakeUpstream]]:
    started = [await FakeUpstream(h).__aenter__() for h in handlers]
    try:
        yield started
    finally:
        for server in started:
            await server.__aexit__(None, None, None)


async def wait_for(predicate: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def test_urls_are_comma_separated_and_checked() -> None:
    assert split_urls(" http://a:1/ , http://b:2,") == ["http://a:1", "http://b:2"]
    assert split_urls("http://encoder:8001") == ["http://encoder:8001"]
    for bad in ("", " , ", "https://a:1", "http://a:1,a:2", "http://a:x", "http://a:1,http://a:1"):
        with pytest.raises(ValueError):
            split_urls(bad)


def test_a_bad_url_in_the_settings_stops_the_start_naming_it() -> None:
    assert Settings(encoder_url="http://a:1, http://b:2").encoder_url == "http://a:1, http://b:2"
    with pytest.raises(ValidationError, match="'ftp://b' is not an http"):
        Settings(encoder_url="http://a:1,ftp://b")
    with pytest.raises(ValidationError, match="listed twice"):
        Settings(index_url="http://i:1,http://i:1")


def test_one_family_of_addresses_is_preferred() -> None:
    v4, v6 = socket.AF_INET, socket.AF_INET6
    infos = [(v6, 1, 6, "", ("::1", 80, 0, 0)), (v4, 1, 6, "", ("127.0.0.1", 80)),
             (v4, 1, 6, "", ("10.0.0.2", 80)), (v4, 1, 6, "", ("127.0.0.1", 80))]
    assert preferred_addresses(infos) == ["127.0.0.1", "10.0.0.2"]
    assert preferred_addresses(infos[:1]) == ["::1"]


async def test_calls_alternate_over_idle_replicas() -> None:
    async with servers(ok, ok) as (a, b):
        up = upstream([a.url, b.url])
        for _ in range(20):
            await up.json("POST", "/v1/embed/text", json={})
        await up.aclose()
    assert (calls(a), calls(b)) == (10, 10)


async def test_a_busy_replica_gets_fewer_calls() -> None:
    async def slow(request: Request, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.2)
        await ok(request, writer)

    async with servers(slow, ok) as (a, b):
        up = upstream([a.url, b.url], patience=5.0)

        async def client() -> None:
            for _ in range(10):
                await up.json("POST", "/v1/embed/text", json={})

        await asyncio.gather(client(), client(), client())
        await up.aclose()
    # Least outstanding: the slow one holds its calls, so the fast one takes most of them.
    assert calls(b) > 3 * calls(a) > 0, (calls(a), calls(b))


async def test_a_refused_replica_is_skipped_then_taken_back() -> None:
    port = free_port()
    async with servers(ok) as (b,):
        up = upstream([f"http://127.0.0.1:{port}", b.url])
        dead = up.replicas.replicas[0]
        for _ in range(10):
            assert await up.json("POST", "/v1/embed/text", json={}) == {"ok": True}
        assert calls(b) == 10 and dead.requests == 1  # refused once, then skipped
        assert not dead.up and dead.reason.startswith("unreachable")
        assert up.replicas.status()["up"] == 1
        # It comes back on the same port: the background check takes it back.
        server = await asyncio.start_server(
            lambda r, w: FakeUpstream(ok)._serve(r, w), "127.0.0.1", port
        )
        try:
            await wait_for(lambda: dead.up)
            for _ in range(10):
                await up.json("POST", "/v1/embed/text", json={})
            assert dead.requests >= 5
        finally:
            server.close()
            await up.aclose()


async def test_all_refused_is_503_at_once() -> None:
    up = upstream([f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"])
    started = time.perf_counter()
    for _ in range(3):
        with pytest.raises(GlimpseError) as info:
            await up.request("POST", "/v1/embed/text", json={})
        assert (info.value.status, info.value.error_type) == (503, "upstream_unavailable")
    await up.aclose()
    assert time.perf_counter() - started < 1.0
    assert "replicas" in info.value.message
    # Refused at once: each call tried both, down or not.
    assert [r.requests for r in up.replicas.replicas] == [3, 3]


async def test_a_503_answer_fails_over() -> None:
    async def loading(request: Request, writer: asyncio.StreamWriter) -> None:
        await answer(writer, response(503, {"error": "Loading.", "error_type": "not_ready"}))

    async with servers(loading, ok) as (a, b):
        up = upstream([a.url, b.url], recheck=5.0)
        for _ in range(4):
            assert await up.json("POST", "/v1/embed/text", json={}) == {"ok": True}
        await up.aclose()
    assert calls(a) <= 1 and calls(b) == 4


async def test_a_4xx_is_the_answer_not_a_failure() -> None:
    async def refuses(request: Request, writer: asyncio.StreamWriter) -> None:
        await answer(writer, response(422, {"error": "Bad.", "error_type": "invalid_vector"}))

    async with servers(refuses, refuses) as (a, b):
        up = upstream([a.url, b.url])
        with pytest.raises(GlimpseError) as info:
            await up.request("POST", "/v1/search", json={})
        await up.aclose()
    assert info.value.status == 422
    assert calls(a, "/v1/search") + calls(b, "/v1/search") == 1
    assert all(r.up for r in up.replicas.replicas)


async def test_a_dropped_call_moves_on_unless_it_is_not_idempotent() -> None:
    async def drops(request: Request, writer: asyncio.StreamWriter) -> bool:
        return False  # read the request, close without an answer

    async with servers(drops, ok) as (a, b):
        up = upstream([a.url, b.url], recheck=5.0)
        up.replicas._turn = 1  # the next pick starts at the first replica: the dropping one
        assert await up.json("POST", "/v1/embed/text", json={}) == {"ok": True}
        up.replicas.mark_up(up.replicas.replicas[0])
        up.replicas._turn = 1
        with pytest.raises(GlimpseError) as info:
            await up.request("DELETE", "/v1/items/7", idempotent=False)
        await up.aclose()
    assert (info.value.status, info.value.error_type) == (503, "upstream_unavailable")
    assert calls(a, "/v1/items/7") == 1 and calls(b, "/v1/items/7") == 0


async def test_a_stopped_replica_is_abandoned_for_a_live_one() -> None:
    async def frozen(request: Request, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)  # neither the call nor /healthz ever answers

    async with servers(frozen, ok) as (a, b):
        up = upstream([a.url, b.url], patience=0.2, probe_timeout=0.3, recheck=5.0)
        up.replicas._turn = 1
        started = time.perf_counter()
        assert await up.json("POST", "/v1/embed/text", json={}) == {"ok": True}
        took = time.perf_counter() - started
        assert 0.2 < took < 1.0, took
        assert not up.replicas.replicas[0].up
        started = time.perf_counter()
        await up.json("POST", "/v1/embed/text", json={})  # goes straight to the live one
        assert time.perf_counter() - started < 0.2
        await up.aclose()


async def test_two_stopped_replicas_answer_503_within_the_bound() -> None:
    async def frozen(request: Request, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async with servers(frozen, frozen, frozen) as (a, b, c):
        up = upstream([a.url, b.url, c.url], patience=0.2, probe_timeout=0.3, recheck=5.0)
        started = time.perf_counter()
        with pytest.raises(GlimpseError) as info:
            await up.request("POST", "/v1/embed/text", json={})
        took = time.perf_counter() - started
        await up.aclose()
    assert info.value.error_type == "upstream_unavailable"
    # One stopped replica, then at most one more: two patience + probe periods, not three.
    assert took < 2 * (0.2 + 0.3) + 0.3, took


async def test_readiness_counts_the_ready_replicas() -> None:
    async with servers(ok) as (b,):
        dead = f"http://127.0.0.1:{free_port()}"
        up = upstream([dead, b.url], recheck=5.0)
        ready, line = await up.ready()
        assert ready and line.startswith("ok: 1 of 2 replicas ready; " + dead)
        single = upstream([b.url])
        assert await single.ready() == (True, "ok")
        none = upstream([dead])
        assert await none.ready() == (False, "unreachable (UpstreamConnectError)")
        for u in (up, single, none):
            await u.aclose()


async def test_a_name_with_several_addresses_is_one_replica_per_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Docker's DNS answers a scaled service's name with every container's address. The
    # resolver is faked (it is the operating system's); the pool factory maps each address
    # to one of two loopback servers, as the network would.
    answers = [["10.0.0.1", "10.0.0.2"]]
    loop = asyncio.get_running_loop()

    async def getaddrinfo(host: str, port: int, **kwargs: Any) -> list[tuple[Any, ...]]:
        assert host == "encoder"
        return [(socket.AF_INET, 1, 6, "", (a, port)) for a in answers[-1]]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    async with servers(ok, ok) as (a, b):
        where = {None: a.url, "10.0.0.1": a.url, "10.0.0.2": b.url}

        def make_pool(url: str, address: str | None) -> HttpPool:
            assert url == "http://encoder:8001"
            return build_client(where[address], connect_timeout=1.0, read_timeout=5.0,
                                max_connections=4)

        replicas = ReplicaSet("http://encoder:8001", make_pool, name="encoder",
                              resolve_interval=0.1, recheck_interval=0.05)
        up = Upstream("encoder", replicas)
        await up.json("POST", "/v1/embed/text", json={})  # by name; starts the resolver
        await wait_for(lambda: len(replicas.replicas) == 2 and replicas.up_count == 2)
        assert [r.address for r in replicas.replicas] == ["10.0.0.1", "10.0.0.2"]
        # New replicas were checked (/readyz) before they got calls.
        assert calls(b, "/readyz") == 1
        for _ in range(10):
            await up.json("POST", "/v1/embed/text", json={})
        assert calls(a) >= 5 and calls(b) == 5
        # Scaled back to one container: one replica, by name again.
        answers.append(["10.0.0.1"])
        await wait_for(lambda: [r.address for r in replicas.replicas] == [None])
        # A failed lookup keeps what there is.
        answers.append([])
        await asyncio.sleep(0.3)
        assert [r.address for r in replicas.replicas] == [None]
        await up.aclose()


def swallowing() -> tuple[socket.socket, list[socket.socket], str]:
    """A loopback port whose connects hang (its one-slot backlog is full): a host that drops
    packets, as far as a client can tell."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    filler = socket.create_connection(server.getsockname())
    return server, [filler], f"http://127.0.0.1:{server.getsockname()[1]}"


async def test_hosts_that_swallow_connects_cost_a_bounded_wait() -> None:
    sockets: list[socket.socket] = []
    urls = []
    for _ in range(4):
        server, held, url = swallowing()
        sockets += [server, *held]
        urls.append(url)
    try:
        replicas = build_replicas(
            ",".join(urls), name="encoder", connect_timeout=0.6, read_timeout=5.0,
            max_connections=4, resolve_interval=0.0, recheck_interval=5.0,
        )
        up = Upstream("encoder", replicas, patience=0.5, probe_timeout=0.6)
        attempts = []
        for _ in range(4):
            before = sum(r.failures for r in replicas.replicas)
            with pytest.raises(GlimpseError) as info:
                await up.request("POST", "/v1/embed/text", json={})
            attempts.append(sum(r.failures for r in replicas.replicas) - before)
            assert info.value.error_type == "upstream_unavailable"
        await up.aclose()
    finally:
        for sock in sockets:
            sock.close()
    # While some are up, a call tries them while it has spent less than patience + probe
    # (1.1 s): two connect timeouts, not four. Once all are down: one per call. Counted, not
    # timed: a loaded machine that stalls the loop for under 0.5 s changes no count.
    assert attempts == [2, 2, 1, 1]


async def test_an_overloaded_replica_passes_the_call_on_and_stays_up() -> None:
    async def full(request: Request, writer: asyncio.StreamWriter) -> None:
        await answer(writer, response(429, {"error": "Queue full.", "error_type": "overloaded"}))

    async with servers(full, ok) as (a, b):
        up = upstream([a.url, b.url])
        for _ in range(4):
            assert await up.json("POST", "/v1/embed/text", json={}) == {"ok": True}
        assert calls(b) == 4 and calls(a) >= 1
        assert all(r.up for r in up.replicas.replicas)
        await up.aclose()
    async with servers(full, full) as (a, b):
        up = upstream([a.url, b.url])
        with pytest.raises(GlimpseError) as info:
            await up.request("POST", "/v1/embed/text", json={})
        await up.aclose()
    # None had room: the overload itself is the answer, passed on as it came.
    assert (info.value.status, info.value.error_type) == (429, "overloaded")
    assert calls(a) + calls(b) == 2
