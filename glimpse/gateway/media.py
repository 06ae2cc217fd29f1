"""The media store: a file per original and per thumbnail, named by the image's sha256.

Layout under ``media_dir``::

    originals/<sha256>                  originals, as they came (older versions: ab/cd/<sha256>)
    thumbnails/ab/cd/<sha256>.<ext>     longest side <= 320 px, WebP or JPEG
    thumbnails/ab/cd/<sha256>-240.<ext> the same at 240 px (ThumbnailSize)
    keys.lock                           the per-key locks (:class:`KeyLocks`)
    packs/<yyyy-mm>/<random>.pack       originals written by older versions (read only)

Every file is written to a temporary name in its final folder, made durable, renamed, and the
rename made durable (:func:`write_atomic_many`): a reader or a crash only ever sees a whole
file, and a file an item names is durable before the index acknowledges the item. Originals
share one folder (ext4's and XFS's hashed folders hold millions of entries): folders sharded
by the sha256 made a new folder, synced into its parent, for nearly every image of a young
store. The same bytes always land on the same name, so writers in several processes or
gateways sharing the volume need no coordination to write; what needs a lock (an ingest and a
delete of the same bytes) takes :class:`KeyLocks`, which holds across processes.
docs/ingest.md has the argument.

Files are found by sha256 only; a library file (library.py) is served only once it hashed to
the item's key.

All methods of :class:`MediaStore` block (disk I/O); callers run them in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import fcntl
import hashlib
import os
import re
import struct
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
THUMBNAIL_EXT = {"image/webp": "webp", "image/jpeg": "jpg"}


class ThumbnailSize(enum.IntEnum):
    """The longest sides a thumbnail is made at: 240 is for the page's grid on a phone (its
    srcset), where a tile shows fewer pixels than 320 and 240 weighs about half."""

    default = 320
    small = 240


def _libc_syncfs() -> Callable[[int], int] | None:
    try:
        call = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int]
    call.restype = ctypes.c_int
    return call


_SYNCFS = _libc_syncfs()


def _sync_file_system(fd: int) -> None:
    """Make everything written to the file system of ``fd`` durable (Linux's syncfs, which
    reports the write-back errors since ``fd`` was opened); os.sync where there is none."""
    if _SYNCFS is None:
        os.sync()
    elif _SYNCFS(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def write_atomic(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see the old file, or the whole new one."""
    [error] = write_atomic_many([(path, data)], fsync=fsync)
    if error is not None:
        raise error


def write_atomic_many(
    files: Sequence[tuple[Path, bytes]], *, fsync: bool = True
) -> list[OSError | None]:
    """Write many files (on one file system) atomically; one error (or None) per file.

    Each file is written to a temporary name in its folder; then the file system is synced
    once, the files renamed, and the file system synced once more: so when this returns,
    every file without an error is durable under its final name, and a crash leaves whole
    files or none. One syncfs for a request's files instead of an fsync of each file and
    folder: a third of the CPU per file, twice the files per second (docs/ingest.md).
    """
    errors: list[OSError | None] = [None] * len(files)
    staged: list[tuple[int, Path]] = []
    renamed: set[int] = set()
    made: set[Path] = set()  # folders known to exist
    anchor: int | None = None  # a folder of these files, opened before any of them is written
    try:
        for i, (path, data) in enumerate(files):
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            try:
                if path.parent not in made:
                    # Its entry is made durable by the sync below, with the files.
                    path.parent.mkdir(parents=True, exist_ok=True)
                    made.add(path.parent)
                if anchor is None:
                    anchor = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                errors[i] = exc
                continue
            staged.append((i, tmp))
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            except OSError as exc:
                errors[i] = exc
            finally:
                os.close(fd)

        def sync(indices: Iterable[int]) -> None:
            if fsync and anchor is not None:
                try:
                    _sync_file_system(anchor)
                except OSError as exc:
                    for i in indices:
                        errors[i] = exc

        sync([i for i, _ in staged if errors[i] is None])
        for i, tmp in staged:
            if errors[i] is None:
                try:
                    os.replace(tmp, files[i][0])
                except OSError as exc:
                    errors[i] = exc
                    continue
                renamed.add(i)
        sync(renamed)  # the renames
    finally:
        for i, tmp in staged:
            if i not in renamed:
                tmp.unlink(missing_ok=True)
        if anchor is not None:
            os.close(anchor)
    return errors


# Locks ---------------------------------------------------------------------------------------

_FLOCK = struct.Struct("hhqqi4x")  # struct flock on 64-bit Linux: type, whence, start, len, pid
_OFD_SETLK: int | None = getattr(fcntl, "F_OFD_SETLK", None)


def _lock_offset(key: str) -> int:
    """The byte of the lock file that stands for ``key``: 60 bits of its sha256."""
    digest = key if SHA256_RE.match(key) else hashlib.sha256(key.encode()).hexdigest()
    return int(digest[:15], 16)


class KeyLocks:
    """Exclusive locks by key (an image's sha256) that hold across threads, worker processes
    and gateways sharing the media folder, and end with the process that held them.

    Each key is one byte of one lock file, locked with Linux's open file description locks
    (``F_OFD_SETLK``): a lock per key without a file per key, whose creation and removal
    would cost more than writing the original (docs/ingest.md). Each :meth:`hold` opens the
    file anew, so two holders in one process exclude each other too. Keys are taken
    in one global order (no deadlock), waiting without a thread (polling). Where the system
    has no such locks, one ``flock`` of the whole file stands for every key.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def _try(self, fd: int, offset: int | None) -> bool:
        try:
            if offset is None or _OFD_SETLK is None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                fcntl.fcntl(fd, _OFD_SETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0))
        except BlockingIOError:
            return False
        except PermissionError:  # EACCES: what some systems answer for a held record lock
            return False
        return True

    @contextlib.asynccontextmanager
    async def hold(self, keys: Iterable[str]) -> AsyncIterator[None]:
        offsets: list[int | None] = [*sorted({_lock_offset(k) for k in keys})]
        if _OFD_SETLK is None and offsets:
            offsets = [None]
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o644)
        except FileNotFoundError:  # a media folder not made yet
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, flags, 0o644)
        try:
            for offset in offsets:
                delay = 0.001
                while not self._try(fd, offset):
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.05)
            yield
        finally:
            os.close(fd)  # releases every lock this holder took


# Client-given names --------------------------------------------------------------------------

_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"[A-Za-z]:")


def safe_relative_path(name: str) -> str | None:
    """A client-given file name as a clean relative POSIX path, or None if it is unsafe.

    Backslashes count as separators; '.' and empty parts are dropped; absolute paths, drive
    letters, '..' parts and control characters make the name unsafe.
    """
    # Regular expressions and str methods rather than a loop over characters: this runs once
    # per uploaded file on the event loop.
    if not name or len(name) > 4096 or _CONTROL_CHARACTER.search(name):
        return None
    name = name.replace("\\", "/")
    if name.startswith("/") or _DRIVE.match(name):
        return None
    parts = [p for p in name.split("/") if p and p != "."]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


# Originals packed by older versions ----------------------------------------------------------

_PACK_ENTRY = struct.Struct("<4sIQ32s")  # magic, format version, byte count, raw sha256
_PACK_NAME = re.compile(r"^[0-9]{4}-[0-9]{2}/[0-9a-f]{32}\.pack$")


def _read_packed(packs: Path, sha256: str, original: Any) -> bytes | None:
    """The bytes of an original an older version packed (``original``: its item's
    ``{"pack", "offset", "length"}``), or None unless the entry there is ``sha256``'s."""
    if not isinstance(original, dict):
        return None
    pack, offset, length = original.get("pack"), original.get("offset"), original.get("length")
    if not isinstance(pack, str) or not _PACK_NAME.match(pack):
        return None
    if type(offset) is not int or type(length) is not int or offset < _PACK_ENTRY.size:
        return None
    try:
        with open(packs / pack, "rb") as fh:
            fh.seek(offset - _PACK_ENTRY.size)
            blob = fh.read(_PACK_ENTRY.size + length)
    except OSError:
        return None
    if len(blob) != _PACK_ENTRY.size + length:
        return None
    magic, version, count, digest = _PACK_ENTRY.unpack_from(blob)
    if (magic, version, count, digest) != (b"GLPK", 1, length, bytes.fromhex(sha256)):
        return None
    return blob[_PACK_ENTRY.size :]


class MediaStore:
    """Originals and thumbnails on disk, addressed by sha256."""

    def __init__(
        self,
        root: Path,
        *,
        fsync: bool = True,
    ) -> None:
        self.root = root
        self.fsync = fsync
        self.locks = KeyLocks(root / "keys.lock")
        # GATEWAY_LIBRARIES' files by (sha256, shown path), checked (library.Libraries.original).
        self.library_lookup: Callable[[str, str], Path | None] | None = None
        self._bytes_cache: tuple[float, int] | None = None
        self._bytes_lock = threading.Lock()

    def setup(self) -> None:
        for folder in ("originals", "thumbnails"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        # Made now, while the disk has room: a lock that cannot be taken would fail a request.
        os.close(os.open(self.locks.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644))

    # Paths -------------------------------------------------------------------------------

    @staticmethod
    def _shard(sha256: str) -> Path:
        if not SHA256_RE.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return Path(sha256[:2], sha256[2:4])

    def original_path(self, sha256: str) -> Path:
        self._shard(sha256)  # checks it
        return self.root / "originals" / sha256

    def _older_original_path(self, sha256: str) -> Path:
        """Where versions before the pack store kept an original."""
        return self.root / "originals" / self._shard(sha256) / sha256

    def thumbnail_path(
        self, sha256: str, content_type: str, size: ThumbnailSize = ThumbnailSize.default
    ) -> Path:
        ext = THUMBNAIL_EXT[content_type]
        # The default size keeps the name it had before there were others.
        stem = sha256 if size == ThumbnailSize.default else f"{sha256}-{int(size)}"
        return self.root / "thumbnails" / self._shard(sha256) / f"{stem}.{ext}"

    # Writes ------------------------------------------------------------------------------

    def put_thumbnail(
        self,
        sha256: str,
        content_type: str,
        data: bytes,
        size: ThumbnailSize = ThumbnailSize.default,
    ) -> None:
        write_atomic(self.thumbnail_path(sha256, content_type, size), data, fsync=self.fsync)

    def put_many(
        self, items: Sequence[tuple[str, bytes]]
    ) -> tuple[list[OSError | None], list[bool]]:
        """Store the originals of many images, (sha256, bytes) each, in their own files made
        durable together (:func:`write_atomic_many`).

        One error (or None) per item, and whether this call made the original: one that was
        already there is left as it is, since an item, or an add that did not answer, may name
        it. When it returns, every item without an error is durable.
        """
        paths = [self.original_path(sha256) for sha256, _ in items]
        created = [not path.exists() for path in paths]
        files = [(path, data) for path, (_, data) in zip(paths, items, strict=True)]
        errors = write_atomic_many(files, fsync=self.fsync)
        return errors, [made and error is None for made, error in zip(created, errors,
                                                                       strict=True)]

    def remove(self, sha256: str) -> None:
        """Forget every file of ``sha256``: its original and thumbnails."""
        paths = [self.original_path(sha256), self._older_original_path(sha256)]
        for size in ThumbnailSize:
            paths += [self.thumbnail_path(sha256, ct, size) for ct in THUMBNAIL_EXT]
        for path in paths:
            path.unlink(missing_ok=True)

    # Reads -------------------------------------------------------------------------------

    def find_original(
        self, sha256: str, relative: str, original: Any = None
    ) -> Path | bytes | None:
        """The original of an item: its file (where this version, or one before packs, kept
        it), else the bytes an older version packed (``original``: the item's pack location),
        else the library file when its bytes are the item's."""
        for path in (self.original_path(sha256), self._older_original_path(sha256)):
            if path.is_file():
                return path
        if original is not None:
            data = _read_packed(self.root / "packs", sha256, original)
            if data is not None:
                return data
        if self.library_lookup is not None:
            return self.library_lookup(sha256, relative)
        return None

    def find_thumbnail(
        self, sha256: str, content_type: str, size: ThumbnailSize = ThumbnailSize.default
    ) -> Path | None:
        path = self.thumbnail_path(sha256, content_type, size)
        return path if path.is_file() else None

    def total_bytes(self, max_age_s: float = 60.0) -> int:
        """Bytes under the media folder; walking it is costly, so the answer is cached."""
        with self._bytes_lock:
            now = time.monotonic()
            if self._bytes_cache is not None and now - self._bytes_cache[0] < max_age_s:
                return self._bytes_cache[1]
            total = 0
            for folder, _dirs, files in os.walk(self.root):
                for name in files:
                    try:
                        total += os.stat(os.path.join(folder, name)).st_size
                    except OSError:
                        continue  # removed while we walked
            self._bytes_cache = (now, total)
            return total

    def invalidate_bytes(self) -> None:
        with self._bytes_lock:
            self._bytes_cache = None
