"""The gateway app: ``uvicorn glimpse.gateway.main:app`` (port 8000), or ``create_app(settings)``.

Building the app is cheap (no connections, no disk writes); the lifespan builds the pooled
upstream clients and the media store and keeps them on ``app.state.gateway``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

import anyio
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import Response as StarletteResponse
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from glimpse.contracts.errors import GlimpseError
from glimpse.gateway.clients import EncoderClient, IndexClient
from glimpse.gateway.config import Settings
from glimpse.gateway.library import Libraries
from glimpse.gateway.media import MediaStore
from glimpse.gateway.migration import MigrationMetrics, migration_of
from glimpse.gateway.replicas import ReplicaMetrics, ReplicaSet
from glimpse.gateway.routes import routes
from glimpse.gateway.security import BodyGuardMiddleware
from glimpse.gateway.state import GatewayState, LruCache, get_state, require_read, require_write
from glimpse.gateway.upstream import build_replicas
from glimpse.imaging import DEFAULT_LIMITS, ImageLimits
from glimpse.web.handlers import error_answer, http_error_answer, install_error_handlers
from glimpse.web.metrics import ServiceMetrics, install_metrics

logger = logging.getLogger("glimpse.gateway")

# Room for the multipart framing and the form fields around one query image.
_FORM_OVERHEAD = 64 * 1024
# Largest body of the JSON routes: a search or /ingest/check list is far smaller.
MAX_JSON_BYTES = 4 * 1024 * 1024

# Upstream calls. The patience and its /healthz probe are Upstream's (upstream.py); these are
# constants because no deployment has needed another value.
# A refused connect is instant, so a longer wait only means a host that is gone.
CONNECT_TIMEOUT_S = 1.0
# An index call takes milliseconds; the timeout only bounds a stuck one.
INDEX_TIMEOUT_S = 30.0
# Per replica; keep-alive reuses them, so only bursts open more.
MAX_CONNECTIONS = 100
# Replicas that come and go by DNS (compose --scale) are followed within this.
RESOLVE_INTERVAL_S = 5.0
# A replica marked down is asked /readyz this often: one cheap call, and it returns quickly.
RECHECK_S = 1.0
# Image records (id -> path, sha256, type) kept per process, a few MB; GATEWAY_RECORD_TTL_S
# bounds how stale one may be.
RECORD_CACHE_SIZE = 20_000
# Images decoded at once (validation, thumbnails): one per core, since Pillow releases the GIL.
DECODE_WORKERS = os.cpu_count() or 4
# The web page served at '/', shipped in the package.
FRONTEND_DIR = Path(__file__).resolve().parents[1] / "frontend"


class FrontendFiles(StaticFiles):
    """The web page's files, revalidated on every use ("no-cache" with their ETag): their names
    carry no version, so a max-age would keep an upgraded gateway's page on the old script."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> StarletteResponse:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = "no-cache"
        return response


class GzipWhenAsked:
    """Gzip for the clients that ask for it (browsers: the page's files, large JSON); the others,
    API clients on a local network, skip the gzip layer and its header parsing altogether."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Text answers only: Starlette leaves images and streams alone, a body under 500 bytes
        # gains less than gzip's own framing, and level 6 packs nearly as well as 9 for less CPU.
        self.gzip = GZipMiddleware(app, minimum_size=500, compresslevel=6)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"accept-encoding" and b"gzip" in value:
                    await self.gzip(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def body_limit_for(
    settings: Settings, image_limits: Callable[[], ImageLimits]
) -> Callable[[str], int]:
    """The largest body each path accepts: ingest batches, one query image (the encoder's
    file limit), or JSON."""

    def limit_for(path: str) -> int:
        if path == "/ingest":
            return settings.max_body_bytes
        if path == "/search/image":
            return (image_limits().max_bytes or 0) + _FORM_OVERHEAD
        return MAX_JSON_BYTES

    return limit_for


def _flat_routes(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """The routes of an app, those of included routers too (included without a prefix)."""
    for route in routes:
        inner = getattr(route, "original_router", None)  # FastAPI's included-router wrapper
        yield from _flat_routes(inner.routes) if inner is not None else (route,)


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    """405 with every method the path answers in Allow; Starlette names only those of the
    first route that matched the path (GET and DELETE of /images/{id} are two routes)."""
    allowed: set[str] = set()
    for route in _flat_routes(request.app.router.routes):
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            allowed.update(getattr(route, "methods", None) or ())
    # No API route matches: the web page (the router's default) answered.
    allow = ", ".join(sorted(allowed or {"GET", "HEAD"}))
    return http_error_answer(
        request.method, request.url.path, HTTPException(405, headers={"Allow": allow})
    )


def access_first(app: FastAPI) -> None:
    """Check a route's access before its body's errors are answered.

    FastAPI decodes a JSON body before it runs the route's dependencies, so a malformed body
    sent without the key would get a 422 (and learn the body's rules) instead of the 401.
    """
    answer_invalid = cast(
        Callable[[Request, Exception], Awaitable[Response]],
        app.exception_handlers[RequestValidationError],  # install_error_handlers' (async)
    )
    checks = {require_read, require_write}

    async def invalid_request(request: Request, exc: Exception) -> Response:
        for route in _flat_routes(request.app.router.routes):
            if isinstance(route, APIRoute) and route.matches(request.scope)[0] is Match.FULL:
                state = await get_state(request)
                try:
                    for depends in route.dependencies:
                        if depends.dependency in checks:
                            await depends.dependency(request, state)
                except GlimpseError as refused:
                    return error_answer(refused)
                break
        return await answer_invalid(request, exc)

    app.add_exception_handler(RequestValidationError, invalid_request)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        media = MediaStore(settings.media_dir, fsync=settings.fsync)
        media.setup()
        # One replica set per upstream (replicas.py); max_connections is per replica.
        def replicas(name: str, urls: str, read_timeout: float) -> ReplicaSet:
            return build_replicas(
                urls,
                name=name,
                connect_timeout=CONNECT_TIMEOUT_S,
                read_timeout=read_timeout,
                max_connections=MAX_CONNECTIONS,
                resolve_interval=RESOLVE_INTERVAL_S,
                recheck_interval=RECHECK_S,
            )

        encoder = EncoderClient(
            replicas("encoder", settings.encoder_url, settings.encoder_timeout_s)
        )
        index = IndexClient(replicas("index", settings.index_url, INDEX_TIMEOUT_S))
        app.state.gateway = GatewayState(
            settings=settings,
            encoder=encoder,
            index=index,
            media=media,
            records=LruCache(RECORD_CACHE_SIZE, ttl=settings.record_ttl_s),
            decode_limiter=anyio.CapacityLimiter(DECODE_WORKERS),
        )
        encoder.read_limits()
        libraries = None
        if settings.libraries:
            libraries = Libraries.from_settings(app.state.gateway)
            app.state.gateway.libraries = libraries
            media.library_lookup = libraries.original
            libraries.start()  # a library that cannot be read is reported, never fatal
        migration_of(app.state.gateway).start()  # resumes a migration a restart stopped
        try:
            yield
        finally:
            await migration_of(app.state.gateway).stop()
            if libraries is not None:
                await libraries.stop()
            await encoder.aclose()
            await index.aclose()

    # /docs and /redoc with their scripts served from the installed package, not a CDN, so
    # they work offline.
    app = FastAPIOffline(
        title="Glimpse",
        summary="Text-to-image and image-to-image search over your own image collection.",
        version="0.1.0",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    access_first(app)
    # Added before the metrics middleware, so it sits inside it: the metrics count the 413s
    # and 408s, whose exceptions are raised straight into the route's body read.
    def image_limits() -> ImageLimits:
        state = getattr(app.state, "gateway", None)  # None before the lifespan has run
        return DEFAULT_LIMITS if state is None else state.encoder.limits

    app.add_middleware(
        BodyGuardMiddleware,
        limit_for=body_limit_for(settings, image_limits),
        timeout=settings.body_timeout_s,
    )
    metrics = ServiceMetrics("gateway")
    install_metrics(app, metrics)
    app.add_middleware(GzipWhenAsked)

    def replica_sets() -> list[ReplicaSet]:
        state = getattr(app.state, "gateway", None)  # None before the lifespan has run
        return [] if state is None else [state.encoder.replicas, state.index.replicas]

    metrics.registry.register(ReplicaMetrics(replica_sets))
    metrics.registry.register(MigrationMetrics(lambda: getattr(app.state, "gateway", None)))
    app.router.routes.extend(routes)
    # The web page answers the paths no API route matches; as the router's default rather than
    # a mount at "/", it never claims an API path called with the wrong method (a 405 below).
    app.router.default = FrontendFiles(directory=FRONTEND_DIR, html=True, check_dir=False)
    app.add_exception_handler(405, _method_not_allowed)
    return app


app = create_app()
