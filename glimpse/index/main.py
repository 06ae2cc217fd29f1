"""The index app: ``create_app(settings)`` and ``app`` for ``uvicorn glimpse.index.main:app``.

A plain Starlette app (glimpse/web/app.py): its routes and its OpenAPI document come from the
one list in api.py.
Building ``app`` at import is cheap; the store and the snapshot are opened in the lifespan,
in a thread, while /healthz already answers and /readyz says "loading".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette

from glimpse.index.api import OPERATIONS
from glimpse.index.backend import IndexBackend
from glimpse.index.config import MilvusSettings, Settings
from glimpse.index.service import IndexService
from glimpse.web.app import ServiceApp

log = logging.getLogger("glimpse.index")


def _make_service(settings: Settings, milvus: MilvusSettings | None) -> IndexBackend:
    if settings.backend == "milvus":
        # Imported only here: pymilvus is the optional `milvus` extra.
        from glimpse.index.milvus_service import MilvusIndexService

        return MilvusIndexService(settings, milvus or MilvusSettings())
    return IndexService(settings)


async def _open(app: Starlette, service: IndexBackend) -> None:
    try:
        # SQLite reads, snapshot load and replay block for seconds at a million items.
        await asyncio.to_thread(service.open)
    except Exception as exc:  # noqa: BLE001 - /readyz reports it; the service stays not ready
        log.exception("index failed to load")
        app.state.load_error = str(exc)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    # Raises at start for INDEX_DEVICE=cuda without GPU support: a clear error, not a 500 later.
    service = _make_service(settings, app.state.milvus)
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


def create_app(
    settings: Settings | None = None, milvus: MilvusSettings | None = None
) -> ServiceApp:
    """``milvus`` (read from INDEX_MILVUS_* when None) reaches only the Milvus backend."""
    app = ServiceApp(
        "index", OPERATIONS, lifespan, title="Glimpse index",
        summary="Vectors to top-k ids (Faiss IVF-PQ + re-rank), id to path store (SQLite).",
    )
    app.state.settings = settings or Settings()
    app.state.milvus = milvus
    app.state.service = None  # (the lifespan makes it)
    app.state.load_error = None
    return app


app = create_app()
