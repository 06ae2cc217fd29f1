"""Bodies every service shares: health and readiness."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class HealthResponse(BaseModel):
    """Liveness: the process answers."""

    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    """Readiness: every check passed (200) or not (503, same body with ``ready`` false)."""

    ready: bool
    checks: dict[str, str] = Field(
        default_factory=dict, description="Each dependency or stage and its state, e.g. 'ok'."
    )
