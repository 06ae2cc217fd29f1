"""The image routes: the original, its thumbnail, its record, and deleting it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path as FsPath
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse

from glimpse.contracts.errors import ERROR_RESPONSES, ErrorType, GlimpseError
from glimpse.contracts.gateway import ImageMeta
from glimpse.gateway.ingest import THUMBNAIL_TYPE
from glimpse.gateway.media import SHA256_RE, ThumbnailSize
from glimpse.gateway.state import GatewayState, ImageId, ReadAccess, State, WriteAccess
from glimpse.gateway.thumbnails import thumbnail_of

_IMMUTABLE = "max-age=31536000, immutable"

router = APIRouter(responses=ERROR_RESPONSES)


async def _record(state: GatewayState, image_id: int) -> dict[str, Any]:
    record = state.records.get(image_id)
    if record is None:
        record = await state.index.item(image_id)
        state.records.put(image_id, record)
    return record


def _not_found(image_id: int, what: str = "image") -> GlimpseError:
    return GlimpseError(ErrorType.not_found, f"No {what} is stored for image {image_id}.")


def _media_key(record: dict[str, Any], image_id: int, what: str) -> str:
    """The record's sha256, which names its media; an item added with any other key (through
    the index's own port) has no media here, so it is not found rather than an error."""
    sha = str(record.get("key") or "")
    if not SHA256_RE.match(sha):
        raise _not_found(image_id, what)
    return sha


def _etag_matches(request: Request, etag: str) -> bool:
    header = request.headers.get("if-none-match")
    if not header:
        return False
    candidates = {c.strip().removeprefix("W/") for c in header.split(",")}
    return "*" in candidates or etag in candidates


async def _serve_cached(
    request: Request,
    state: GatewayState,
    etag: str,
    content_type: str,
    find: Callable[[], Awaitable[FsPath | bytes | None]],
    missing: GlimpseError,
) -> Response:
    """304 when the client already holds ``etag`` (nothing is looked up), else what ``find``
    answers (a file, or bytes just made) with long-lived caching, or ``missing`` raised."""
    cache = ("public, " if state.settings.public_read else "private, ") + _IMMUTABLE
    headers = {"ETag": etag, "Cache-Control": cache, "X-Content-Type-Options": "nosniff"}
    if _etag_matches(request, etag):
        return Response(status_code=304, headers=headers)
    found = await find()
    if found is None:
        raise missing
    if isinstance(found, bytes):
        return Response(found, media_type=content_type, headers=headers)
    return FileResponse(found, media_type=content_type, headers=headers)


@router.get(
    "/images/{image_id}",
    tags=["images"],
    response_class=FileResponse,
    dependencies=[ReadAccess],
)
@router.head("/images/{image_id}", include_in_schema=False, dependencies=[ReadAccess])
async def image_original(image_id: ImageId, request: Request, state: State) -> Response:
    """The original bytes of an image (by id only)."""
    record = await _record(state, image_id)
    meta = record.get("meta") or {}
    sha = _media_key(record, image_id, "original")
    content_type = str(meta.get("content_type") or "application/octet-stream")

    async def find() -> FsPath | bytes | None:
        return await anyio.to_thread.run_sync(
            state.media.find_original, sha, record["path"], meta.get("original")
        )

    missing = _not_found(image_id, "original")
    return await _serve_cached(request, state, f'"{sha}"', content_type, find, missing)


@router.get(
    "/images/{image_id}/thumbnail",
    tags=["images"],
    response_class=FileResponse,
    dependencies=[ReadAccess],
)
@router.head("/images/{image_id}/thumbnail", include_in_schema=False, dependencies=[ReadAccess])
async def image_thumbnail(
    image_id: ImageId,
    request: Request,
    state: State,
    size: Annotated[
        ThumbnailSize,
        Query(description="The longest side at most, in pixels (the page's srcset asks 240)."),
    ] = ThumbnailSize.default,
) -> Response:
    """A small WebP or JPEG of the image (longest side at most 320 pixels, or ``size``)."""
    record = await _record(state, image_id)
    meta = record.get("meta") or {}
    sha = _media_key(record, image_id, "thumbnail")
    # A JPEG one was made by an older version configured for JPEG thumbnails.
    content_type = str(meta.get("thumbnail_type") or THUMBNAIL_TYPE)
    if content_type not in ("image/webp", "image/jpeg"):
        raise _not_found(image_id, "thumbnail")
    # The ETag names the original's bytes, so a client holding it has the right thumbnail
    # even before this gateway has made one (thumbnails are made on first request).
    etag = f'"{sha}-thumb"' if size == ThumbnailSize.default else f'"{sha}-thumb{int(size)}"'

    async def find() -> FsPath | bytes | None:
        original = meta.get("original")
        return await thumbnail_of(state, sha, str(record["path"]), content_type, original, size)

    missing = _not_found(image_id, "thumbnail")
    return await _serve_cached(request, state, etag, content_type, find, missing)


@router.get(
    "/images/{image_id}/meta", response_model=ImageMeta, tags=["images"], dependencies=[ReadAccess]
)
async def image_meta(image_id: ImageId, state: State) -> dict[str, Any]:
    """The stored record of an image."""
    record = await _record(state, image_id)
    meta = dict(record.get("meta") or {})
    meta.pop("original", None)  # where the media store keeps it: the store's own business
    if state.libraries is not None:  # every library path with these bytes (library.py)
        meta["paths"] = await anyio.to_thread.run_sync(
            state.libraries.paths, str(record.get("key"))
        )
    path = record["path"]
    if meta.get("paths") and path not in meta["paths"] and "/" in path:
        library = path.split("/", 1)[0]
        if state.libraries is not None and library in state.libraries.libraries:
            path = meta["paths"][0]  # moved since it was indexed: where it is now
    return {
        **meta,
        "id": image_id,
        "path": path,
        "sha256": record["key"],
        "width": int(meta.get("width", 0)),
        "height": int(meta.get("height", 0)),
        "bytes": int(meta.get("bytes", 0)),
        "content_type": str(meta.get("content_type", "application/octet-stream")),
        "image_url": f"/images/{image_id}",
        "thumbnail_url": f"/images/{image_id}/thumbnail",
        "created_at": record.get("created_at"),
    }


@router.delete("/images/{image_id}", status_code=204, tags=["images"], dependencies=[WriteAccess])
async def delete_image(image_id: ImageId, state: State) -> Response:
    """Delete an image: it never comes back from a search, and its media is removed."""
    record = await _record(state, image_id)
    sha = str(record["key"])
    async with state.media.locks.hold([sha]):  # across processes: see ingest.py
        await state.index.delete(image_id)
        state.records.drop(image_id)
        if SHA256_RE.match(sha):  # any other key never had media here (_media_key)
            await anyio.to_thread.run_sync(state.media.remove, sha)
            state.media.invalidate_bytes()
    return Response(status_code=204)
