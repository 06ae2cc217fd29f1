"""Ingest: uploaded files to stored media and indexed vectors, one answer per file.

A request holds the locks of its keys (media.KeyLocks, which hold across worker processes and
gateways) from its one question to the index (``/v1/keys/ids``: which keys have an item, and
its id) to its index add. Deletes and thumbnail makers take the same locks. So:

- two ingests of the same bytes give one item: the second asks after the first added it;
- media is written (atomically, fsynced; the encoder embeds meanwhile) before the index add,
  and the index acknowledges an add only once it is committed: an acknowledged item has its
  original, and a crash leaves at worst a file no item names (a re-ingest reuses it);
- a delete never runs between a request's question and its add, so it cannot remove a file
  an item is about to name;
- a copy this request made for a part that was not added is removed before the locks go.

The gateway reads no image header: the encoder decodes each new image, refuses what it cannot
read or what exceeds its limits, and answers each one's size as displayed beside its vector;
the stored type is read from the first bytes. Thumbnails are made when first asked for
(thumbnails.py), from the stored original: one costs ten times the rest of an image's ingest
(bench/bench_ingest.py).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from glimpse.contracts.errors import ErrorType, GlimpseError
from glimpse.gateway.images import sniff_content_type
from glimpse.gateway.media import safe_relative_path
from glimpse.gateway.metadata import extract_all
from glimpse.gateway.migration import migration_of
from glimpse.gateway.state import GatewayState
from glimpse.web.forms import FormPart

logger = logging.getLogger("glimpse.gateway")


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
    created: bool = False  # its first copy was made by this request (media.put_many)
    duplicates: list[Part] = field(default_factory=list)
    mtime: float | None = None  # the file's modification time, when the client sent it
    found: dict[str, Any] = field(default_factory=dict)  # its metadata (metadata.py)

    def reject(self, error: GlimpseError | dict[str, Any]) -> None:
        self.status = "rejected"
        if isinstance(error, GlimpseError):
            message, self.error_type = error.message, error.error_type
        else:
            message, self.error_type = str(error.get("error")), str(error.get("error_type"))
        # The sentence names the file: a batch's answers are often read one line at a time.
        self.error = f"{self.path}: {message}"

    def answer(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "id": self.id,
            "status": self.status,
            "sha256": self.sha256,
            "error": self.error,
            "error_type": self.error_type,
        }


def _read_part(form_part: FormPart, max_bytes: int) -> Part:
    name = form_part.filename or ""
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
    if len(form_part.data) > max_bytes:
        part.reject(
            GlimpseError(
                ErrorType.payload_too_large,
                f"The file has {len(form_part.data)} bytes, more than the limit of {max_bytes}.",
            )
        )
        return part
    part.data = bytes(form_part.data)  # bytes already: no copy
    return part


def _hash_all(parts: list[Part]) -> None:
    """Hash each part (one thread hop per request, not per file; hashlib releases the GIL on
    large inputs)."""
    for part in parts:
        part.sha256 = hashlib.sha256(part.data).hexdigest()


# Every browser shows WebP, at smaller files than JPEG of the same look.
THUMBNAIL_TYPE = "image/webp"


def _store_media(state: GatewayState, parts: list[Part]) -> None:
    """Write the parts' originals, durably; a part whose write fails is rejected. Parts left
    unrejected are durable on return."""
    items = []
    for part in parts:
        assert part.sha256 is not None
        items.append((part.sha256, part.data))
    errors, created = state.media.put_many(items)
    for part, error, made in zip(parts, errors, created, strict=True):
        if error is not None:
            part.reject(_storage_error(error))
        part.created = made
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


async def ingest_files(
    state: GatewayState, uploads: Sequence[FormPart], *, in_place: bool = False,
    mtimes: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """One answer per uploaded file part, in order: added, exists (with the existing id) or
    rejected. ``in_place``: library files (library.py), indexed where they are, not copied."""
    settings = state.settings
    if len(uploads) > settings.max_files_per_request:
        raise GlimpseError(
            ErrorType.payload_too_large,
            f"{len(uploads)} files in one request, more than the limit of "
            f"{settings.max_files_per_request}; send them in several requests.",
        )
    limits = state.encoder.limits  # the encoder's /v1/info (clients.py)
    parts = [_read_part(u, limits.max_bytes or 0) for u in uploads]
    for part in parts:
        part.mtime = (mtimes or {}).get(part.path)
    readable = [p for p in parts if p.status is None]
    await anyio.to_thread.run_sync(_hash_all, readable)

    # The same bytes twice in one request are one item: later copies share the first's outcome.
    unique: dict[str, Part] = {}
    for part in readable:
        assert part.sha256 is not None
        first = unique.setdefault(part.sha256, part)
        if first is not part:
            first.duplicates.append(part)

    if unique:
        # Every writer of a key holds its lock (ingest, delete, thumbnails; in any process or
        # gateway on this media folder), so the index's answer stays true while we hold them.
        async with state.media.locks.hold(unique):
            ids = await state.index.key_ids(list(unique))
            new = []
            for sha256, part in unique.items():
                if sha256 in ids:
                    part.status, part.id = "exists", ids[sha256]
                else:
                    new.append(part)
            if not in_place and getattr(state, "libraries", None) is not None:
                await anyio.to_thread.run_sync(_keep_uploaded_copies, state, unique.values())
            if new:
                await _embed_and_add(state, new, in_place)

    for part in unique.values():
        for dup in part.duplicates:
            dup.status = "exists" if part.status in ("added", "exists") else part.status
            dup.id, dup.error, dup.error_type = part.id, part.error, part.error_type
        part.data = b""
    return [p.answer() for p in parts]


def _keep_uploaded_copies(state: GatewayState, parts: Iterable[Part]) -> None:
    """Store the originals of uploaded parts answered "exists" that have none: a library
    indexed them in place (library.py), and the upload must outlive the library file."""
    media = state.media
    missing = [
        p for p in parts
        if p.status == "exists" and p.sha256 and not media.original_path(p.sha256).exists()
    ]
    if missing:
        _store_media(state, missing)
        for part in missing:  # answered "exists" all the same; a failed copy only logs
            if part.status == "rejected":
                logger.warning("upload of library bytes not kept: %s", part.error)
                part.status, part.error, part.error_type = "exists", None, None


async def _store(state: GatewayState, parts: list[Part]) -> None:
    """Store ``parts`` (rejecting those whose write fails), off the event loop."""
    valid = [p for p in parts if p.status is None]
    if valid:
        # Disk writes and fsyncs block.
        await anyio.to_thread.run_sync(_store_media, state, valid)


async def _embed_and_add(state: GatewayState, parts: list[Part], in_place: bool = False) -> None:
    """Embed, store and add ``parts`` (new keys, their locks held by the caller); then remove
    the copies this request made that no item names: parts the encoder or the media write
    refused, or all of them when the encoder call failed. Not those sent in an add that did
    not answer: the index may have committed it."""
    in_doubt: list[Part] = []
    try:
        await _embed_and_add_locked(state, parts, in_doubt, in_place)
    finally:
        doubt = {id(p) for p in in_doubt}
        unnamed = [
            p for p in parts
            if p.created and p.status not in ("added", "exists") and id(p) not in doubt
        ]
        if unnamed:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_remove_copies, state, unnamed)


async def _embed_and_add_locked(
    state: GatewayState, parts: list[Part], in_doubt: list[Part], in_place: bool = False
) -> None:
    # The encoder embeds the batch while the gateway stores it (it decodes the images
    # itself and answers an error for each it cannot, or a size). Only parts that both have a
    # vector and are durably stored go on to the index: media is on disk before the index
    # add. A library file stays where it is; its thumbnail is made when first asked for.
    stored = asyncio.ensure_future(asyncio.sleep(0) if in_place else _store(state, parts))
    # Metadata (metadata.py) is read meanwhile, in a thread.
    found = asyncio.ensure_future(
        anyio.to_thread.run_sync(extract_all, [(p.data, p.path, p.mtime) for p in parts],
                                 state.encoder.limits.max_pixels))
    # After a confirmed model migration, the serving model and its space alone (migration.py).
    model, space = migration_of(state).ingest_space()
    try:
        embedded = await state.encoder.embed_images_wire([(p.path, p.data) for p in parts],
                                                         model)
    finally:
        # Even when the encoder failed: the writes finish before the keys are unlocked
        # (and a failed store raises from here).
        await stored
    for part, fields in zip(parts, await found, strict=True):
        part.found = fields
    to_add: list[tuple[Part, dict[str, Any]]] = []
    for part, vector, error, size in zip(
        parts, embedded.vectors, embedded.errors, embedded.sizes, strict=True
    ):
        if part.status is not None:
            continue  # rejected by the gateway's own checks or the media write
        if vector is None:
            missing = {"error": "The encoder gave no vector.", "error_type": "upstream_error"}
            part.reject(error or missing)
            continue
        assert size is not None and part.sha256 is not None  # beside each vector (clients.py)
        meta = {
            **part.found,
            "width": size[0],
            "height": size[1],
            "bytes": len(part.data),
            "content_type": sniff_content_type(part.data),
            # The type the thumbnail has or will have: fixed per item, so items of an older
            # version that made JPEG thumbnails keep theirs.
            "thumbnail_type": THUMBNAIL_TYPE,
        }
        item = {"vector": vector, "path": part.path, "key": part.sha256}
        to_add.append((part, {**item, "meta": meta}))
    if not to_add:
        return
    in_doubt.extend(part for part, _ in to_add)
    added = await state.index.add([item for _, item in to_add], space)
    in_doubt.clear()
    for (part, _), outcome in zip(to_add, added, strict=True):
        part.status, part.id = outcome["status"], int(outcome["id"])
    # During a model migration the other model encodes them too (migration.py).
    await migration_of(state).encode_new_items(
        [(p.id, p.path, p.data) for p, _ in to_add if p.status == "added" and p.id is not None],
        space)


def _remove_copies(state: GatewayState, parts: list[Part]) -> None:
    try:
        for part in parts:
            assert part.sha256 is not None
            state.media.remove(part.sha256)
    except OSError as exc:  # the answers stand; the bytes stay until the key is ingested again
        logger.warning("copies no item names were not removed: %s", exc)
    state.media.invalidate_bytes()
