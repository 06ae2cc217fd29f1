"""Atomic Faiss snapshots with a manifest.

A snapshot is the serialised Faiss index in ``snapshots/index-<seq>.faiss`` and ``manifest.json``
naming it with the last sequence number it contains, its size and its sha256. Each file is
written to a temp file, fsynced, renamed over the old one, and the directory fsynced, manifest
last: a crash at any moment leaves the old snapshot or the new one, whole. Older snapshot files
are removed only after the new manifest is durable.

Beside it, ``snapshots/vectors-<seq>.f16`` holds the live ids and their float16 vectors at the
same seq (written the same way, named and hashed in the manifest), so a start fills the
re-rank table from it (memory-mapped) instead of reading every vector back from SQLite. A
vectors file that does not match its manifest raises :class:`CorruptVectors`, and the start
reads the vectors from the store instead (the Faiss snapshot stays usable).

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
from collections.abc import Iterable, Iterator
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


class CorruptVectors(Exception):
    """The vectors file cannot be used (the snapshot itself may be fine); the message says why."""


VECTORS_MAGIC = b"GLVEC002"
_HEADER = np.dtype([("magic", "S8"), ("dim", "<i8"), ("count", "<i8"), ("seq", "<i8")])
_CHUNK = 16_384  # rows per write / hash / copy step (16k x 512-d float16 = 16 MiB)


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
    # The vectors file written with this snapshot (None: none, e.g. the low-memory setting).
    vectors_file: str | None = None
    vectors_bytes: int = 0
    vectors_sha256: str = ""
    vectors_count: int = 0


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


@dataclass
class VectorsDraft:
    """A vectors file written (not yet fsynced) under a temp name; :func:`save` publishes it."""

    tmp: Path
    name: str
    bytes: int
    sha256: str
    count: int


def table_chunks(ids: np.ndarray, vectors: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, rows) in chunks of an id-indexed float16 table (no whole copy of the matrix)."""
    for start in range(0, len(ids), _CHUNK):
        part = ids[start : start + _CHUNK]
        yield part, vectors[part]


def write_vectors(data_dir: Path, seq: int, dim: int,
                  chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> VectorsDraft:
    """Write (ids, float16 vectors) chunks, ids ascending, to a temp vectors file.

    Layout: a 32-byte header (magic, dim, count, seq), the count x dim float16 matrix, then
    the int64 ids (kept in memory while the matrix streams: 8 B per vector). The sha256 covers
    everything after the header; the header's fields are checked against the manifest. fsync
    and rename come later, in :func:`save`, outside the caller's locks.
    """
    snap_dir = data_dir / SNAPSHOT_DIR
    snap_dir.mkdir(parents=True, exist_ok=True)
    name = f"vectors-{seq:012d}-{time.time_ns()}.f16"
    tmp = snap_dir / (name + ".tmp")
    digest = hashlib.sha256()
    all_ids: list[np.ndarray] = []
    size = _HEADER.itemsize
    try:
        with open(tmp, "wb") as fh:
            fh.write(b"\0" * _HEADER.itemsize)
            for ids, vectors in chunks:
                block = np.ascontiguousarray(vectors, dtype="<f2").reshape(len(ids), dim)
                fh.write(block.data)
                digest.update(block.data)
                size += block.nbytes
                all_ids.append(np.asarray(ids, dtype="<i8"))
            id_bytes = (np.concatenate(all_ids) if all_ids else np.empty(0, "<i8")).tobytes()
            fh.write(id_bytes)
            digest.update(id_bytes)
            size += len(id_bytes)
            count = len(id_bytes) // 8
            fh.seek(0)
            fh.write(np.array([(VECTORS_MAGIC, dim, count, seq)], dtype=_HEADER).tobytes())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return VectorsDraft(tmp, name, size, digest.hexdigest(), count)


def _publish(draft: VectorsDraft) -> None:
    with open(draft.tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(draft.tmp, draft.tmp.with_name(draft.name))


def save(data_dir: Path, payload: np.ndarray, manifest: Manifest,
         vectors: VectorsDraft | None = None) -> Manifest:
    """Write ``payload`` (a serialised Faiss index), the vectors file and the manifest atomically.

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
    keep = {name}
    try:
        if vectors is not None:
            _publish(vectors)
            keep.add(vectors.name)
            manifest.vectors_file = f"{SNAPSHOT_DIR}/{vectors.name}"
            manifest.vectors_bytes = vectors.bytes
            manifest.vectors_sha256 = vectors.sha256
            manifest.vectors_count = vectors.count
        _write_atomic(snap_dir / name, data)
        _write_atomic(data_dir / MANIFEST, json.dumps(asdict(manifest), indent=1).encode())
    except OSError:
        for leftover in (snap_dir / name, snap_dir / (name + ".tmp")):
            leftover.unlink(missing_ok=True)
        if vectors is not None:
            vectors.tmp.unlink(missing_ok=True)
            vectors.tmp.with_name(vectors.name).unlink(missing_ok=True)
        raise
    for old in snap_dir.iterdir():
        if old.name not in keep:
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


def load_vectors(data_dir: Path, manifest: Manifest) -> tuple[np.ndarray, np.ndarray] | None:
    """(ids, float16 vectors) of the manifest's vectors file, memory-mapped (read-only, no copy);
    None when the manifest names none. CorruptVectors when it does not match the manifest."""
    if not manifest.vectors_file:
        return None
    path = data_dir / manifest.vectors_file
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CorruptVectors(f"vectors file {path} is unreadable: {exc}") from exc
    if size != manifest.vectors_bytes:
        raise CorruptVectors(f"vectors file {path} has {size} bytes, the manifest says "
                             f"{manifest.vectors_bytes} (truncated or torn)")
    if size < _HEADER.itemsize:
        raise CorruptVectors(f"vectors file {path} is shorter than its header")
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    digest = hashlib.sha256()
    step = 64 << 20
    for start in range(_HEADER.itemsize, size, step):
        digest.update(raw[start : start + step].data)
    if digest.hexdigest() != manifest.vectors_sha256:
        raise CorruptVectors(f"vectors file {path} does not match its sha256 (corrupt)")
    header = raw[: _HEADER.itemsize].view(_HEADER)[0]
    dim, count, seq = int(header["dim"]), int(header["count"]), int(header["seq"])
    if (bytes(header["magic"]) != VECTORS_MAGIC or dim != manifest.dim or seq != manifest.seq
            or count != manifest.vectors_count
            or size != _HEADER.itemsize + count * (8 + 2 * dim)):
        raise CorruptVectors(f"vectors file {path} has a header that does not match its "
                             f"manifest (dim {dim}, count {count}, seq {seq})")
    matrix_end = _HEADER.itemsize + 2 * dim * count
    vectors = raw[_HEADER.itemsize : matrix_end].view("<f2").reshape(count, dim)
    ids = raw[matrix_end:].view("<i8")
    return ids, vectors
