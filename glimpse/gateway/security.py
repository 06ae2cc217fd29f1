"""Request body limits, slow clients and the API key.

The body guard is one pure ASGI middleware over each request's ``receive``: it refuses a
declared Content-Length over the limit before reading anything, and counts the bytes of every
received chunk (chunked uploads have no Content-Length), so an oversize body is cut off at the
limit instead of being spooled whole.

Slow clients are timed out in two places, because uvicorn has only a keep-alive timeout: the
headers by :class:`SlowClientProtocol`, uvicorn's own HTTP protocol with a deadline (an ASGI
app is called only once the headers are in), the body by :class:`BodyGuardMiddleware`, which
bounds each wait of the app for the next piece of the body (so a slow app that has not asked
for more yet is never taken for a slow client).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from fastapi import HTTPException, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from glimpse.contracts.errors import ErrorType, GlimpseError
from glimpse.web.handlers import error_answer


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when the body passes the limit.

    A FastAPI HTTPException, so FastAPI's body parsing re-raises it unchanged (any other
    exception there becomes a 400) and the error handlers answer 413 with the error body.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(
            status_code=413, detail=f"The request body is larger than the limit of {limit} bytes."
        )


class BodyTimeout(HTTPException):
    """Raised from ``receive`` when the client sends nothing more of its body in time; an
    HTTPException for the same reason as :class:`BodyTooLarge`."""

    def __init__(self, timeout: float) -> None:
        super().__init__(
            status_code=408,
            detail=f"The request body stopped arriving: nothing more came in {timeout:g} s.",
            headers={"Connection": "close"},
        )


if sys.version_info >= (3, 11):
    # A third of the CPU of anyio's cancel scope, paid on every body read of every request.
    _deadline = asyncio.timeout
else:

    @contextlib.asynccontextmanager
    async def _deadline(delay: float) -> AsyncIterator[None]:
        with anyio.fail_after(delay):
            yield


def guarded_receive(receive: Receive, limit: int, timeout: float) -> Receive:
    """``receive`` that raises :class:`BodyTooLarge` once the body passes ``limit`` bytes
    (counted as it arrives, so a chunked body without Content-Length is cut off too) and
    :class:`BodyTimeout` when a piece of it takes longer than ``timeout`` seconds; once the
    body is complete, waits (for a disconnect) are not bounded."""
    received = 0
    complete = False

    async def guarded() -> Message:
        nonlocal received, complete
        if complete:
            return await receive()
        try:
            async with _deadline(timeout):
                message = await receive()
        except TimeoutError:
            raise BodyTimeout(timeout) from None
        if message["type"] != "http.request":
            complete = True
            return message
        received += len(message.get("body", b""))
        if received > limit:
            raise BodyTooLarge(limit)
        complete = not message.get("more_body", False)
        return message

    return guarded


class BodyGuardMiddleware:
    """413 for bodies over ``limit_for(path)`` bytes, declared or counted as they arrive; 408
    and the connection closed when a body stalls for ``timeout`` seconds."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int], timeout: float) -> None:
        self.app = app
        self.limit_for = limit_for
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared: bytes | None = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
            elif name == b"transfer-encoding":
                chunked = True
        if not chunked and (declared is None or declared == b"0"):
            # HTTP/1.1 frames a body only by these two headers: no body, nothing to guard.
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(limit, scope, receive, send)
            return

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, guarded_receive(receive, limit, self.timeout), tracking_send)
        except BodyTooLarge:
            # Normally the app's handlers answer it; this catches a read outside of them.
            if started:
                raise
            await self._refuse(limit, scope, receive, send)

    @staticmethod
    async def _refuse(limit: int, scope: Scope, receive: Receive, send: Send) -> None:
        error = GlimpseError(
            ErrorType.payload_too_large,
            f"The request body is larger than the limit of {limit} bytes.",
            # The client may still be sending; tell it the connection will not be reused.
            headers={"Connection": "close"},
        )
        await error_answer(error)(scope, receive, send)


# A request's headers must be complete within this: a few hundred bytes, so even a slow link
# sends them in a fraction of it, while a client that trickles them is cut early.
HEADER_TIMEOUT_S = 10.0


class SlowClientProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with a header timeout: a request's headers must be complete
    within HEADER_TIMEOUT_S of the connection or of the request's first byte, else the
    client gets a 408 and the connection is closed (a client sending its headers a byte at a
    time held a connection for as long as it liked). Run the gateway with
    ``--http glimpse.gateway.security:SlowClientProtocol`` (or UVICORN_HTTP set to that).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = HEADER_TIMEOUT_S
        self.header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_header_clock()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._start_header_clock()

    def on_headers_complete(self) -> None:
        self._stop_header_clock()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_clock()
        super().connection_lost(exc)

    def _start_header_clock(self) -> None:
        if self.header_deadline is None:
            self.header_deadline = self.loop.call_later(self.header_timeout, self._too_slow)

    def _stop_header_clock(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None

    def _too_slow(self) -> None:
        self.header_deadline = None
        if self.transport.is_closing():
            return
        error = GlimpseError(
            ErrorType.request_timeout,
            "The request headers did not arrive in time: "
            f"they took over {self.header_timeout:g} s.",
        )
        body = json.dumps(error.body()).encode()
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        )
        self.transport.close()


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def check_api_key(request: Request, api_key: str | None) -> None:
    """Raise 401 unless the request carries ``api_key`` (no key configured: always open)."""
    if api_key is None:
        return
    token = bearer_token(request)
    # compare_digest takes the same time wherever the strings differ: no timing oracle.
    if token is None or not hmac.compare_digest(token.encode(), api_key.encode()):
        raise GlimpseError(
            ErrorType.unauthorized,
            "This route needs a valid API key: send 'Authorization: Bearer <key>'.",
            headers={"WWW-Authenticate": "Bearer"},
        )
