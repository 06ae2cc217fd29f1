"""The ops routes: stats, liveness and readiness."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
from fastapi import APIRouter

from glimpse.contracts.common import HealthResponse, ReadyResponse
from glimpse.contracts.errors import ERROR_RESPONSES, GlimpseError
from glimpse.contracts.gateway import GatewayStats
from glimpse.gateway.state import ReadAccess, State
from glimpse.web.responses import OrjsonResponse

router = APIRouter(responses=ERROR_RESPONSES)


@router.get("/stats", response_model=GatewayStats, tags=["ops"], dependencies=[ReadAccess])
async def stats(state: State) -> dict[str, Any]:
    """Counts, the index's kind and parameters, the model, bytes of stored media."""

    async def model_info() -> dict[str, Any]:
        try:
            return await state.encoder.info()
        except GlimpseError as exc:
            return {"model": state.encoder.model, "error": exc.message}

    index_stats, model, media_bytes = await asyncio.gather(
        state.index.stats(),
        model_info(),
        anyio.to_thread.run_sync(state.media.total_bytes),
    )
    return {
        "images": int(index_stats.get("count", 0)),
        "index": index_stats,
        "model": model,
        "media_bytes": media_bytes,
        "max_result_window": state.settings.max_result_window,
        # How many replicas of each upstream there are and which are up (replicas.py).
        "upstreams": {
            "encoder": state.encoder.replicas.status(),
            "index": state.index.replicas.status(),
        },
    }


@router.get("/healthz", response_model=HealthResponse, tags=["ops"])
async def healthz() -> HealthResponse:
    """Liveness: the process answers."""
    return HealthResponse()


@router.get("/readyz", response_model=ReadyResponse, tags=["ops"])
async def readyz(state: State) -> OrjsonResponse:
    """Readiness: the encoder (model loaded) and the index answer their /readyz (with
    replicas: at least one of each)."""
    (encoder_ok, encoder), (index_ok, index) = await asyncio.gather(
        state.encoder.ready(), state.index.ready()
    )
    # With replicas, one ready replica of each is enough; the lines say how many are.
    checks = {"encoder": encoder, "index": index}
    ready = encoder_ok and index_ok
    return OrjsonResponse(
        ReadyResponse(ready=ready, checks=checks).model_dump(), status_code=200 if ready else 503
    )
