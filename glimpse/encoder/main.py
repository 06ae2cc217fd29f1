"""The encoder app: ``create_app(settings)``, ``app`` for ``uvicorn glimpse.encoder.main:app``,
and ``serve`` (``python -m glimpse.encoder``), which runs it the way it is deployed.

Building ``app`` at import is cheap; the model is loaded in the lifespan.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from glimpse.contracts.errors import install_error_handlers
from glimpse.contracts.fastpath import FastRoutes
from glimpse.contracts.observability import ServiceMetrics, install_metrics
from glimpse.encoder.api import embed_image, router
from glimpse.encoder.config import Settings
from glimpse.encoder.direct_body import direct_body_protocol
from glimpse.encoder.model import ClipEncoder, ModelLoadError, load_encoder
from glimpse.encoder.service import EncoderRuntime

logger = logging.getLogger("glimpse.encoder")

# The hot route: answered in front of FastAPI's stack, its body read directly by ``serve``.
IMAGE_ROUTE = ("POST", "/v1/embed/image")


async def _warm_up(app: FastAPI, runtime: EncoderRuntime) -> None:
    try:
        await runtime.warm_up()
    except Exception as exc:  # noqa: BLE001 - /readyz reports it; the service stays not ready
        logger.exception("warm-up failed")
        app.state.warmup_error = str(exc)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    try:
        # Loading takes seconds of blocking torch and disk work: off the event loop.
        runtime = await asyncio.to_thread(
            EncoderRuntime.load, settings, app.state.metrics.registry, app.state.encoder_loader
        )
    except ModelLoadError as exc:
        logger.error("encoder cannot start: %s", exc)
        raise
    app.state.runtime = runtime
    warm_task: asyncio.Task[None] | None = None
    if settings.warmup:
        warm_task = asyncio.create_task(_warm_up(app, runtime))
    else:
        runtime.warmed_up = True
    try:
        yield
    finally:
        if warm_task is not None:
            warm_task.cancel()
        await asyncio.to_thread(runtime.close)


def create_app(
    settings: Settings | None = None,
    encoder_loader: Callable[[Settings], ClipEncoder] = load_encoder,
) -> FastRoutes:
    """The encoder app; ``encoder_loader`` builds the model in the lifespan (tests and
    bench/bench_host.py pass their own)."""
    app = FastAPI(
        title="Glimpse encoder",
        version="0.1.0",
        summary="Text and image bytes to L2-normalised CLIP vectors, batched.",
        lifespan=lifespan,
    )
    app.state.settings = settings or Settings()
    app.state.encoder_loader = encoder_loader
    app.state.runtime = None
    app.state.warmup_error = None
    install_error_handlers(app)
    install_metrics(app, ServiceMetrics("encoder"))
    app.include_router(router)
    # Image embedding is answered in front of FastAPI's middleware stack (contracts/fastpath.py):
    # its ten layers each wrapped every body chunk and response message, a large share of
    # the event loop's CPU per image (docs/encoder.md).
    return FastRoutes(app, {IMAGE_ROUTE: embed_image})


def serve(
    settings: Settings | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8001,
    encoder_loader: Callable[[Settings], ClipEncoder] = load_encoder,
    **uvicorn_options: Any,
) -> None:
    """Run the encoder under uvicorn as deployed: on uvloop, with image bodies read from the
    socket straight into one buffer (direct_body.py); the same as ``uvicorn
    glimpse.encoder.main:app --loop uvloop --http glimpse.encoder.main:http_protocol``.
    Without ``--http`` uvicorn serves the same API through its own protocol, at more CPU per
    image."""
    import uvicorn

    settings = settings or Settings()
    options: dict[str, Any] = {
        "loop": "uvloop",
        "http": direct_body_protocol({IMAGE_ROUTE}, settings.max_request_bytes),
    } | uvicorn_options
    uvicorn.run(create_app(settings, encoder_loader), host=host, port=port, **options)


app = create_app()
# uvicorn's --http for the app above (the Dockerfile's command): serve's protocol, with the
# body limit of the settings the app was built with.
http_protocol = direct_body_protocol({IMAGE_ROUTE}, app.state.settings.max_request_bytes)
