"""The model migration's routes: start one, its progress, confirm, rollback
(glimpse/gateway/migration.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from glimpse.contracts.errors import ERROR_RESPONSES
from glimpse.gateway.migration import migration_of
from glimpse.gateway.state import State, WriteAccess

router = APIRouter(responses=ERROR_RESPONSES)


class ModelRequest(BaseModel):
    model: str = Field(min_length=1, max_length=200,
                       description="A preset (fast, small, best, multilingual) or an open_clip "
                       "model name.")
    pretrained: str | None = Field(
        default=None, max_length=1000,
        description="Its weights: an open_clip tag, a checkpoint path on the encoder, or "
        "'none'; unset: the preset's.",
    )


@router.post("/admin/model", status_code=202, tags=["admin"], dependencies=[WriteAccess])
async def admin_model_start(body: ModelRequest, state: State) -> dict[str, Any]:
    """Migrate the collection to another model, search up the whole time: the encoder loads
    it, every original is re-encoded into a new index space in the background, and searches
    switch to it at 100 %. 422 for a model that cannot be loaded, 409 while one runs."""
    return await migration_of(state).begin(body.model, body.pretrained)


@router.get("/admin/model", tags=["admin"], dependencies=[WriteAccess])
async def admin_model_status(state: State) -> dict[str, Any]:
    """The migration: state (idle, running, switched, confirmed, rolled_back, failed), done,
    total, rate (items/s), ETA, and the search p50 against its idle value."""
    migration = migration_of(state)
    await migration.refresh()
    return migration.status()


@router.post("/admin/model/confirm", tags=["admin"], dependencies=[WriteAccess])
async def admin_model_confirm(state: State) -> dict[str, Any]:
    """Keep the new model: the old space is dropped."""
    return await migration_of(state).confirm()


@router.post("/admin/model/rollback", tags=["admin"], dependencies=[WriteAccess])
async def admin_model_rollback(state: State) -> dict[str, Any]:
    """Searches go back to the old model and space (a running migration stops)."""
    return await migration_of(state).rollback()
