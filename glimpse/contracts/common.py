"""Bodies every service shares: the strict request base, health and readiness."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class StrictBody(BaseModel):
    """A JSON request body: values of the wrong JSON type (``"k": "5"``, ``"k": true``) and
    unknown fields are refused with a 422 naming them, instead of being coerced or dropped."""

    model_config = ConfigDict(strict=True, extra="forbid")


class HealthResponse(BaseModel):
    """Liveness: the process answers."""

    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    """Readiness: every check passed (200) or not (503, same body with ``ready`` false)."""

    ready: bool
    checks: dict[str, str] = Field(
        default_factory=dict, description="Each dependency or stage and its state, e.g. 'ok'."
    )
