"""Thumbnails made when first asked for, then kept beside the originals.

Ingest stores the originals only (ingest.py says why: a thumbnail costs ten times the
rest of an image's ingest, and most images of a large collection are never shown). The first
GET of /images/{id}/thumbnail makes it from the stored original and keeps it in the media
store, written like every media file (temporary file, fsync, rename): its ETag promises the
same bytes for a year, so a torn file must never be kept. Later requests read it from disk.
Requests for an image whose thumbnail is being made wait for that one (the key's lock, held
across worker processes) rather than make it again, and a delete never interleaves.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio

from glimpse.contracts.errors import GlimpseError
from glimpse.gateway.images import make_thumbnail
from glimpse.gateway.media import ThumbnailSize
from glimpse.gateway.state import GatewayState

logger = logging.getLogger("glimpse.gateway")


async def thumbnail_of(
    state: GatewayState,
    sha256: str,
    relative: str,
    content_type: str,
    original: Any = None,
    size: ThumbnailSize = ThumbnailSize.default,
) -> Path | bytes | None:
    """The stored thumbnail's path, or the bytes of one made now, or None when the image has
    no original to make one from (or the original no longer decodes). ``original``: the
    item's meta's, for originals an older version packed (MediaStore.find_original)."""
    path = await anyio.to_thread.run_sync(state.media.find_thumbnail, sha256, content_type, size)
    if path is not None:
        return path
    # The same lock as ingest and delete: one maker per image, and a delete never interleaves.
    async with state.media.locks.hold([sha256]):
        return await anyio.to_thread.run_sync(
            _find_or_make,
            state,
            sha256,
            relative,
            content_type,
            original,
            size,
            limiter=state.decode_limiter,
        )


def _find_or_make(
    state: GatewayState,
    sha256: str,
    relative: str,
    content_type: str,
    original: Any,
    size: ThumbnailSize,
) -> Path | bytes | None:
    path = state.media.find_thumbnail(sha256, content_type, size)
    if path is not None:
        return path  # made while this request waited for the lock
    found = state.media.find_original(sha256, relative, original)
    if found is None:
        return None
    # find_original answers only bytes that hash to the key (a library file is checked), and
    # the ETag names those bytes.
    try:
        data = found if isinstance(found, bytes) else found.read_bytes()
    except OSError:
        return None  # removed since it was found
    try:
        thumbnail = make_thumbnail(
            data,
            max_pixels=state.encoder.limits.max_pixels,
            thumbnail_size=int(size),
            thumbnail_type=content_type,
        )
    except GlimpseError:
        return None
    try:
        state.media.put_thumbnail(sha256, content_type, thumbnail, size)
    except OSError as exc:
        # Served all the same; the next request tries to keep it again.
        logger.warning("thumbnail of %s not kept: %s", sha256, exc)
    state.media.invalidate_bytes()
    return thumbnail
