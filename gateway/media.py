"""The media store: originals content-addressed by sha256, thumbnails beside them.

Layout under ``media_dir``::

    originals/ab/cd/<sha256>            the uploaded bytes, as they came
    thumbnails/ab/cd/<sha256>.<ext>     longest side <= thumbnail_size, WebP or JPEG

Thumbnails are written to a temporary name in their final folder, fsynced and renamed, so a
reader (or a crash) only ever sees a whole file: a thumbnail is served as soon as it exists.
Originals are created at their final name (:func:`write_new_many`), which saves the
temporary name, the existence check and the rename, a third of a durable file's kernel work:
an original is read only once the index knows its item, which is after it is whole and
fsynced, and a file found under the name already is read back and compared (see there), so a
torn one from a crash is replaced, never kept. Files are found by sha256 only; the one place a
client-given path is resolved is :meth:`MediaStore.library_path`, strictly inside the library.

All methods block (disk I/O); callers run them in a worker thread.
"""

from __future__ import annotations

import errno
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
THUMBNAIL_EXT = {"image/webp": "webp", "image/jpeg": "jpg"}


def _fsync_dir(folder: Path | str) -> None:
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


def _staged_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def write_atomic_many(
    files: Sequence[tuple[Path, bytes]], *, fsync: bool = True, pool: Executor | None = None
) -> list[OSError | None]:
    """:func:`write_atomic` for many files at once, with the fsyncs batched; one error per file.

    All temporary files are written first, then fsynced together (in ``pool`` when given: the
    filesystem's journal commits concurrent fsyncs as a group), then renamed, then each
    distinct folder is fsynced once. So when this returns, every file without an error is
    durable under its final name, for a fraction of the per-file cost.
    """
    errors: list[OSError | None] = [None] * len(files)
    staged: list[tuple[int, Path, int]] = []  # (file index, temporary path, open descriptor)

    def each(fn: Callable[[Any], object], items: Sequence[Any]) -> list[OSError | None]:
        def safe(item: Any) -> OSError | None:
            try:
                fn(item)
            except OSError as exc:
                return exc
            return None

        if pool is None or len(items) < 2:
            return [safe(item) for item in items]
        return list(pool.map(safe, items))

    renamed: set[int] = set()
    try:
        try:
            for i, (path, data) in enumerate(files):
                tmp = _staged_name(path)
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except OSError as exc:
                    errors[i] = exc
                    continue
                staged.append((i, tmp, fd))
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                except OSError as exc:
                    errors[i] = exc
            if fsync:
                live = [entry for entry in staged if errors[entry[0]] is None]
                synced = each(lambda entry: os.fsync(entry[2]), live)
                for (i, _, _), failure in zip(live, synced, strict=True):
                    errors[i] = errors[i] or failure
        finally:
            for _, _, fd in staged:
                os.close(fd)
        folders: dict[Path, list[int]] = {}
        for i, tmp, _ in staged:
            if errors[i] is not None:
                continue
            path = files[i][0]
            try:
                os.replace(tmp, path)
            except OSError as exc:
                errors[i] = exc
                continue
            renamed.add(i)
            folders.setdefault(path.parent, []).append(i)
    finally:
        for i, tmp, _ in staged:
            if i not in renamed:
                tmp.unlink(missing_ok=True)
    if fsync:
        # The renames are durable only once the folder entries are.
        ordered = list(folders)
        for folder, failure in zip(ordered, each(_fsync_dir, ordered), strict=True):
            for i in folders[folder] if failure is not None else ():
                errors[i] = failure
    return errors


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


def _write_all(fd: int, data: bytes) -> None:
    written = os.write(fd, data)  # one call for a regular file, short of a full disk
    if written < len(data):
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view) :]


def _holds(fd: int, data: bytes) -> bool:
    """Whether the open file ``fd`` holds exactly ``data``."""
    if os.fstat(fd).st_size != len(data):
        return False
    chunks, size = [], 0
    while size < len(data):
        chunk = os.read(fd, len(data) - size)
        if not chunk:
            return False
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks) == data


def _make_folder(folder: str, synced: dict[str, list[int]], owner: int) -> None:
    """Create ``folder`` and any missing parents; each parent that gains an entry is noted in
    ``synced`` (to be fsynced for ``owner``'s file)."""
    try:
        os.mkdir(folder)
    except FileExistsError:
        return
    except FileNotFoundError:
        _make_folder(os.path.dirname(folder), synced, owner)
        try:
            os.mkdir(folder)
        except FileExistsError:
            return  # made by another writer meanwhile (it syncs its parent itself)
    synced.setdefault(os.path.dirname(folder), []).append(owner)


def _remove_if_ours(path: str, fd: int) -> None:
    """Close ``fd`` (a file this call created at ``path`` with O_EXCL) and unlink ``path`` if
    it still names that file. Another writer of the same image may have found it half-written
    and replaced the name with a whole copy meanwhile (:func:`write_atomic`); that copy, which
    its writer may have acknowledged, must stay."""
    try:
        mine = os.fstat(fd)
        there = os.stat(path)
        if (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino):
            os.unlink(path)
    except OSError:
        pass  # gone already, or the disk refuses even this: nothing left to undo here
    finally:
        os.close(fd)


def _create_or_keep(
    path: str, data: bytes, fsync: bool, synced: dict[str, list[int]], owner: int
) -> None:
    folder = os.path.dirname(path)
    for _ in range(3):  # the name can appear or vanish between tries; never more than twice
        try:
            fd = os.open(path, _CREATE, 0o644)
        except FileNotFoundError:
            _make_folder(folder, synced, owner)
            continue
        except FileExistsError:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # removed meanwhile: create it
            try:
                whole = _holds(fd, data)
                if whole and fsync:
                    os.fsync(fd)  # it may be another writer's, not synced yet
            finally:
                os.close(fd)
            if not whole:
                # Torn by a crash, or another process is writing it right now: an atomic
                # replacement is right either way (same name, same bytes).
                write_atomic(Path(path), data, fsync=fsync)
                return
            break
        try:
            _write_all(fd, data)
            if fsync:
                os.fsync(fd)
        except BaseException:
            _remove_if_ours(path, fd)  # torn: no one may find it
            raise
        os.close(fd)
        break
    else:
        raise FileExistsError(errno.EEXIST, "the file kept appearing and vanishing", path)
    synced.setdefault(folder, []).append(owner)


def write_new_many(
    files: Sequence[tuple[str, bytes]], *, fsync: bool = True
) -> list[OSError | None]:
    """Content-addressed files (a name always stands for the same bytes), each created at its
    final name and fsynced, then each folder that gained an entry fsynced once; one error (or
    None) per file. When this returns, every file without an error is whole and durable.

    A file is created with O_EXCL and written, and on a failure removed again, so a whole
    file under its name is either this call's or one that was there. One that was there is
    read back: the same bytes are kept (fsynced, as another writer's may not be yet);
    anything else (a file torn by a crash, or one another process is writing at this moment)
    is replaced by :func:`write_atomic`. Missing folders are made on the way.

    One thread does it all: a thread-pool task per file cost more CPU in handing work and
    waking threads than the fsyncs it overlapped (docs/ingest.md).
    """
    errors: list[OSError | None] = [None] * len(files)
    synced: dict[str, list[int]] = {}  # folder -> the files whose durability needs its fsync
    for i, (path, data) in enumerate(files):
        try:
            _create_or_keep(path, data, fsync, synced, i)
        except OSError as exc:
            errors[i] = exc
    if fsync:
        # The new names (and new folders) are durable only once their folder entries are.
        for folder, owners in synced.items():
            try:
                _fsync_dir(folder)
            except OSError as exc:
                for i in owners:
                    errors[i] = errors[i] or exc
    return errors


_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"[A-Za-z]:")


def safe_relative_path(name: str) -> str | None:
    """A client-given file name as a clean relative POSIX path, or None if it is unsafe.

    Backslashes count as separators; '.' and empty parts are dropped; absolute paths, drive
    letters, '..' parts and control characters make the name unsafe.
    """
    # Regular expressions and str methods rather than a loop over characters and PurePosixPath:
    # 2.6 us instead of 12 us for a usual name, once per uploaded file on the event loop.
    if not name or len(name) > 4096 or _CONTROL_CHARACTER.search(name):
        return None
    name = name.replace("\\", "/")
    if name.startswith("/") or _DRIVE.match(name):
        return None
    parts = [p for p in name.split("/") if p and p != "."]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


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
        self._originals = str(root / "originals")
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

    def _original_name(self, sha256: str) -> str:
        # original_path as a string, without building Path objects (the ingest's hot path).
        if not SHA256_RE.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return f"{self._originals}/{sha256[:2]}/{sha256[2:4]}/{sha256}"

    def put_original(self, sha256: str, data: bytes) -> None:
        """Keep the original (a no-op when originals are not stored; kept as it is when the
        same bytes are there already)."""
        if not self.store_originals:
            return
        error = write_new_many([(self._original_name(sha256), data)], fsync=self.fsync)[0]
        if error is not None:
            raise error

    def put_thumbnail(self, sha256: str, content_type: str, data: bytes) -> None:
        write_atomic(self.thumbnail_path(sha256, content_type), data, fsync=self.fsync)

    def put_many(
        self, items: Sequence[tuple[str, bytes, str, bytes | None]], pool: Executor | None = None
    ) -> list[OSError | None]:
        """Store (sha256, original, thumbnail type, thumbnail or None) of many images at once.

        The same files as :meth:`put_original` and :meth:`put_thumbnail` (no thumbnail file
        for None): the originals in this thread (:func:`write_new_many`), the thumbnails (made
        at ingest only without stored originals) with their fsyncs side by side in ``pool``
        (:func:`write_atomic_many`); one error (or None) per item. When it returns, every item
        without an error is durable.
        """
        errors: list[OSError | None] = [None] * len(items)
        if self.store_originals:
            originals = [(self._original_name(sha256), data) for sha256, data, _, _ in items]
            errors = write_new_many(originals, fsync=self.fsync)
        thumbnails: list[tuple[Path, bytes]] = []
        owner: list[int] = []
        for n, (sha256, _, thumbnail_type, thumbnail) in enumerate(items):
            if thumbnail is not None and errors[n] is None:
                thumbnails.append((self.thumbnail_path(sha256, thumbnail_type), thumbnail))
                owner.append(n)
        if thumbnails:
            written = write_atomic_many(thumbnails, fsync=self.fsync, pool=pool)
            for n, error in zip(owner, written, strict=True):
                errors[n] = error
        return errors

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
