"""A lean keep-alive HTTP/1.1 client pool for the gateway's calls to its upstreams.

Every search makes two upstream calls, so the client's CPU is most of the gateway's cost, and
this pool (an ``asyncio.Protocol`` feeding ``httptools``, the parser uvicorn uses) costs about a
tenth of httpx's per call (bench/bench_search.py). It speaks plain ``http://`` only: the encoder
and the index sit on a private network next to the gateway, so there is no TLS, no proxy, no
redirects, no cookies. It sends no ``HEAD`` requests (their answers carry no body).

One file, over 400 lines: the pool, the protocol and the request writer share the connection
state and are pinned together to httptools' callbacks; nothing else in the repository uses them.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import httptools
import orjson

Body = bytes | Sequence[bytes]  # a sequence is sent piece by piece, never joined

_ONE_WRITE = 64 * 1024  # head + body up to this size go out in a single write
_PIECE = 1024 * 1024  # bigger bodies: slices of this size, each once the socket drains


class UpstreamError(Exception):
    """The exchange with the upstream failed (base class)."""


class UpstreamConnectError(UpstreamError):
    """No connection: refused, unknown host, or no answer within the connect timeout."""


class UpstreamTimeout(UpstreamError):
    """The upstream stayed silent for the whole read timeout (or no pooled slot came free)."""


class UpstreamDisconnected(UpstreamError):
    """The connection closed or broke before the whole response arrived."""

    def __init__(self, message: str, *, received: bool, reused: bool) -> None:
        super().__init__(message)
        self.received = received  # some of the response had arrived
        self.reused = reused  # a pooled keep-alive connection (the peer may have closed it idle)


class UpstreamProtocolError(UpstreamError):
    """The upstream's answer is not valid HTTP/1.1, or is larger than the pool accepts."""


class Reply:
    """A whole response: status, headers (lower-case names), body."""

    __slots__ = ("status_code", "headers", "content")

    def __init__(self, status_code: int, headers: dict[str, str], content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content

    def json(self) -> Any:
        # orjson.JSONDecodeError is a ValueError, on bad JSON and bad UTF-8 alike.
        return orjson.loads(self.content)


def json_body(value: Any) -> tuple[bytes, str]:
    return orjson.dumps(value), "application/json"


def _quote(value: str) -> str:
    # What browsers do to names in Content-Disposition (WHATWG multipart/form-data encoding).
    return value.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def multipart_body(
    fields: Mapping[str, str], files: Sequence[tuple[str, tuple[str, bytes, str]]]
) -> tuple[list[bytes], str]:
    """multipart/form-data of text fields and (field, (filename, bytes, content type)) files,
    as pieces: the file bytes are referenced, not copied into one big body."""
    boundary = secrets.token_hex(16)
    pieces: list[bytes] = []
    for name, value in fields.items():
        pieces.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{_quote(name)}"\r\n\r\n'
            f"{value}\r\n".encode()
        )
    for name, (filename, content, content_type) in files:
        disposition = f'form-data; name="{_quote(name)}"; filename="{_quote(filename)}"'
        pieces.append(
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
            f"Content-Type: {_quote(content_type)}\r\n\r\n".encode()
        )
        pieces += (content, b"\r\n")
    pieces.append(f"--{boundary}--\r\n".encode())
    return pieces, f"multipart/form-data; boundary={boundary}"


class _Connection(asyncio.Protocol):
    """One TCP connection, one request at a time; httptools calls the ``on_*`` methods."""

    def __init__(self, pool: HttpPool, loop: asyncio.AbstractEventLoop, pooled: bool) -> None:
        self.pool, self.loop, self.pooled = pool, loop, pooled
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = self.reused = self.keep_alive = self.paused = False
        self.waiter: asyncio.Future[Reply] | None = None  # the response being read
        self.drained: asyncio.Future[None] | None = None  # a big body's sender, waiting to write
        self.timer: asyncio.TimerHandle | None = None
        self.last_activity = 0.0
        # The response being read (reset by each exchange).
        self.received = self.headers_done = False
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP connection's transport
        self.pool._all.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake_sender()
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            if self.headers_done and self._ends_at_eof():
                self.on_message_complete()
            else:
                waiter.set_exception(UpstreamDisconnected(
                    f"connection closed before a whole response ({exc or 'EOF'})",
                    received=self.received, reused=self.reused,
                ))
        self.pool._lost(self)

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():
            self.abort()  # bytes nobody asked for: this connection cannot be trusted
            return
        self.received = True
        self.last_activity = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            cause = exc.__context__  # a callback's own exception (too large) comes wrapped
            self.fail(cause if isinstance(cause, UpstreamError) else UpstreamProtocolError(
                f"malformed HTTP response: {exc}"
            ))

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.last_activity = self.loop.time()  # the upstream is reading: not silent
        self._wake_sender()

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_headers_complete(self) -> None:
        self.headers_done = True
        if int(self.headers.get("content-length") or 0) > self.pool.max_response_bytes:
            raise UpstreamProtocolError(f"response over {self.pool.max_response_bytes} bytes")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.size += len(body)
        if self.size > self.pool.max_response_bytes:
            raise UpstreamProtocolError(f"response over {self.pool.max_response_bytes} bytes")

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.keep_alive = not self.closed and self.parser.should_keep_alive()
            status = self.parser.get_status_code()
            self.waiter.set_result(Reply(status, self.headers, b"".join(self.body)))

    def _ends_at_eof(self) -> bool:
        # A response with neither length nor chunking is delimited by the connection's close.
        return "content-length" not in self.headers and "chunked" not in self.headers.get(
            "transfer-encoding", ""
        )

    def _wake_sender(self) -> None:
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def fail(self, error: UpstreamError) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)
        self.abort()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()  # connection_lost follows on the next loop iteration

    def _on_timer(self, timeout: float) -> None:
        silent = self.loop.time() - self.last_activity
        if silent < timeout:  # data came meanwhile: re-arm for the rest of the silence
            self.timer = self.loop.call_later(timeout - silent, self._on_timer, timeout)
        else:
            self.fail(UpstreamTimeout(f"no answer from the upstream within {timeout:g} s"))

    async def exchange(self, head: bytes, body: Body, timeout: float) -> Reply:
        """Send one request, wait for its whole response (``keep_alive`` says what it allows)."""
        assert self.transport is not None
        if self.closed:
            raise UpstreamDisconnected("pooled connection already closed", received=False,
                                       reused=True)
        self.waiter = waiter = self.loop.create_future()
        self.received = self.headers_done = self.keep_alive = False
        self.headers, self.body, self.size = {}, [], 0
        self.last_activity = self.loop.time()
        # One timer per request; it re-arms itself while data flows, so the timeout bounds
        # silence (like httpx's read timeout), not the length of a big but steady exchange.
        self.timer = self.loop.call_later(timeout, self._on_timer, timeout)
        try:
            if isinstance(body, bytes) and len(body) + len(head) <= _ONE_WRITE:
                self.transport.write(head + body)  # one send() for the usual request
            else:
                self.transport.write(head)
                await self._send_big(body)
            return await waiter
        finally:
            if self.timer is not None:
                self.timer.cancel()
            self.waiter = None
            if not waiter.done():
                waiter.cancel()
            elif not waiter.cancelled():
                waiter.exception()  # mark it retrieved when the sender stopped first

    async def _send_big(self, body: Body) -> None:
        # Groups of about _PIECE bytes, each handed over in one writelines call once the socket
        # has drained the previous ones: a 100 MB ingest body is neither joined nor copied whole
        # into the transport's buffer. uvloop sends a group with one writev and copies nothing;
        # one write per piece was three send() calls per uploaded file (its part header, its
        # bytes, the CRLF after them), kernel CPU bench/bench_ingest.py showed per image.
        group: list[bytes | memoryview] = []
        size = 0
        for piece in [body] if isinstance(body, bytes) else body:
            slices = [piece] if len(piece) <= _PIECE else [
                memoryview(piece)[start:start + _PIECE] for start in range(0, len(piece), _PIECE)
            ]
            for chunk in slices:
                group.append(chunk)
                size += len(chunk)
                if size >= _PIECE:
                    if not await self._write_when_drained(group):
                        return
                    group, size = [], 0
        if group:
            await self._write_when_drained(group)

    async def _write_when_drained(self, group: list[bytes | memoryview]) -> bool:
        """Write ``group`` once the transport is below its high-water mark; False (and nothing
        written) when the exchange is over: answered, failed or closed before the whole body
        went out."""
        assert self.transport is not None and self.waiter is not None
        while self.paused and not (self.closed or self.waiter.done()):
            self.drained = self.loop.create_future()
            await self.drained
        if self.closed or self.waiter.done():
            self.keep_alive = False
            return False
        self.transport.writelines(group)
        return True


class HttpPool:
    """Keep-alive HTTP/1.1 connections to one upstream, at most ``max_connections`` at once.

    ``base_url`` is ``http://host[:port][/prefix]``; request paths are joined under the prefix.
    https is refused (ValueError): the upstreams are on a private network. ``address``, when
    given, is where connections go instead of the URL's host (one resolved address of a name
    that several replicas answer to); the Host header still names the URL's host.
    """

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int,
        max_response_bytes: int = 64 * 1024 * 1024,
        address: str | None = None,
    ) -> None:
        url = urllib.parse.urlsplit(base_url)
        if url.scheme != "http" or not url.hostname or url.username or url.query or url.fragment:
            raise ValueError(
                f"upstream URL {base_url!r}: expected http://host[:port][/prefix] (plain http: "
                "the upstreams are on a private network)"
            )
        self.base_url = base_url
        self.port = url.port or 80  # .port raises ValueError if bad
        self.host = address or url.hostname
        self._host_header = url.netloc.encode("ascii")
        self._prefix = url.path.rstrip("/")
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.max_connections = max_connections
        self.max_response_bytes = max_response_bytes
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()  # every open connection, for aclose
        self._size = 0  # connections open or opening, pooled ones only
        self._waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Body = b"",
        content_type: str | None = None,
        params: Mapping[str, str | int] | None = None,
        timeout: float | None = None,
        pooled: bool = True,
    ) -> Reply:
        """``pooled=False``: a fresh connection outside the limit, closed after (health checks
        must not queue behind calls to a busy upstream)."""
        target = urllib.parse.quote(self._prefix + path, safe="/%:@!$&'()*+,;=~")
        if params:
            target += "?" + urllib.parse.urlencode(params)
        size = len(body) if isinstance(body, bytes) else sum(len(piece) for piece in body)
        if size <= _ONE_WRITE and not isinstance(body, bytes):
            body = b"".join(body)  # a small form (one query image): one write, one send()
        head = f"{method} {target} HTTP/1.1\r\nHost: ".encode() + self._host_header
        if size or method not in ("GET", "DELETE"):
            head += b"\r\nContent-Length: %d" % size
        if content_type:
            head += b"\r\nContent-Type: " + content_type.encode("latin-1")
        head += b"\r\n\r\n"
        timeout = self.read_timeout if timeout is None else timeout
        conn = await (self._acquire(timeout) if pooled else self._connect(pooled=False))
        try:
            return await conn.exchange(head, body, timeout)
        finally:
            # A cancelled or failed exchange leaves the connection in an unknown state: drop it
            # (its slot is freed in connection_lost).
            if pooled and conn.keep_alive and not conn.closed:
                conn.reused = True
                self._handoff(conn)
            else:
                conn.abort()

    async def _acquire(self, timeout: float) -> _Connection:
        if self._idle:  # connection_lost takes closed ones out
            return self._idle.pop()  # LIFO: the warmest; the rest may idle out on the server
        if self._size < self.max_connections:
            self._size += 1
        else:  # wait, first come first served, for a released connection or a freed slot
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                got = await asyncio.wait_for(waiter, timeout)  # a task only on this slow path
            except (asyncio.CancelledError, asyncio.TimeoutError) as exc:
                if waiter.done() and not waiter.cancelled():
                    self._handoff(waiter.result())  # handed to us as we gave up: pass it on
                if isinstance(exc, asyncio.TimeoutError):
                    raise UpstreamTimeout(f"no free connection within {timeout:g} s") from None
                raise
            if got is not None:
                return got
            # None: a slot was freed and is now ours
        try:
            return await self._connect()
        except BaseException:
            self._handoff(None)
            raise

    async def _connect(self, *, pooled: bool = True) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(self, loop, pooled), self.host, self.port
                ),
                self.connect_timeout,
            )
        except asyncio.TimeoutError:
            raise UpstreamConnectError(
                f"no connection to {self.host}:{self.port} within {self.connect_timeout:g} s"
            ) from None
        except OSError as exc:  # refused, unreachable, unknown host
            raise UpstreamConnectError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        return conn

    def _handoff(self, conn: _Connection | None) -> None:
        """Give a released connection (or, for None, a freed slot) to the first live waiter."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if conn is None:
            self._size -= 1
        else:
            self._idle.append(conn)

    def _lost(self, conn: _Connection) -> None:
        """connection_lost of any of our connections: a pooled one frees its slot."""
        self._all.discard(conn)
        if conn.pooled:
            if conn in self._idle:
                self._idle.remove(conn)
            self._handoff(None)

    async def aclose(self) -> None:
        for conn in list(self._all):
            conn.abort()
        await asyncio.sleep(0)  # let connection_lost run: it closes the sockets
