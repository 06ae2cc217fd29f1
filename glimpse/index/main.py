"""The index app: ``create_app(settings)`` and ``app`` for ``uvicorn glimpse.index.main:app``.

Building ``app`` at import is cheap; the store and the snapshot are opened in the lifespan,
in a thread, while /healthz already answers and /readyz says "loading".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from glimpse.contracts.errors import install_error_handlers
from glimpse.contracts.fastpath import FastRoutes
from glimpse.contracts.observability import ServiceMetrics, install_metrics
from glimpse.index.api import router, search
from glimpse.index.backend import IndexBackend
from glimpse.index.config import Settings
from glimpse.index.service import IndexService

log = logging.getLogger("glimpse.index")


def _make_service(settings: Settings) -> IndexBackend:
    if settings.backend == "milvus":
        # Imported only here: pymilvus is the optional `milvus` extra.
        from glimpse.index.milvus_service import MilvusIndexService

        return MilvusIndexService(settings)
    return IndexService(settings)


async def _open(app: FastAPI, service: IndexBackend) -> None:
    try:
        # SQLite reads, snapshot load and replay block for seconds at a million items.
        await asyncio.to_thread(service.open)
    except Exception as exc:  # noqa: BLE001 - /readyz reports it; the service stays not ready
        log.exception("index failed to load")
        app.state.load_error = str(exc)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    # Raises at start for INDEX_DEVICE=cuda without GPU support: a clear error, not a 500 later.
    service = _make_service(settings)
    app.state.service = service
    app.state.load_error = None
    if not isinstance(service, IndexService):
        from glimpse.index.milvus_service import MilvusIndexService

        assert isinstance(service, MilvusIndexService)
        # One attempt before serving: a collection that disagrees with the settings (dimension,
        # metric) fails the start here with a sentence naming both; an unreachable Milvus does
        # not (the service starts unready and keeps trying).
        await asyncio.to_thread(service.try_connect)
    loading = asyncio.create_task(_open(app, service))
    try:
        yield
    finally:
        await loading
        # Stops the background threads and writes a last snapshot when there were writes.
        await asyncio.to_thread(service.close)


def create_app(settings: Settings | None = None) -> FastRoutes:
    app = FastAPI(
        title="Glimpse index",
        version="0.1.0",
        description="Vectors to top-k ids (Faiss IVF-PQ + re-rank), id to path store (SQLite).",
        lifespan=lifespan,
    )
    app.state.settings = settings or Settings()
    app.state.service = None  # (the lifespan makes it)
    app.state.load_error = None
    install_error_handlers(app)
    install_metrics(app, ServiceMetrics("index"))
    app.include_router(router)
    # /v1/search is answered in front of FastAPI's middleware stack (glimpse/contracts/fastpath.py).
    return FastRoutes(app, {("POST", "/v1/search"): search})


app = create_app()
