"""The gateway app: ``uvicorn gateway.main:app`` (port 8000), or ``create_app(settings)``.

Building the app is cheap (no connections, no disk writes); the lifespan builds the pooled
upstream clients and the media store and keeps them on ``app.state.gateway``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from glimpse.contracts.errors import install_error_handlers
from glimpse.contracts.fastpath import FastRoutes
from glimpse.contracts.observability import ServiceMetrics, install_metrics
from glimpse.gateway.api import router, search_image, search_text
from glimpse.gateway.clients import EncoderClient, IndexClient, build_replicas
from glimpse.gateway.config import Settings
from glimpse.gateway.media import MediaStore
from glimpse.gateway.replicas import ReplicaMetrics, ReplicaSet
from glimpse.gateway.security import BodySizeLimitMiddleware
from glimpse.gateway.settle import settle_forever
from glimpse.gateway.state import GatewayState, LruCache

logger = logging.getLogger("glimpse.gateway")

# Room for the multipart framing and the form fields around one query image.
_FORM_OVERHEAD = 64 * 1024


def body_limit_for(settings: Settings) -> Callable[[str], int]:
    """The largest body each path accepts: ingest batches, one query image, or JSON."""

    def limit_for(path: str) -> int:
        if path == "/ingest":
            return settings.max_body_bytes
        if path == "/search/image":
            return settings.max_file_bytes + _FORM_OVERHEAD
        return settings.max_json_bytes

    return limit_for


def create_app(settings: Settings | None = None) -> FastRoutes:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        media = MediaStore(
            settings.media_dir,
            store_originals=settings.store_originals,
            library_dir=settings.library_dir,
            fsync=settings.fsync,
        )
        media.setup()
        # One replica set per upstream (replicas.py); max_connections is per replica.
        def replicas(name: str, urls: str, read_timeout: float) -> ReplicaSet:
            return build_replicas(
                urls,
                name=name,
                connect_timeout=settings.connect_timeout_s,
                read_timeout=read_timeout,
                max_connections=settings.max_connections,
                resolve_interval=settings.resolve_interval_s,
                recheck_interval=settings.replica_recheck_s,
            )

        encoder = EncoderClient(
            replicas("encoder", settings.encoder_url, settings.encoder_timeout_s),
            patience=settings.upstream_patience_s,
            probe_timeout=settings.probe_timeout_s,
        )
        index = IndexClient(
            replicas("index", settings.index_url, settings.index_timeout_s),
            patience=settings.upstream_patience_s,
            probe_timeout=settings.probe_timeout_s,
        )
        app.state.gateway = GatewayState(
            settings=settings,
            encoder=encoder,
            index=index,
            media=media,
            records=LruCache(settings.record_cache_size),
            key_ids=LruCache(settings.record_cache_size),
            decode_limiter=anyio.CapacityLimiter(settings.decode_workers),
            io_pool=ThreadPoolExecutor(settings.io_workers, thread_name_prefix="media-io"),
        )
        settling = None
        if settings.store_originals and settings.pack_settle_interval_s > 0:
            settling = asyncio.create_task(settle_forever(app.state.gateway))
        try:
            yield
        finally:
            if settling is not None:
                settling.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await settling
            await encoder.aclose()
            await index.aclose()
            app.state.gateway.io_pool.shutdown(wait=True)

    app = FastAPI(
        title="Glimpse",
        summary="Text-to-image and image-to-image search over your own image collection.",
        version="0.1.0",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    # Added before the metrics middleware, so it sits inside it: the metrics count the 413s,
    # and the limit's exception is raised straight into the route's body read (the metrics'
    # BaseHTTPMiddleware would wrap it in an ExceptionGroup that FastAPI turns into a 400).
    app.add_middleware(BodySizeLimitMiddleware, limit_for=body_limit_for(settings))
    metrics = ServiceMetrics("gateway")
    install_metrics(app, metrics)

    def replica_sets() -> list[ReplicaSet]:
        state = getattr(app.state, "gateway", None)  # None before the lifespan has run
        return [] if state is None else [state.encoder.replicas, state.index.replicas]

    metrics.registry.register(ReplicaMetrics(replica_sets))
    app.include_router(router)
    # Last: the web page answers every path no API route claimed.
    app.mount(
        "/",
        StaticFiles(directory=settings.frontend_dir, html=True, check_dir=False),
        name="frontend",
    )
    # The searches are answered in front of FastAPI's middleware stack (contracts/fastpath.py),
    # with the same body limits.
    return FastRoutes(
        app,
        {("POST", "/search/text"): search_text, ("POST", "/search/image"): search_image},
        body_limit_for(settings),
    )


app = create_app()
