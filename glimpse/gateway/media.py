"""The media store: originals in pack files, thumbnails by sha256.

Layout under ``media_dir``::

    packs/<yyyy-mm>/<random>.pack       originals, as they came, one pack per ingest request
    packs/<yyyy-mm>/<random>.pending    the pack's entries may not all be settled yet
    thumbnails/ab/cd/<sha256>.<ext>     longest side <= thumbnail_size, WebP or JPEG
    originals/ab/cd/<sha256>            originals stored before packs (read and removed only)

An ingest request's originals go to one new pack (:meth:`MediaStore.write_pack`): each one a
small header (magic, version, length, sha256) and its bytes, written in one call and made
durable by one fsync of the pack and one of its folder. A file per original cost that much
for every image: on ext4 a file's creation, fsync and folder fsync were 200-400 us of kernel
CPU per image, against ~30 for its share of a pack (docs/ingest.md). The pack's location of
each original goes into its item's meta (``"original": {"pack", "offset", "length"}``), and
is acknowledged only with the index add, after the fsyncs; a crash before that leaves
unreferenced bytes in a pack, never an item without its original. A pack is never rewritten:
deleting an item erases its original's range in place (a punched hole, its blocks freed at
once, or zeros) and clears the sha256 in its header, which keeps the length, so the pack can
still be walked entry by entry (:meth:`MediaStore.pack_entries`). A read checks the entry's
header names the item's sha256 and length.

A pack is born with a ``.pending`` marker beside it (a hard link to it, made durable by the
same folder fsync). The request that wrote it removes the marker once each entry is either
referenced by the item the index added or erased; one whose add did not answer keeps it, and
so does a crash. The gateway's settling pass (settle.py) later asks the index about the
entries of each pack still marked, erases those no item refers to, and removes the marker (or
the whole pack).

Thumbnails are written to a temporary name in their final folder, fsynced and renamed, so a
reader (or a crash) only ever sees a whole file: a thumbnail is served as soon as it exists.
Files are found by sha256 or by a checked pack location only; the one place a client-given
path is resolved is :meth:`MediaStore.library_path`, strictly inside the library.

All methods block (disk I/O); callers run them in a worker thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import os
import re
import struct
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

# Packs ---------------------------------------------------------------------------------------

# Each original in a pack: this header, then its bytes. Self-describing, so the originals can be
# listed and checked from the packs alone (scripts, recovery), not only through the index.
PACK_ENTRY = struct.Struct("<4sIQ32s")  # magic, format version, byte count, raw sha256
PACK_MAGIC = b"GLPK"
PACK_VERSION = 1
ERASED_DIGEST = bytes(32)  # an erased entry's header: its sha256 cleared, its length kept
_PACK_NAME = re.compile(r"^[0-9]{4}-[0-9]{2}/[0-9a-f]{32}\.pack$")
PENDING = ".pending"
_IOV_MAX = 1024  # buffers per writev call (Linux's IOV_MAX)


def _marker_of(pack_path: str) -> str:
    """The ``.pending`` marker's path beside a pack's."""
    return pack_path.removesuffix(".pack") + PENDING


@dataclasses.dataclass(frozen=True)
class PackEntry:
    """One entry of a pack: its sha256 (None once erased), and where its bytes are."""

    sha256: str | None
    offset: int
    length: int

    def location(self, pack: str) -> dict[str, Any]:
        """The entry's location as an item's meta names it (see :func:`packed_location`)."""
        return {"pack": pack, "offset": self.offset, "length": self.length}


def _writev_all(fd: int, chunks: Sequence[bytes]) -> None:
    """Write every chunk, in order: one call for a regular file, short of a full disk."""
    views = [memoryview(c) for c in chunks if c]
    while views:
        batch = views[:_IOV_MAX]
        written = os.writev(fd, batch)
        if not written:
            raise OSError(errno.EIO, "the file system took none of a write")
        done = 0
        while done < len(batch) and written >= len(batch[done]):
            written -= len(batch[done])
            done += 1
        views = views[done:]
        if written:
            views[0] = views[0][written:]


def packed_location(original: Any) -> tuple[str, int, int] | None:
    """(pack name, offset, length) of an item's ``original`` meta, or None when it is not a
    well-formed pack location (an item stored before packs, or one without a stored original).
    The name is checked strictly: it comes from the index, and becomes a path."""
    if not isinstance(original, dict):
        return None
    pack, offset, length = original.get("pack"), original.get("offset"), original.get("length")
    if not isinstance(pack, str) or not _PACK_NAME.match(pack):
        return None
    if type(offset) is not int or type(length) is not int:
        return None
    if offset < PACK_ENTRY.size or length < 0:
        return None
    return pack, offset, length


class _Fallocate:
    """Linux fallocate(2) with FALLOC_FL_PUNCH_HOLE, through the C library (Python has no
    binding for the mode): it frees a deleted original's blocks at once, the file keeping its
    size. None where the C library has no fallocate."""

    PUNCH_HOLE_KEEP_SIZE = 0x02 | 0x01

    def __init__(self) -> None:
        self.call: Callable[..., int] | None = None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            call = libc.fallocate
        except (OSError, AttributeError):
            return
        call.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        call.restype = ctypes.c_int
        self.call = call

    def punch(self, fd: int, offset: int, length: int) -> bool:
        """Whether the range is now a hole; False where the file system cannot punch one."""
        if self.call is None:
            return False
        if self.call(fd, self.PUNCH_HOLE_KEEP_SIZE, offset, length) == 0:
            return True
        code = ctypes.get_errno()
        if code in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return False
        raise OSError(code, os.strerror(code))


_FALLOCATE = _Fallocate()


def _erase(fd: int, offset: int, length: int) -> None:
    """Make the range unreadable: a hole where the file system can punch one, zeros elsewhere."""
    if _FALLOCATE.punch(fd, offset, length):
        return
    zeros = bytes(min(length, 1 << 20))
    end = offset + length
    while offset < end:
        offset += os.pwrite(fd, zeros[: end - offset], offset)


def _mark_pending(pack: str, marker: str) -> None:
    """Make a pack's ``.pending`` marker: a hard link to it, which adds a folder entry and no
    inode (creating a file cost 13-700 us of kernel CPU on this machine's ext4, depending on
    the inode allocator's state; a link 9-12), or an empty file where links are refused."""
    try:
        os.link(pack, marker)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise
        os.close(os.open(marker, _CREATE, 0o644))


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
        self._packs = str(root / "packs")
        self._bytes_cache: tuple[float, int] | None = None
        self._bytes_lock = threading.Lock()
        self._durable_folders: set[str] = set()  # pack folders whose own entry is synced

    def setup(self) -> None:
        (self.root / "packs").mkdir(parents=True, exist_ok=True)
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

    def write_pack(self, originals: Sequence[tuple[str, bytes]]) -> list[dict[str, Any]]:
        """Append (sha256, bytes) originals to a new pack file and make them durable: one file,
        one write and one fsync (and its folder's) for them all. Their locations, in order,
        for the items' meta (``{"pack", "offset", "length"}``; see :func:`packed_location`).

        All or nothing: on an error nothing is kept and the error is raised. The pack has a
        name of its own (a random one, under a folder per month), so writers in several
        threads, processes or gateways sharing the volume never touch each other's packs.
        It is left with its ``.pending`` marker, which the caller removes once each entry is
        referenced or erased (:meth:`settle_pack`).
        """
        for sha256, _ in originals:
            if not SHA256_RE.match(sha256):
                raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        month = time.strftime("%Y-%m", time.gmtime())
        folder = f"{self._packs}/{month}"
        name = f"{month}/{uuid.uuid4().hex}.pack"
        path = f"{self._packs}/{name}"
        chunks: list[bytes] = []
        locations: list[dict[str, Any]] = []
        offset = 0
        for sha256, data in originals:
            digest = bytes.fromhex(sha256)
            chunks.append(PACK_ENTRY.pack(PACK_MAGIC, PACK_VERSION, len(data), digest))
            chunks.append(data)
            offset += PACK_ENTRY.size
            locations.append({"pack": name, "offset": offset, "length": len(data)})
            offset += len(data)
        marker = _marker_of(path)
        try:
            fd = os.open(path, _CREATE, 0o644)
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
            fd = os.open(path, _CREATE, 0o644)
        try:
            # In the same folder: the one folder fsync below makes both entries durable, so a
            # pack that survives a crash has its marker too.
            _mark_pending(path, marker)
            _writev_all(fd, chunks)
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            for torn in (path, marker):  # nothing points at it yet
                with contextlib.suppress(OSError):
                    os.unlink(torn)
            raise
        os.close(fd)
        if self.fsync:
            if folder not in self._durable_folders:
                # A new month's folder (made here or by another writer that may not have
                # synced it yet): its entry in packs/ is durable only once packs/ is.
                _fsync_dir(self._packs)
            _fsync_dir(folder)  # the new pack's entry
            self._durable_folders.add(folder)
        return locations

    def put_original(self, sha256: str, data: bytes) -> dict[str, Any] | None:
        """Keep the original in a pack of its own (:meth:`write_pack`); its location, or
        None when originals are not stored."""
        if not self.store_originals:
            return None
        return self.write_pack([(sha256, data)])[0]

    def put_thumbnail(self, sha256: str, content_type: str, data: bytes) -> None:
        write_atomic(self.thumbnail_path(sha256, content_type), data, fsync=self.fsync)

    def put_many(
        self, items: Sequence[tuple[str, bytes, str, bytes | None]], pool: Executor | None = None
    ) -> tuple[list[OSError | None], list[dict[str, Any] | None]]:
        """Store (sha256, original, thumbnail type, thumbnail or None) of many images at once:
        the originals in one pack (:meth:`write_pack`), the thumbnails (made at ingest only
        without stored originals) each in its own file, their fsyncs side by side in ``pool``
        (:func:`write_atomic_many`). One error (or None) per item, and each item's original
        location (None without stored originals). When it returns, every item without an
        error is durable.
        """
        errors: list[OSError | None] = [None] * len(items)
        locations: list[dict[str, Any] | None] = [None] * len(items)
        if self.store_originals and items:
            try:
                locations = list(self.write_pack([(sha, data) for sha, data, _, _ in items]))
            except OSError as exc:
                errors = [exc] * len(items)
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
        return errors, locations

    def _open_pack(
        self, sha256: str, original: Any, flags: int
    ) -> tuple[int, int, int] | None:
        """(open descriptor, offset, length) of the pack an item's ``original`` location names,
        or None when the location or ``sha256`` is malformed or the pack is gone. The caller
        closes the descriptor."""
        location = packed_location(original)
        if location is None or not SHA256_RE.match(sha256):
            return None
        pack, offset, length = location
        try:
            fd = os.open(self._pack_path(pack), flags | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        return fd, offset, length

    def erase_packed(self, sha256: str, original: Any) -> None:
        """Erase a packed original in place (``original``: its pack location), if the entry
        there is ``sha256``'s: punched out where the file system can (its blocks freed at
        once), zeroed elsewhere."""
        opened = self._open_pack(sha256, original, os.O_RDWR)
        if opened is None:
            return
        fd, offset, length = opened
        try:
            if self._entry(fd, sha256, offset, length) is not None:
                # The header first: once it is cleared no read returns the entry, and the
                # length it keeps lets the pack still be walked (:meth:`pack_entries`).
                erased = PACK_ENTRY.pack(PACK_MAGIC, PACK_VERSION, length, ERASED_DIGEST)
                if os.pwrite(fd, erased, offset - PACK_ENTRY.size) != PACK_ENTRY.size:
                    raise OSError(errno.EIO, "a short write of a pack entry's header")
                _erase(fd, offset, length)
        finally:
            os.close(fd)

    def remove(self, sha256: str, original: Any = None) -> None:
        """Forget the original (``original``: the item's pack location, when it has one; see
        :meth:`erase_packed`) and every thumbnail of ``sha256``."""
        self.erase_packed(sha256, original)
        paths = [self.original_path(sha256)]
        paths += [self.thumbnail_path(sha256, ct) for ct in THUMBNAIL_EXT]
        for path in paths:
            path.unlink(missing_ok=True)

    # Settling packs -----------------------------------------------------------------------

    def _pack_path(self, pack: str) -> str:
        if not _PACK_NAME.match(pack):
            raise ValueError(f"not a pack name: {pack!r}")
        return f"{self._packs}/{pack}"

    def settle_pack(self, pack: str, *, keep: bool) -> None:
        """Mark a pack settled: its marker removed, and the pack too unless ``keep`` (no item
        refers to any of its entries). The pack goes first: a crash between the two leaves a
        marker without a pack, which the next pass removes."""
        path = self._pack_path(pack)
        if not keep:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_marker_of(path))

    def marker_path(self, pack: str) -> Path:
        """Where a pack's ``.pending`` marker is (or was)."""
        return Path(_marker_of(self._pack_path(pack)))

    def pending_packs(self, older_than_s: float) -> list[str]:
        """The packs (their names) whose ``.pending`` marker is older than ``older_than_s``,
        oldest first. A marker that is a link to its pack has the pack's times: its age runs
        from the pack's last change (a write or an erase), never from before its creation."""
        cutoff = time.time() - older_than_s
        found: list[tuple[float, str]] = []
        try:
            with os.scandir(self._packs) as listing:
                months = sorted(
                    (e.name, e.path) for e in listing if e.is_dir(follow_symlinks=False)
                )
        except FileNotFoundError:
            return []
        for month, folder in months:
            with os.scandir(folder) as listing:
                for entry in listing:
                    if not entry.name.endswith(PENDING):
                        continue
                    pack = f"{month}/{entry.name.removesuffix(PENDING)}.pack"
                    if not _PACK_NAME.match(pack):
                        continue
                    try:
                        mtime = entry.stat(follow_symlinks=False).st_mtime
                    except FileNotFoundError:
                        continue  # settled while we looked
                    if mtime < cutoff:
                        found.append((mtime, pack))
        return [pack for _, pack in sorted(found)]

    def pack_entries(self, pack: str) -> tuple[list[PackEntry], bool]:
        """The entries of a pack, in order, and whether the walk reached its end (False: a
        header that does not parse, or an entry cut short, stopped it). No entries and True
        when the pack is gone."""
        try:
            fd = os.open(self._pack_path(pack), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return [], True
        entries: list[PackEntry] = []
        try:
            size = os.fstat(fd).st_size
            position = 0
            while position < size:
                header = os.pread(fd, PACK_ENTRY.size, position)
                if len(header) < PACK_ENTRY.size:
                    return entries, False
                magic, version, length, digest = PACK_ENTRY.unpack(header)
                start = position + PACK_ENTRY.size
                if (magic, version) != (PACK_MAGIC, PACK_VERSION) or start + length > size:
                    return entries, False
                sha256 = None if digest == ERASED_DIGEST else digest.hex()
                entries.append(PackEntry(sha256, start, length))
                position = start + length
        finally:
            os.close(fd)
        return entries, True

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

    @staticmethod
    def _entry(fd: int, sha256: str, offset: int, length: int) -> bytes | None:
        """The original at ``offset`` of the open pack, or None unless the entry's header
        there names ``sha256`` and ``length`` (erased, or a location that does not fit)."""
        start = offset - PACK_ENTRY.size
        size = PACK_ENTRY.size + length
        chunks, got = [], 0
        while got < size:
            chunk = os.pread(fd, size - got, start + got)
            if not chunk:
                return None  # past the end
            chunks.append(chunk)
            got += len(chunk)
        blob = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        magic, version, count, digest = PACK_ENTRY.unpack_from(blob)
        if (magic, version, count) != (PACK_MAGIC, PACK_VERSION, length):
            return None
        if digest != bytes.fromhex(sha256):
            return None
        return blob[PACK_ENTRY.size :]

    def read_packed(self, sha256: str, original: Any) -> bytes | None:
        """The bytes of a packed original, or None (no such location, pack or entry)."""
        opened = self._open_pack(sha256, original, os.O_RDONLY)
        if opened is None:
            return None
        fd, offset, length = opened
        try:
            return self._entry(fd, sha256, offset, length)
        finally:
            os.close(fd)

    def find_original(
        self, sha256: str, relative: str, original: Any = None
    ) -> Path | bytes | None:
        """The original of an item: the packed bytes (``original``: the item's pack location),
        else a stored file (from before packs), else the library file."""
        if self.store_originals:
            if original is not None:
                data = self.read_packed(sha256, original)
                if data is not None:
                    return data
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
                    if name.endswith(PENDING):
                        continue  # a link to its pack (or an empty file)
                    try:
                        info = os.stat(os.path.join(folder, name))
                    except OSError:
                        continue  # removed while we walked
                    # A pack's erased originals are holes: count the blocks it holds.
                    packed = name.endswith(".pack")
                    total += min(info.st_size, info.st_blocks * 512) if packed else info.st_size
            self._bytes_cache = (now, total)
            return total

    def invalidate_bytes(self) -> None:
        with self._bytes_lock:
            self._bytes_cache = None
