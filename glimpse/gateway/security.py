"""Request body limits and the API key.

The body limit is a pure ASGI middleware: it refuses a declared Content-Length over the limit
before reading anything, and counts the bytes of every received chunk (chunked uploads have no
Content-Length), so an oversize body is cut off at the limit instead of being spooled whole.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from fastapi import HTTPException, Request
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from glimpse.contracts.errors import ErrorType, GlimpseError
from glimpse.contracts.fastpath import counting_receive


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when the body passes the limit.

    A FastAPI HTTPException, so FastAPI's body parsing re-raises it unchanged (any other
    exception there becomes a 400) and the error handlers answer 413 with the error body.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(
            status_code=413, detail=f"The request body is larger than the limit of {limit} bytes."
        )


class BodySizeLimitMiddleware:
    """413 for bodies over ``limit_for(path)`` bytes, declared or counted as they arrive."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = Headers(scope=scope).get("content-length")
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
            await self.app(
                scope, counting_receive(receive, limit, lambda: BodyTooLarge(limit)), tracking_send
            )
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
        await error.response()(scope, receive, send)


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
