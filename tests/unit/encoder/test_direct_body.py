"""glimpse/encoder/direct_body.py under a real uvicorn server (uvloop and asyncio loops), over
raw sockets: which requests are read directly, whole bodies in every way they can arrive,
keep-alive and pipelining after a direct body, and a client that goes away mid-body."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from starlette.requests import ClientDisconnect

from glimpse.encoder.direct_body import (
    DirectBodyProtocol,
    _DirectBody,
    direct_body_protocol,
    read_direct_body,
    uninitialized_bytearray,
)

LIMIT = 4 * 1024 * 1024
DISCONNECTS: list[str] = []


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with how the body came (direct or through receive), its length and sha256."""
    if scope["type"] != "http":
        return
    try:
        direct = await read_direct_body(scope)
    except ClientDisconnect:
        DISCONNECTS.append(scope["path"])
        return
    if direct is not None:
        how, body = "direct", bytes(direct)
        assert type(direct) is bytearray
    else:
        how, chunks, more = "receive", [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
    answer = json.dumps(
        {"how": how, "length": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    ).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture(scope="module", params=["uvloop", "asyncio"])
def server(request: pytest.FixtureRequest) -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        echo_app, host="127.0.0.1", port=port, loop=request.param, lifespan="off",
        http=direct_body_protocol({("POST", "/direct")}, LIMIT), log_level="warning",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    yield port
    server.should_exit = True
    thread.join(10)


def _request(path: str, body: bytes, extra: str = "", length: bool = True) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\n{extra}"
    if length:
        head += f"Content-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


def _read_answer(sock: socket.socket, buffered: bytearray) -> dict[str, Any]:
    while b"\r\n\r\n" not in buffered:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before an answer"
        buffered += chunk
    head, _, rest = bytes(buffered).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    buffered[:] = rest[length:]
    return dict(json.loads(rest[:length]))


def _expect(answer: dict[str, Any], how: str, body: bytes) -> None:
    assert answer == {"how": how, "length": len(body),
                      "sha256": hashlib.sha256(body).hexdigest()}


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


@pytest.mark.parametrize("size", [1, 1000, 64 * 1024 - 100, 64 * 1024, 300_000, LIMIT])
def test_whole_body_in_one_send(server: int, size: int) -> None:
    body = os.urandom(size)
    with _connect(server) as sock:
        sock.sendall(_request("/direct", body))
        _expect(_read_answer(sock, bytearray()), "direct", body)


def test_body_in_small_pieces_then_keep_alive(server: int) -> None:
    """Pieces with pauses (so the socket is read many times, straight into the buffer), then
    more requests on the same connection: the parser starts afresh after a direct body."""
    body = os.urandom(500_000)
    request = _request("/direct", body)
    buffered = bytearray()
    with _connect(server) as sock:
        for at in range(0, len(request), 70_001):
            sock.sendall(request[at:at + 70_001])
            time.sleep(0.002)
        _expect(_read_answer(sock, buffered), "direct", body)
        small = os.urandom(10)
        sock.sendall(_request("/direct", small))
        _expect(_read_answer(sock, buffered), "direct", small)
        sock.sendall(_request("/other", body))
        _expect(_read_answer(sock, buffered), "receive", body)
        sock.sendall(request)
        _expect(_read_answer(sock, buffered), "direct", body)


def test_pipelined_requests(server: int) -> None:
    """Requests sent back to back before any answer: each gets its own body, in order."""
    bodies = [os.urandom(n) for n in (200_000, 10, 150_000, 70_000)]
    paths = ["/direct", "/direct", "/other", "/direct"]
    buffered = bytearray()
    with _connect(server) as sock:
        sock.sendall(b"".join(_request(p, b) for p, b in zip(paths, bodies, strict=True)))
        answers = [_read_answer(sock, buffered) for _ in bodies]
    for answer, body in zip(answers, bodies, strict=True):
        assert answer["length"] == len(body)
        assert answer["sha256"] == hashlib.sha256(body).hexdigest()
    assert answers[0]["how"] == "direct" and answers[2]["how"] == "receive"


@pytest.mark.parametrize(
    "path, extra, why",
    [
        ("/other", "", "another route"),
        ("/direct", "Expect: 100-continue\r\n", "100-continue: uvicorn answers it"),
    ],
)
def test_requests_read_through_receive(server: int, path: str, extra: str, why: str) -> None:
    body = os.urandom(100_000)
    with _connect(server) as sock:
        sock.sendall(_request(path, body, extra))
        buffered = bytearray()
        if extra:  # the interim answer comes first
            while b"\r\n\r\n" not in buffered:
                buffered += sock.recv(65536)
            assert buffered.startswith(b"HTTP/1.1 100")
            buffered[:] = buffered[buffered.index(b"\r\n\r\n") + 4:]
        _expect(_read_answer(sock, buffered), "receive", body)


def test_over_the_limit_and_chunked_bodies_go_through_receive(server: int) -> None:
    body = os.urandom(LIMIT + 1)
    with _connect(server) as sock:
        sock.sendall(_request("/direct", body))
        _expect(_read_answer(sock, bytearray()), "receive", body)
    small = os.urandom(5000)
    chunked = f"{len(small):x}\r\n".encode() + small + b"\r\n0\r\n\r\n"
    with _connect(server) as sock:
        sock.sendall(_request("/direct", chunked, "Transfer-Encoding: chunked\r\n", False))
        _expect(_read_answer(sock, bytearray()), "receive", small)


def test_a_client_gone_mid_body_is_a_disconnect(server: int) -> None:
    body = os.urandom(300_000)
    request = _request("/direct", body)
    with _connect(server) as sock:
        sock.sendall(request[: len(request) // 2])
        time.sleep(0.1)
    deadline = time.monotonic() + 5
    while "/direct" not in DISCONNECTS:
        assert time.monotonic() < deadline, "the route never heard of the disconnect"
        time.sleep(0.02)
    DISCONNECTS.clear()
    # The server still answers.
    with _connect(server) as sock:
        sock.sendall(request)
        _expect(_read_answer(sock, bytearray()), "direct", body)


def test_the_loop_sees_a_buffered_protocol() -> None:
    """uvloop gives its buffers only to a protocol that is not also an asyncio.Protocol."""
    protocol = direct_body_protocol({("POST", "/x")}, 10)
    assert issubclass(protocol, asyncio.BufferedProtocol)
    assert not issubclass(protocol, asyncio.Protocol)
    assert issubclass(protocol, DirectBodyProtocol)
    assert protocol.routes == frozenset({("POST", "/x")}) and protocol.limit == 10


class _RecordingTransport:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", bytes(data)))

    def writelines(self, items: Any) -> None:
        self.calls.append(("writelines", b"".join(items)))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True
        self.calls.append(("close", b""))

    def get_extra_info(self, name: str) -> str:
        return f"extra {name}"


async def test_an_answer_goes_out_in_one_write() -> None:
    from glimpse.encoder.direct_body import _OneWriteResponse

    transport = _RecordingTransport()
    writer = _OneWriteResponse(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
    writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
    writer.write(b"body")
    writer.write(b"more")
    await asyncio.sleep(0)  # the safety flush finds nothing held
    assert transport.calls == [("writelines", b"HTTP/1.1 200 OK\r\n\r\nbody"),
                               ("write", b"more")]
    assert writer.get_extra_info("peername") == "extra peername"


async def test_headers_without_a_body_at_once_go_out_on_the_next_turn() -> None:
    from glimpse.encoder.direct_body import _OneWriteResponse

    loop = asyncio.get_running_loop()
    transport = _RecordingTransport()
    writer = _OneWriteResponse(transport, loop)  # type: ignore[arg-type]
    writer.write(b"head")
    assert transport.calls == []
    await asyncio.sleep(0)
    assert transport.calls == [("write", b"head")]
    writer.write(b"chunk")
    assert transport.calls[-1] == ("write", b"chunk")
    closing = _RecordingTransport()
    writer = _OneWriteResponse(closing, loop)  # type: ignore[arg-type]
    writer.write(b"head")
    writer.close()  # what was held goes out before the close
    assert closing.calls == [("write", b"head"), ("close", b"")]


def _resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux's /proc")
def test_a_declared_length_does_not_make_memory_resident_before_the_body_comes() -> None:
    # A body buffer is allocated when the headers declare its length; bytearray(size) would
    # write zeros over all of it at once, so clients declaring the limit and sending nothing
    # could hold that much memory each. Unwritten, its pages stay out of memory until bytes
    # arrive, and what arrives is what the buffer holds.
    before = _resident_mib()
    bodies = [_DirectBody(64 * 2**20, asyncio.Future(loop=asyncio.new_event_loop()))
              for _ in range(8)]  # 512 MiB declared
    assert _resident_mib() - before < 64
    first = bodies[0]
    first.view[: 2**20] = b"\x07" * 2**20
    assert bytes(first.buffer[:16]) == b"\x07" * 16 and len(first.buffer) == 64 * 2**20
    assert type(uninitialized_bytearray(3)) is bytearray and len(uninitialized_bytearray(0)) == 0
