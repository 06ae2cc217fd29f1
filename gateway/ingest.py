"""Ingest: uploaded files to stored media and indexed vectors, one answer per file.

The order of the steps is the crash-safety argument: media is written (atomically, fsynced;
the encoder embeds meanwhile) before the index add, and the index acknowledges an add only
once it is committed. A crash at any point therefore leaves at worst media without an index
row (harmless; a re-ingest reuses it), never an indexed item without its media.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.datastructures import UploadFile

from contracts.errors import ErrorType, GlimpseError
from contracts.vectors import encode_vector
from gateway.images import Prepared, prepare_image, sniff_content_type
from gateway.media import safe_relative_path
from gateway.state import GatewayState


@dataclass
class Part:
    """One uploaded file on its way through the ingest."""

    path: str
    data: bytes = b""
    sha256: str | None = None
    status: str | None = None  # set once the part's outcome is known
    id: int | None = None
    error: str | None = None
    error_type: str | None = None
    prepared: Prepared | None = None
    duplicates: list[Part] = field(default_factory=list)

    def reject(self, error: GlimpseError | dict[str, Any]) -> None:
        self.status = "rejected"
        if isinstance(error, GlimpseError):
            self.error, self.error_type = error.message, error.error_type
        else:
            self.error, self.error_type = str(error.get("error")), str(error.get("error_type"))

    def answer(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "id": self.id,
            "status": self.status,
            "sha256": self.sha256,
            "error": self.error,
            "error_type": self.error_type,
        }


async def _read_part(upload: UploadFile, max_bytes: int) -> Part:
    name = upload.filename or ""
    path = safe_relative_path(name)
    part = Part(path=path or name)
    if path is None:
        part.reject(
            GlimpseError(
                ErrorType.validation_error,
                "The file name must be a relative path without '..' parts "
                f"(got {name[:200]!r}).",
            )
        )
        return part
    if upload.size is not None and upload.size > max_bytes:
        part.reject(
            GlimpseError(
                ErrorType.payload_too_large,
                f"The file has {upload.size} bytes, more than the limit of {max_bytes}.",
            )
        )
        return part
    part.data = await upload.read(max_bytes + 1)
    if len(part.data) > max_bytes:
        part.data = b""
        part.reject(
            GlimpseError(
                ErrorType.payload_too_large, f"The file is larger than the limit of {max_bytes}."
            )
        )
    return part


def _hash_all(parts: list[Part]) -> None:
    for part in parts:
        part.sha256 = hashlib.sha256(part.data).hexdigest()


def _prepare(state: GatewayState, part: Part) -> None:
    settings = state.settings
    try:
        part.prepared = prepare_image(
            part.data,
            max_pixels=settings.max_pixels,
            thumbnail_size=settings.thumbnail_size,
            thumbnail_type=f"image/{settings.thumbnail_format}",
            quality=settings.thumbnail_quality,
            webp_method=settings.thumbnail_webp_method,
        )
    except GlimpseError as exc:
        part.reject(exc)


def _store_media(state: GatewayState, parts: list[Part]) -> None:
    """Write each part's original and thumbnail, with one batched fsync pass for them all; a
    part whose write fails is rejected. Parts left unrejected are durable on return."""
    items = []
    for part in parts:
        assert part.sha256 is not None and part.prepared is not None
        items.append(
            (part.sha256, part.data, part.prepared.thumbnail_type, part.prepared.thumbnail)
        )
    errors = state.media.put_many(items, pool=state.io_pool)
    for part, error in zip(parts, errors, strict=True):
        if error is not None:
            part.reject(_storage_error(error))
    state.media.invalidate_bytes()


def _storage_error(exc: OSError) -> GlimpseError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return GlimpseError(
            ErrorType.insufficient_storage,
            "The media disk is full; the file was not stored. Free space and send it again.",
        )
    return GlimpseError(
        ErrorType.internal_error,
        f"The file could not be written to the media store ({exc.strerror or exc}).",
    )


async def _prepare_in_thread(state: GatewayState, part: Part) -> None:
    await anyio.to_thread.run_sync(_prepare, state, part, limiter=state.decode_limiter)


async def ingest_files(state: GatewayState, uploads: Sequence[UploadFile]) -> list[dict[str, Any]]:
    """One answer per upload, in order: added, exists (with the existing id) or rejected."""
    settings = state.settings
    if len(uploads) > settings.max_files_per_request:
        raise GlimpseError(
            ErrorType.payload_too_large,
            f"{len(uploads)} files in one request, more than the limit of "
            f"{settings.max_files_per_request}; send them in several requests.",
        )
    parts = [await _read_part(u, settings.max_file_bytes) for u in uploads]
    readable = [p for p in parts if p.status is None]
    # Hashing hundreds of MB takes a while; hashlib releases the GIL, so a thread helps.
    await anyio.to_thread.run_sync(_hash_all, readable)

    # The same bytes twice in one request are one item: later copies share the first's outcome.
    unique: dict[str, Part] = {}
    for part in readable:
        assert part.sha256 is not None
        first = unique.setdefault(part.sha256, part)
        if first is not part:
            first.duplicates.append(part)

    if unique:
        missing = await state.index.keys_missing(list(unique))
        known = [sha for sha in unique if sha not in missing]
        await asyncio.gather(*(_resolve_known(state, unique[sha]) for sha in known))
        # Known keys whose id is not remembered go the whole way: the index's add is
        # idempotent by key, so it answers "exists" with the id and stores nothing new.
        new = [p for p in unique.values() if p.status is None]

        if new:
            await _embed_and_add(state, new)

    for part in unique.values():
        for dup in part.duplicates:
            dup.status = "exists" if part.status in ("added", "exists") else part.status
            dup.id, dup.error, dup.error_type = part.id, part.error, part.error_type
        part.data = b""
    return [p.answer() for p in parts]


async def _resolve_known(state: GatewayState, part: Part) -> None:
    """Answer "exists" for a known key whose id this gateway remembers and the index confirms."""
    assert part.sha256 is not None
    item_id = state.key_ids.get(part.sha256)
    if item_id is None:
        return
    try:
        record = await state.index.item(item_id)
    except GlimpseError as exc:
        if exc.status != 404:
            raise
        record = None
    if record is None or record.get("key") != part.sha256:
        state.key_ids.drop(part.sha256)  # deleted, or replaced behind our back
        return
    state.records.put(item_id, record)
    part.status, part.id = "exists", item_id


async def _store(state: GatewayState, parts: list[Part]) -> None:
    """Validate, thumbnail and store ``parts`` (rejecting the bad ones), off the event loop."""
    # Pillow decodes, resizes and encodes in C with the GIL released: one thread per image,
    # up to decode_workers at once across requests.
    async with anyio.create_task_group() as tg:
        for part in parts:
            tg.start_soon(_prepare_in_thread, state, part)
    valid = [p for p in parts if p.status is None]
    if valid:
        # Disk writes and fsyncs block.
        await anyio.to_thread.run_sync(_store_media, state, valid)


async def _embed_and_add(state: GatewayState, parts: list[Part]) -> None:
    keys = [p.sha256 for p in parts if p.sha256 is not None]
    async with state.key_locks.hold(keys):
        # The encoder embeds the batch while the gateway checks, thumbnails and stores it (it
        # reads the images itself and answers an error for each it cannot). Only parts that
        # both have a vector and are durably stored go on to the index: media is on disk
        # before the index add, as before.
        stored = asyncio.ensure_future(_store(state, parts))
        try:
            vectors, errors = await state.encoder.embed_images(
                [(p.path, p.data, sniff_content_type(p.data)) for p in parts]
            )
        finally:
            # Even when the encoder failed: the writes finish before the keys are unlocked
            # (and a failed store raises from here).
            await stored
        to_add: list[tuple[Part, dict[str, Any]]] = []
        for part, vector, error in zip(parts, vectors, errors, strict=True):
            if part.status is not None:
                continue  # rejected by the gateway's own checks or the media write
            if vector is None:
                missing = {"error": "The encoder gave no vector.", "error_type": "upstream_error"}
                part.reject(error or missing)
                continue
            prepared = part.prepared
            assert prepared is not None and part.sha256 is not None
            meta = {
                "width": prepared.width,
                "height": prepared.height,
                "bytes": len(part.data),
                "content_type": prepared.content_type,
                "thumbnail_type": prepared.thumbnail_type,
            }
            item = {"vector": encode_vector(vector), "path": part.path, "key": part.sha256}
            to_add.append((part, {**item, "meta": meta}))
        if not to_add:
            return
        added = await state.index.add([item for _, item in to_add])
        for (part, _), outcome in zip(to_add, added, strict=True):
            part.status, part.id = outcome["status"], int(outcome["id"])
            assert part.sha256 is not None
            state.key_ids.put(part.sha256, part.id)
