"""The upstream connection pool against a real TCP server whose every byte each test controls.

``FakeUpstream`` is shared with ``test_clients.py``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

import glimpse.gateway.http as http_module
from glimpse.gateway.http import (
    HttpPool,
    Reply,
    UpstreamConnectError,
    UpstreamDisconnected,
    UpstreamProtocolError,
    UpstreamTimeout,
    json_body,
)


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    connection: int  # which TCP connection (1, 2, ...) it came on
    number: int  # its position on that connection (1, 2, ...)


# Writes its answer (or not); returns False to close the connection afterwards.
Handler = Callable[[Request, asyncio.StreamWriter], Awaitable[bool | None]]


def response(
    status: int = 200,
    body: bytes | Any = b"",
    headers: dict[str, str] | None = None,
) -> bytes:
    """A whole HTTP/1.1 response with Content-Length; a non-bytes body is sent as JSON."""
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
        headers = {"content-type": "application/json", **(headers or {})}
    lines = [f"HTTP/1.1 {status} X", f"content-length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def answer(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


@dataclass
class FakeUpstream:
    """An HTTP/1.1 server on a free port; ``handler`` answers each parsed request."""

    handler: Handler
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    closed: int = 0  # connections that have ended
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    async def __aenter__(self) -> FakeUpstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        connection, number = self.connections, 0
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                method, target, _ = head[0].split(" ")
                headers = dict(line.split(": ", 1) for line in head[1:] if line)
                headers = {name.lower(): value for name, value in headers.items()}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                number += 1
                request = Request(method, target, headers, body, connection, number)
                self.requests.append(request)
                if await self.handler(request, writer) is False:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection
        finally:
            self.closed += 1
            writer.close()
            self._tasks.discard(task)


def pool(url: str, **options: Any) -> HttpPool:
    settings: dict[str, Any] = {"connect_timeout": 1.0, "read_timeout": 5.0, "max_connections": 4}
    return HttpPool(url, **(settings | options))


async def ok(request: Request, writer: asyncio.StreamWriter) -> None:
    await answer(writer, response(200, {"path": request.target}))


async def test_requests_reuse_one_keep_alive_connection() -> None:
    async with FakeUpstream(ok) as up:
        http = pool(up.url)
        body, content_type = json_body({"a": [1, 2]})
        replies = [
            await http.request("POST", "/v1/x", body=body, content_type=content_type),
            await http.request("GET", "/v1/y"),
        ]
        await http.aclose()
    assert [r.json() for r in replies] == [{"path": "/v1/x"}, {"path": "/v1/y"}]
    assert replies[0].status_code == 200
    assert replies[0].headers["content-type"] == "application/json"
    assert up.connections == 1
    first, second = up.requests
    assert first.body == b'{"a":[1,2]}'
    assert first.headers["content-type"] == "application/json"
    assert first.headers["host"] == up.url.removeprefix("http://")
    assert "content-length" not in second.headers  # a GET without a body


async def test_paths_join_under_the_base_url_prefix() -> None:
    async with FakeUpstream(ok) as up:
        http = pool(up.url + "/pre/")
        await http.request("GET", "/v1/items/7/vector", params={"encoding": "base64", "n": 2})
        await http.request("GET", "/v1/a b")
        await http.aclose()
    assert [r.target for r in up.requests] == [
        "/pre/v1/items/7/vector?encoding=base64&n=2",
        "/pre/v1/a%20b",
    ]


async def test_a_chunked_answer_is_read_whole_and_the_connection_kept() -> None:
    async def chunked(request: Request, writer: asyncio.StreamWriter) -> None:
        await answer(writer, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await asyncio.sleep(0.02)
        await answer(writer, b"6\r\n world\r\n0\r\n\r\n")

    async with FakeUpstream(chunked) as up:
        http = pool(up.url)
        replies = [await http.request("GET", "/"), await http.request("GET", "/")]
        await http.aclose()
    assert [r.content for r in replies] == [b"hello world"] * 2
    assert up.connections == 1


async def test_connection_close_is_honoured() -> None:
    async def closing(request: Request, writer: asyncio.StreamWriter) -> bool:
        await answer(writer, response(200, b"bye", {"connection": "close"}))
        return False

    async with FakeUpstream(closing) as up:
        http = pool(up.url)
        replies = [await http.request("GET", "/"), await http.request("GET", "/")]
        await http.aclose()
    assert [r.content for r in replies] == [b"bye", b"bye"]
    assert up.connections == 2


async def test_an_answer_without_length_ends_at_the_close() -> None:
    async def until_eof(request: Request, writer: asyncio.StreamWriter) -> bool:
        await answer(writer, b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\npart one, ")
        await asyncio.sleep(0.02)
        await answer(writer, b"part two")
        return False

    async with FakeUpstream(until_eof) as up:
        http = pool(up.url)
        replies = [await http.request("GET", "/"), await http.request("GET", "/")]
        await http.aclose()
    assert [r.content for r in replies] == [b"part one, part two"] * 2
    assert up.connections == 2


async def test_a_refused_connection_is_a_connect_error() -> None:
    with socket.socket() as sock:  # a port nobody listens on any more
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    http = pool(f"http://127.0.0.1:{port}")
    with pytest.raises(UpstreamConnectError):
        await http.request("GET", "/")
    await http.aclose()


async def test_a_silent_upstream_times_out_and_its_connection_is_dropped() -> None:
    async def silent_first(request: Request, writer: asyncio.StreamWriter) -> None:
        if request.connection == 1:
            await asyncio.sleep(30)
        await answer(writer, response(200, b"late"))

    async with FakeUpstream(silent_first) as up:
        http = pool(up.url, read_timeout=0.2)
        start = time.perf_counter()
        with pytest.raises(UpstreamTimeout):
            await http.request("GET", "/")
        assert 0.15 < time.perf_counter() - start < 1.0
        assert (await http.request("GET", "/")).content == b"late"  # on a new connection
        await http.aclose()
    assert up.connections == 2


async def test_the_read_timeout_bounds_silence_not_a_steady_answer() -> None:
    async def trickle(request: Request, writer: asyncio.StreamWriter) -> None:
        await answer(writer, b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\n")
        for byte in b"steady":
            await asyncio.sleep(0.1)
            await answer(writer, bytes([byte]))

    async with FakeUpstream(trickle) as up:
        http = pool(up.url, read_timeout=0.3)
        assert (await http.request("GET", "/")).content == b"steady"  # 0.6 s in all
        await http.aclose()


async def test_a_break_mid_answer_says_bytes_had_arrived() -> None:
    async def broken(request: Request, writer: asyncio.StreamWriter) -> bool:
        await answer(writer, b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
        return False

    async with FakeUpstream(broken) as up:
        http = pool(up.url)
        with pytest.raises(UpstreamDisconnected) as info:
            await http.request("GET", "/")
        await http.aclose()
    assert (info.value.received, info.value.reused) == (True, False)


async def test_a_pooled_connection_closed_by_the_peer_fails_before_any_byte() -> None:
    async def once_per_connection(request: Request, writer: asyncio.StreamWriter) -> bool:
        if request.number > 1:
            return False  # closed just as the client reused it
        await answer(writer, response(200, b"ok"))
        return True

    async with FakeUpstream(once_per_connection) as up:
        http = pool(up.url)
        await http.request("GET", "/")
        with pytest.raises(UpstreamDisconnected) as info:
            await http.request("GET", "/")
        assert (info.value.received, info.value.reused) == (False, True)
        assert (await http.request("GET", "/")).content == b"ok"  # a fresh connection
        await http.aclose()


async def test_an_idle_connection_the_peer_closed_is_skipped() -> None:
    async def answer_then_close(request: Request, writer: asyncio.StreamWriter) -> bool:
        await answer(writer, response(200, b"ok"))  # keep-alive, then closed anyway
        return False

    async with FakeUpstream(answer_then_close) as up:
        http = pool(up.url, max_connections=1)
        await http.request("GET", "/")
        await asyncio.sleep(0.05)  # the close arrives while the connection is idle
        assert (await http.request("GET", "/")).content == b"ok"
        await http.aclose()
    assert up.connections == 2


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_an_answer_over_the_size_limit_is_refused(framing: str) -> None:
    async def big(request: Request, writer: asyncio.StreamWriter) -> None:
        if framing == "chunked":
            await answer(writer, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            await answer(writer, b"400\r\n" + b"x" * 0x400 + b"\r\n0\r\n\r\n")
        else:
            await answer(writer, response(200, b"x" * 1024))

    async with FakeUpstream(big) as up:
        http = pool(up.url, max_response_bytes=1000)
        with pytest.raises(UpstreamProtocolError, match="over 1000 bytes"):
            await http.request("GET", "/")
        await http.aclose()


async def test_malformed_http_is_a_protocol_error() -> None:
    async def garbage(request: Request, writer: asyncio.StreamWriter) -> None:
        await answer(writer, b"SMTP ready\r\n\r\n")

    async with FakeUpstream(garbage) as up:
        http = pool(up.url)
        with pytest.raises(UpstreamProtocolError):
            await http.request("GET", "/")
        await http.aclose()


async def test_a_cancelled_request_closes_its_connection_and_frees_its_slot() -> None:
    async def stuck_first(request: Request, writer: asyncio.StreamWriter) -> None:
        if request.connection == 1:
            await asyncio.sleep(30)
        await answer(writer, response(200, b"ok"))

    async with FakeUpstream(stuck_first) as up:
        http = pool(up.url, max_connections=1)
        task = asyncio.ensure_future(http.request("GET", "/"))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        reply = await asyncio.wait_for(http.request("GET", "/", timeout=1.0), 2.0)
        assert reply.content == b"ok"
        await http.aclose()
    assert up.connections == 2


async def test_the_pool_holds_at_most_max_connections_and_queues_the_rest() -> None:
    busy = peak = 0

    async def slow(request: Request, writer: asyncio.StreamWriter) -> None:
        nonlocal busy, peak
        busy += 1
        peak = max(peak, busy)
        await asyncio.sleep(0.05)
        busy -= 1
        await answer(writer, response(200, request.target.encode()))

    async with FakeUpstream(slow) as up:
        http = pool(up.url, max_connections=2)
        replies = await asyncio.gather(*(http.request("GET", f"/{i}") for i in range(6)))
        assert [r.content for r in replies] == [f"/{i}".encode() for i in range(6)]
        # Idle connections are reused last-in first-out: one of them serves everything now.
        for _ in range(3):
            await http.request("GET", "/again")
        await http.aclose()
    assert (peak, up.connections) == (2, 2)
    assert len({r.connection for r in up.requests[-3:]}) == 1


async def test_waiting_for_a_free_connection_is_bounded_by_the_timeout() -> None:
    async def stuck(request: Request, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async with FakeUpstream(stuck) as up:
        http = pool(up.url, max_connections=1)
        first = asyncio.ensure_future(http.request("GET", "/"))
        await asyncio.sleep(0.05)
        with pytest.raises(UpstreamTimeout, match="no free connection"):
            await http.request("GET", "/", timeout=0.2)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        await http.aclose()


async def test_an_unpooled_request_does_not_queue_behind_the_pool() -> None:
    async def health_only(request: Request, writer: asyncio.StreamWriter) -> bool:
        if request.target != "/healthz":
            await asyncio.sleep(30)
        await answer(writer, response(200, b"alive"))
        return False

    async with FakeUpstream(health_only) as up:
        http = pool(up.url, max_connections=1)
        stuck = asyncio.ensure_future(http.request("GET", "/slow"))
        await asyncio.sleep(0.05)
        reply = await http.request("GET", "/healthz", timeout=1.0, pooled=False)
        assert reply.content == b"alive"
        stuck.cancel()
        await asyncio.gather(stuck, return_exceptions=True)
        await http.aclose()


async def test_a_big_body_in_pieces_arrives_whole() -> None:
    async def echo_size(request: Request, writer: asyncio.StreamWriter) -> None:
        tail = request.body[-4:].hex()
        await answer(writer, response(200, {"n": len(request.body), "tail": tail}))

    pieces = [b"a" * 3_000_000, b"", b"b" * 1_500_001, b"end!"]
    async with FakeUpstream(echo_size) as up:
        http = pool(up.url)
        reply = await http.request("POST", "/big", body=pieces, content_type="x/y")
        small = await http.request("POST", "/small", body=b"abc")
        await http.aclose()
    assert reply.json() == {"n": 4_500_005, "tail": b"end!".hex()}
    assert small.json()["n"] == 3
    assert up.connections == 1


async def test_many_pieces_go_out_in_few_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    # An ingest body is three pieces per file; each piece in its own write was three send()
    # calls per file. They go out in groups of about a megabyte, one writelines call each.
    calls: list[tuple[str, int]] = []
    made = http_module._Connection.connection_made

    def counted(conn: Any, transport: Any) -> None:
        write, writelines = transport.write, transport.writelines

        class Counting:
            def __getattr__(self, name: str) -> Any:
                return getattr(transport, name)

            def write(self, data: Any) -> None:
                calls.append(("write", 1))
                write(data)

            def writelines(self, data: list[Any]) -> None:
                calls.append(("writelines", len(data)))
                writelines(data)

        made(conn, Counting())

    monkeypatch.setattr(http_module._Connection, "connection_made", counted)

    async def echo_size(request: Request, writer: asyncio.StreamWriter) -> None:
        await answer(writer, response(200, {"n": len(request.body)}))

    pieces = [b"x" * 100, b"y" * 60_000, b"\r\n"] * 40  # 2.4 MB in 120 pieces
    async with FakeUpstream(echo_size) as up:
        http = pool(up.url)
        reply = await http.request("POST", "/ingest-like", body=pieces, content_type="x/y")
        await http.aclose()
    assert reply.json() == {"n": sum(map(len, pieces))}
    assert calls[0] == ("write", 1)  # the request head
    assert [kind for kind, _ in calls[1:]] == ["writelines"] * 3
    assert sum(n for _, n in calls[1:]) == len(pieces)


async def test_aclose_closes_every_connection() -> None:
    async with FakeUpstream(ok) as up:
        http = pool(up.url)
        await asyncio.gather(*(http.request("GET", "/") for _ in range(3)))
        await http.aclose()
        await asyncio.sleep(0.05)
        assert up.closed == up.connections > 0


@pytest.mark.parametrize(
    "url", ["https://index:8002", "ftp://x", "http://", "index:8002", "http://h:99999",
            "http://user:pw@h:1", "http://h/?q=1"]
)
def test_only_plain_http_urls_are_accepted(url: str) -> None:
    with pytest.raises(ValueError):
        pool(url)


def test_a_reply_with_bad_json_raises_value_error() -> None:
    for content in (b"{not json", b"\xff\xfe"):
        with pytest.raises(ValueError):
            Reply(200, {}, content).json()


async def test_an_address_is_connected_to_while_the_host_header_names_the_url() -> None:
    # One replica of a name that resolves to several addresses: the connection goes to the
    # address, the request still names the service.
    async with FakeUpstream(ok) as up:
        port = up.url.rsplit(":", 1)[1]
        http = pool(f"http://encoder:{port}/pre", address="127.0.0.1")
        reply = await http.request("GET", "/v1/info")
        await http.aclose()
    assert reply.json() == {"path": "/pre/v1/info"}
    assert up.requests[0].headers["host"] == f"encoder:{port}"
