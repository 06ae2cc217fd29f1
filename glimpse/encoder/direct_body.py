"""uvicorn's httptools protocol, with the bodies of chosen routes read straight from the socket
into one buffer.

Through uvicorn's own protocol every byte of an upload is copied five times in user space
before a route sees it (uvloop's read makes a bytes object, httptools' body callback another,
uvicorn appends it to a bytearray, ``receive`` copies that into bytes, and the route joins the
64 KiB pieces), with a pause and a resume of the socket and a task wake-up per piece. Measured
with bench/bench_host.py, the copies alone were ~23 % of the event loop's CPU per image.

This protocol is an ``asyncio.BufferedProtocol`` (uvloop and asyncio both read into the buffer
it hands out). For a request to one of ``routes`` that declares a Content-Length within
``limit``, it allocates one buffer of that size when the headers are parsed, and the socket is
read straight into it: the kernel's copy is the only one. The route gets the whole buffer at
once from ``read_direct_body`` (the ``glimpse.direct_body`` scope extension: a future of the
bytearray). Every other request goes through uvicorn's own code unchanged, so do chunked
bodies, ``Expect: 100-continue`` and pipelined requests.

HTTP parsing stays httptools' (and uvicorn's): the body's first bytes arrive with the headers
and reach the buffer through httptools' body callback; the rest bypasses the parser, which is
replaced by a fresh one when the body is complete (it still counts the bytes it did not see).

The answers to those requests go out in one write (``_OneWriteResponse``): uvicorn writes the
status line and headers, then the body, and each write on a socket costs a system call and
on loopback the peer's wake-up (py-spy put the header write at 10 % of the event loop).
"""

from __future__ import annotations

import asyncio
import ctypes
from typing import Any

import httptools
from starlette.requests import ClientDisconnect
from starlette.types import Scope
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

EXTENSION = "glimpse.direct_body"

# What one read may fill while no body is being read directly (headers, small bodies).
_SCRATCH_BYTES = 64 * 1024


async def read_direct_body(scope: Scope) -> bytearray | None:
    """The request's whole body when the server read it directly (None when it did not, and
    the route must read it through ``receive``). Raises ClientDisconnect if the client went
    away before sending all of it."""
    future: asyncio.Future[bytearray] | None = scope.get("extensions", {}).get(EXTENSION)
    if future is None:
        return None
    return await future


_new_bytearray = ctypes.pythonapi.PyByteArray_FromStringAndSize
_new_bytearray.restype = ctypes.py_object  # (ctypes takes the new reference it returns)
_new_bytearray.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)


def uninitialized_bytearray(size: int) -> bytearray:
    """A bytearray of ``size`` bytes left as malloc gave them. ``bytearray(size)`` writes zeros
    over all of it as soon as the headers declare a length: that cost ~15 % of the event loop at
    3.4 MB bodies (py-spy), and it made memory resident for a body that may never come (a
    client declaring the 256 MiB limit and sending nothing held 256 MiB). Left unwritten, a
    large buffer's pages become resident as the body's bytes arrive, and every byte is written
    by the body before anything reads the buffer (a disconnect discards it)."""
    buffer: bytearray = _new_bytearray(None, size)
    return buffer


class _DirectBody:
    """A body being read into its buffer."""

    __slots__ = ("buffer", "view", "received", "future", "bypassing_parser")

    def __init__(self, size: int, future: asyncio.Future[bytearray]) -> None:
        self.buffer = uninitialized_bytearray(size)
        self.view = memoryview(self.buffer)
        self.received = 0
        self.future = future
        # False while httptools still delivers the body (the read that held the headers);
        # True once the socket is read straight into the buffer.
        self.bypassing_parser = False


class _OneWriteResponse:
    """The transport as one response sees it: the status line and headers (its first write)
    are held and go out with the body's first write, in one system call."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._held: bytes | None = None
        self._first = True
        self._loop = loop

    def write(self, data: bytes) -> None:
        if self._first:
            self._first = False
            self._held = data
            # In case the body does not follow at once (a streamed answer): the next turn.
            self._loop.call_soon(self.flush)
            return
        held, self._held = self._held, None
        if held is not None:
            self._transport.writelines((held, data))
        else:
            self._transport.write(data)

    def flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class DirectBodyProtocol(asyncio.BufferedProtocol):
    """What the event loop sees of a connection: uvloop hands its buffers to a protocol only
    if it is not also an ``asyncio.Protocol``, as uvicorn's is, so this one forwards
    everything to the HTTP protocol (``http``) it holds. Made for an app by
    :func:`direct_body_protocol`."""

    routes: frozenset[tuple[str, str]] = frozenset()
    limit: int = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.http = DirectBodyHttp(*args, **kwargs)
        self.http.routes, self.http.limit = self.routes, self.limit

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.http.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.http.buffer_updated(nbytes)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.http.connection_made(transport)  # type: ignore[arg-type]  # a stream transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.http.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return self.http.eof_received()  # type: ignore[func-returns-value]  # None: close

    def pause_writing(self) -> None:
        self.http.pause_writing()

    def resume_writing(self) -> None:
        self.http.resume_writing()


class DirectBodyHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol with the direct body reads (the module docstring)."""

    routes: frozenset[tuple[str, str]] = frozenset()
    limit: int = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._scratch = memoryview(bytearray(_SCRATCH_BYTES))
        self._direct: _DirectBody | None = None

    # -- what the event loop calls (through DirectBodyProtocol) ---------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        direct = self._direct
        if direct is not None and direct.bypassing_parser:
            return direct.view[direct.received:]
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        direct = self._direct
        if direct is not None and direct.bypassing_parser:
            direct.received += nbytes
            if direct.received == len(direct.buffer):
                self._finish_direct(direct)
                # The parser saw the headers and the body's first bytes, and waits for the
                # rest it will never see: the next request starts with a fresh one.
                self.parser = httptools.HttpRequestParser(self)
                try:
                    self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
                except AttributeError:  # httptools < 0.6.3, as uvicorn
                    pass
            return
        self.data_received(self._scratch[:nbytes])  # type: ignore[arg-type]  # any buffer
        direct = self._direct
        if direct is not None:
            direct.bypassing_parser = True  # the rest of the body comes in later reads

    # -- uvicorn's parser callbacks -------------------------------------------------------------

    def on_headers_complete(self) -> None:
        previous = self.cycle
        super().on_headers_complete()
        scope = self.scope
        if (
            self.cycle is previous  # an upgrade: no request cycle
            or (scope["method"], scope["path"]) not in self.routes
            or self.expect_100_continue
            or self.pipeline  # a pipelined request waits; uvicorn's flow control handles it
        ):
            return
        size = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                size = int(value) if value.isdigit() else None
            elif name == b"transfer-encoding":
                return
        if size is None or not 0 < size <= self.limit:
            return  # the route refuses a declared length over its limit itself
        future: asyncio.Future[bytearray] = self.loop.create_future()
        self._direct = _DirectBody(size, future)
        # uvicorn's cycle writes its answer through its ``transport`` attribute.
        self.cycle.transport = _OneWriteResponse(  # type: ignore[assignment]
            self.transport, self.loop
        )
        # The request's task was created but has not run yet: it sees the extension.
        scope.setdefault("extensions", {})[EXTENSION] = future  # type: ignore[assignment]

    def on_body(self, body: bytes) -> None:
        direct = self._direct
        if direct is None:
            super().on_body(body)
            return
        end = direct.received + len(body)
        direct.view[direct.received:end] = body
        direct.received = end

    def on_message_complete(self) -> None:
        direct = self._direct
        if direct is None:
            super().on_message_complete()
            return
        self._finish_direct(direct)  # the whole body came with the headers' read

    def _finish_direct(self, direct: _DirectBody) -> None:
        self._direct = None
        if not direct.future.done():
            direct.future.set_result(direct.buffer)
        # A route that reads ``receive`` after all gets an empty, finished body.
        self.cycle.more_body = False
        self.cycle.message_event.set()

    def connection_lost(self, exc: Exception | None) -> None:
        direct, self._direct = self._direct, None
        if direct is not None and not direct.future.done():
            direct.future.set_exception(ClientDisconnect())
            # Retrieved here so that a route that never awaited it leaves no warning.
            direct.future.exception()
        super().connection_lost(exc)


def direct_body_protocol(
    routes: set[tuple[str, str]], limit: int
) -> type[DirectBodyProtocol]:
    """The protocol class for uvicorn's ``http`` setting: bodies of ``routes`` ((method,
    path)) up to ``limit`` bytes are read directly."""
    return type(
        "DirectBodyProtocol",
        (DirectBodyProtocol,),
        {"routes": frozenset(routes), "limit": limit, "__module__": __name__},
    )
