"""Atomic Faiss snapshots with a manifest.

A snapshot is the serialised Faiss index in ``snapshots/index-<seq>.faiss`` and ``manifest.json``
naming it with the last sequence number it contains, its size and its sha256. Each file is
written to a temp file, fsynced, renamed over the old one, and the directory fsynced, manifest
last: a crash at any moment leaves the old snapshot or the new one, whole. Older snapshot files
are removed only after the new manifest is durable.

A start loads the snapshot and replays the store's rows after its sequence number; it never
retrains. A snapshot that does not match its manifest (torn, truncated, edited) raises
:class:`CorruptSnapshot`, and the service rebuilds from the store instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

log = logging.getLogger("glimpse.index.persistence")

MANIFEST = "manifest.json"
SNAPSHOT_DIR = "snapshots"
FORMAT = 2
REFUSED = "manifest.refused.json"


class CorruptSnapshot(Exception):
    """The snapshot on disk cannot be used; the message says why."""


@dataclass
class Manifest:
    seq: int
    file: str
    bytes: int
    sha256: str
    dim: int
    factory: str
    trained_on: int = 0
    factory_override: str | None = None
    search_defaults: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    format: int = FORMAT
    # What identifies the store's row at ``seq`` (id, key, created_at, deleted) when the
    # snapshot was taken. A start checks it against the store: a store whose tail was torn and
    # then written past ``seq`` again (ids reused) fails the check. None: an empty store, or a
    # format-1 manifest (which had no such record).
    last_row: dict[str, Any] | None = None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes | memoryview) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def save(data_dir: Path, payload: np.ndarray, manifest: Manifest) -> Manifest:
    """Write ``payload`` (a serialised Faiss index) and its manifest atomically.

    ``manifest.seq``, ``dim`` and ``factory`` come from the caller; file, size and hash are
    filled in here. Raises OSError (e.g. ENOSPC) with the old snapshot intact.
    """
    snap_dir = data_dir / SNAPSHOT_DIR
    snap_dir.mkdir(parents=True, exist_ok=True)
    data = np.ascontiguousarray(payload, dtype=np.uint8).data
    name = f"index-{manifest.seq:012d}-{time.time_ns()}.faiss"
    manifest.file = f"{SNAPSHOT_DIR}/{name}"
    manifest.bytes = data.nbytes
    manifest.sha256 = hashlib.sha256(data).hexdigest()
    manifest.created_at = time.time()
    _write_atomic(snap_dir / name, data)
    _write_atomic(data_dir / MANIFEST, json.dumps(asdict(manifest), indent=1).encode())
    for old in snap_dir.iterdir():
        if old.name != name:
            try:
                old.unlink()
            except OSError:
                log.warning("could not remove old snapshot file %s", old)
    return manifest


def quarantine(data_dir: Path, reason: str) -> Path | None:
    """Move a refused manifest aside (durably), so no later start can trust its snapshot again.

    Its snapshot file stays until the next snapshot replaces it; the refused manifest is kept as
    ``manifest.refused.json`` for a person to look at. None when there was no manifest.
    """
    path = data_dir / MANIFEST
    if not path.exists():
        return None
    target = data_dir / REFUSED
    os.replace(path, target)
    _fsync_dir(data_dir)
    log.warning("snapshot manifest moved aside to %s (%s)", target, reason)
    return target


def read_manifest(data_dir: Path) -> Manifest | None:
    """The manifest, None when there is no snapshot yet; CorruptSnapshot when unreadable."""
    path = data_dir / MANIFEST
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
        return Manifest(**raw)
    except (ValueError, TypeError, OSError) as exc:
        raise CorruptSnapshot(f"manifest {path} is unreadable: {exc}") from exc


def load(data_dir: Path, dim: int) -> tuple[faiss.Index, Manifest] | None:
    """The snapshot's Faiss index and manifest; None when there is none."""
    manifest = read_manifest(data_dir)
    if manifest is None:
        return None
    if manifest.dim != dim:
        raise CorruptSnapshot(f"the snapshot holds {manifest.dim}-d vectors, INDEX_DIM is {dim}")
    path = data_dir / manifest.file
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CorruptSnapshot(f"snapshot file {path} is unreadable: {exc}") from exc
    if len(data) != manifest.bytes:
        raise CorruptSnapshot(
            f"snapshot file {path} has {len(data)} bytes, the manifest says {manifest.bytes} "
            "(truncated or torn)"
        )
    if hashlib.sha256(data).hexdigest() != manifest.sha256:
        raise CorruptSnapshot(f"snapshot file {path} does not match its sha256 (corrupt)")
    try:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as exc:
        raise CorruptSnapshot(f"Faiss cannot read snapshot file {path}: {exc}") from exc
    if index.d != dim:
        raise CorruptSnapshot(f"snapshot index has dimension {index.d}, expected {dim}")
    return index, manifest
