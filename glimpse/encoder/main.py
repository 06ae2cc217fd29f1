"""The encoder app: ``create_app(settings)``, ``app`` for ``uvicorn glimpse.encoder.main:app``,
and ``serve`` (``python -m glimpse.encoder``), which runs the same under uvicorn.

A plain Starlette app (glimpse/web/app.py): its routes and its OpenAPI document come from the
one list in api.py.
Building ``app`` at import is cheap; the model is loaded in the lifespan.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette

from glimpse.encoder.api import OPERATIONS
from glimpse.encoder.config import Settings
from glimpse.encoder.model import ClipEncoder, ModelLoadError
from glimpse.encoder.onnx_runtime import load_serving_encoder
from glimpse.encoder.service import EncoderRuntime
from glimpse.web.app import ServiceApp

logger = logging.getLogger("glimpse.encoder")

# A text and an image go through the model before /readyz says ready, so the first real
# request does not pay for lazy initialisation (tests and stand-in benchmarks turn it off).
WARMUP = True


async def _warm_up(app: Starlette, runtime: EncoderRuntime) -> None:
    try:
        await runtime.warm_up()
    except Exception as exc:  # noqa: BLE001 - /readyz reports it; the service stays not ready
        logger.exception("warm-up failed")
        app.state.warmup_error = str(exc)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
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
    if WARMUP:
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
    encoder_loader: Callable[[Settings], ClipEncoder] = load_serving_encoder,
) -> ServiceApp:
    """The encoder app; ``encoder_loader`` builds the model in the lifespan (tests and
    bench/bench_host.py pass their own)."""
    app = ServiceApp(
        "encoder", OPERATIONS, lifespan, title="Glimpse encoder",
        summary="Text and image bytes to L2-normalised CLIP vectors, batched.",
    )
    app.state.settings = settings or Settings()
    app.state.encoder_loader = encoder_loader
    app.state.runtime = None
    app.state.warmup_error = None
    return app


def serve(
    settings: Settings | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8001,
    encoder_loader: Callable[[Settings], ClipEncoder] = load_serving_encoder,
    **uvicorn_options: Any,
) -> None:
    """Run the encoder under uvicorn, as ``uvicorn glimpse.encoder.main:app`` does."""
    import uvicorn

    uvicorn.run(create_app(settings, encoder_loader), host=host, port=port, **uvicorn_options)


app = create_app()
