"""The routes a remote folder kept in sync needs (``glimpse ingest DIR --watch``,
glimpse/cli/ingest/watch.py): the ids of stored bytes, and a new path for an image whose file
moved. Uploads and deletes are the ordinary ``POST /ingest`` and ``DELETE /images/{id}``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from glimpse.contracts.common import StrictBody
from glimpse.contracts.errors import ERROR_RESPONSES, ErrorType, GlimpseError
from glimpse.contracts.gateway import IngestCheckRequest
from glimpse.gateway.media import safe_relative_path
from glimpse.gateway.state import ImageId, State, WriteAccess

router = APIRouter(responses=ERROR_RESPONSES)


class IngestIdsResponse(BaseModel):
    ids: dict[str, int] = Field(
        description="The image id of each digest that is stored; digests not stored are left out."
    )


class ImagePathRequest(StrictBody):
    path: str = Field(
        min_length=1, max_length=4096,
        description="The image's new relative path, as an upload names it (its file moved).",
    )


class ImagePathResponse(BaseModel):
    id: int
    path: str


@router.post(
    "/ingest/ids", response_model=IngestIdsResponse, tags=["ingest"], dependencies=[WriteAccess]
)
async def ingest_ids(body: IngestCheckRequest, state: State) -> dict[str, Any]:
    """The image id of each stored sha256 digest: what a syncing client deletes and moves by."""
    digests = list(dict.fromkeys(d.lower() for d in body.sha256))
    return {"ids": await state.index.key_ids(digests) if digests else {}}


@router.patch(
    "/images/{image_id}", response_model=ImagePathResponse, tags=["images"],
    dependencies=[WriteAccess],
)
async def move_image(image_id: ImageId, body: ImagePathRequest, state: State) -> dict[str, Any]:
    """Show the image under a new path (its file moved or was renamed); its id, bytes and
    vector stay, and searches answer the new path from now on."""
    path = safe_relative_path(body.path)
    if path is None:
        raise GlimpseError(
            ErrorType.validation_error,
            f"path: {body.path[:200]!r} is not a relative path (no leading '/', drive letter, "
            "'..' part or control character).",
            [{"loc": ["body", "path"], "msg": "not a safe relative path", "type": "value_error"}],
        )
    try:
        record = await state.index.update(image_id, path=path)
    except GlimpseError as exc:
        if exc.error_type != ErrorType.not_found:
            raise
        raise GlimpseError(ErrorType.not_found,
                           f"No image is stored with id {image_id}.") from exc
    finally:
        state.records.drop(image_id)
    return {"id": image_id, "path": record["path"]}
