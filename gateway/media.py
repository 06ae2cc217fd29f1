"""The media store: originals content-addressed by sha256, thumbnails beside them.

Layout under ``media_dir``::

    originals/ab/cd/<sha256>            the uploaded bytes, as they came
    thumbnails/ab/cd/<sha256>.<ext>     longest side <= thumbnail_size, WebP or JPEG

Every file is written to a temporary name in its final folder, fsynced and renamed, so a
reader (or a crash) only ever sees a whole file. Files are found by sha256 only; the one place
a client-given path is resolved is :meth:`MediaStore.library_path`, strictly inside the library.

All methods block (disk I/O); callers run them in a worker thread.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from pathlib import Path, PurePosixPath

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
THUMBNAIL_EXT = {"image/webp": "webp", "image/jpeg": "jpg"}


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see the old file, or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        # The rename is durable only once the folder entry is.
        _fsync_dir(path.parent)


def safe_relative_path(name: str) -> str | None:
    """A client-given file name as a clean relative POSIX path, or None if it is unsafe.

    Backslashes count as separators; '.' and empty parts are dropped; absolute paths, drive
    letters, '..' parts and control characters make the name unsafe.
    """
    if not name or len(name) > 4096 or any(ord(c) < 32 or ord(c) == 127 for c in name):
        return None
    name = name.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None
    return str(PurePosixPath(*parts))


class MediaStore:
    """Originals and thumbnails on disk, addressed by sha256."""

    def __init__(
        self,
        root: Path,
        *,
        store_originals: bool = True,
        library_dir: Path | None = None,
        fsync: bool = True,
    ) -> None:
        self.root = root
        self.store_originals = store_originals
        self.library_dir = library_dir.resolve() if library_dir is not None else None
        self.fsync = fsync
        self._bytes_cache: tuple[float, int] | None = None
        self._bytes_lock = threading.Lock()

    def setup(self) -> None:
        (self.root / "originals").mkdir(parents=True, exist_ok=True)
        (self.root / "thumbnails").mkdir(parents=True, exist_ok=True)

    # Paths -------------------------------------------------------------------------------

    @staticmethod
    def _shard(sha256: str) -> Path:
        if not SHA256_RE.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return Path(sha256[:2], sha256[2:4])

    def original_path(self, sha256: str) -> Path:
        return self.root / "originals" / self._shard(sha256) / sha256

    def thumbnail_path(self, sha256: str, content_type: str) -> Path:
        ext = THUMBNAIL_EXT[content_type]
        return self.root / "thumbnails" / self._shard(sha256) / f"{sha256}.{ext}"

    # Writes ------------------------------------------------------------------------------

    def put_original(self, sha256: str, data: bytes) -> None:
        """Keep the original (a no-op when originals are not stored or it is already there)."""
        if not self.store_originals:
            return
        path = self.original_path(sha256)
        if path.is_file() and path.stat().st_size == len(data):
            return
        write_atomic(path, data, fsync=self.fsync)

    def put_thumbnail(self, sha256: str, content_type: str, data: bytes) -> None:
        write_atomic(self.thumbnail_path(sha256, content_type), data, fsync=self.fsync)

    def remove(self, sha256: str) -> None:
        """Forget the original and every thumbnail of ``sha256``."""
        paths = [self.original_path(sha256)]
        paths += [self.thumbnail_path(sha256, ct) for ct in THUMBNAIL_EXT]
        for path in paths:
            path.unlink(missing_ok=True)

    # Reads -------------------------------------------------------------------------------

    def library_path(self, relative: str) -> Path | None:
        """The file at ``relative`` inside the library, or None if it is not strictly inside.

        Symlinks are resolved before the check, so a link that points outside is refused.
        """
        if self.library_dir is None:
            return None
        clean = safe_relative_path(relative)
        if clean is None:
            return None
        try:
            resolved = (self.library_dir / clean).resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if not resolved.is_relative_to(self.library_dir) or not resolved.is_file():
            return None
        return resolved

    def find_original(self, sha256: str, relative: str) -> Path | None:
        """Where the original of an item is: the stored copy, else the library file."""
        if self.store_originals:
            path = self.original_path(sha256)
            if path.is_file():
                return path
        return self.library_path(relative)

    def find_thumbnail(self, sha256: str, content_type: str) -> Path | None:
        path = self.thumbnail_path(sha256, content_type)
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
