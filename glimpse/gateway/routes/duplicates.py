"""GET /duplicates: groups of copies of one picture, from the background pass of
glimpse/gateway/duplicates.py (never a pass per request)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from glimpse.contracts.errors import ERROR_RESPONSES
from glimpse.gateway.duplicates import MAX_DIFFERENCE, MAX_RATIO, Duplicates, Mode, answer
from glimpse.gateway.state import ReadAccess, State

router = APIRouter(responses=ERROR_RESPONSES)


class DuplicateItem(BaseModel):
    id: int
    path: str
    width: int | None
    height: int | None
    bytes: int | None
    date: str | None = Field(description="When it was taken (ISO), if known.")


class DuplicateGroup(BaseModel):
    score: float = Field(description="The lowest cosine of the links that hold the group.")
    keeper: int = Field(description="The suggested one to keep: the most pixels, then the "
                        "largest file, then the oldest date taken.")
    items: list[DuplicateItem]


class Progress(BaseModel):
    done: int
    total: int


class DuplicatesResponse(BaseModel):
    mode: Mode
    ratio: float = Field(description="A pair is near by its vectors when their distance is "
                         "within this fraction of each item's background distance (its 20th "
                         "neighbour's).")
    difference: float = Field(description="A pair is near by its pixels (similar mode) when "
                              "their crop-aligned, colour-fitted difference is within this.")
    complete: bool = Field(description="False while the first pass runs: the groups so far.")
    progress: Progress
    updated_at: float | None = Field(description="Unix time the groups were last computed.")
    groups: list[DuplicateGroup]


def _duplicates(request: Request, state: State) -> Duplicates:
    found: Duplicates | None = getattr(request.app.state, "duplicates", None)
    if found is None:
        found = request.app.state.duplicates = Duplicates(state)
    return found


_MODE = Query("exact", description="exact: the same pixels in other bytes (a lossless copy, "
              "metadata added or stripped); similar: resized, recompressed, cropped or lightly "
              "edited copies too, near by their pixels or their vectors.")
_RATIO = Query(None, gt=0, le=MAX_RATIO, description="Overrides the mode's measured ratio: "
               "larger links more distant copies (and more unrelated pictures).")
_DIFFERENCE = Query(None, gt=0, le=MAX_DIFFERENCE, description="Overrides the similar mode's "
                    "measured pixel difference: larger links more edited copies (and more "
                    "unrelated pictures).")


@router.get("/duplicates", response_model=DuplicatesResponse, tags=["search"],
            dependencies=[ReadAccess])
async def duplicates(request: Request, state: State, mode: Mode = _MODE,
                     ratio: float | None = _RATIO,
                     difference: float | None = _DIFFERENCE) -> dict[str, Any]:
    """The duplicate groups with a score and a suggested keeper each. The first request
    starts the background pass; until it ends, "complete" is false with its progress."""
    keeper = _duplicates(request, state)
    saved = await asyncio.to_thread(keeper.load)
    if keeper.stale(saved):
        keeper.poke()
    return answer(saved, mode, ratio, difference)
