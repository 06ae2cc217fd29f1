"""Libraries: photo folders indexed where they are (GATEWAY_LIBRARIES), kept in sync by watching.

Each library is a read-only folder with a name (``photos=/mnt/photos``). Its files go through
the same ingest as an upload (ingest.ingest_files, ``in_place``: no copy of the original), so
the key stays the sha256 and the same bytes in two places, or uploaded too, are one item. The
path an item shows is ``<name>/<relative path>``.

A state file per library (SQLite, ``<media>/libraries/<name>.sqlite``) records each file's
size, mtime, sha256, status and error. A scan walks the folder with stat only and reads the
contents of just the files whose size or mtime differs from that record: a rescan of an
unchanged library reads no file. A file whose bytes did not change is not encoded again; a
file that cannot be indexed is recorded failed with the reason and left until it changes.

After the first scan a watchdog observer reports changes (inotify on local disks, polling on
network filesystems, where inotify sees nothing): a changed path is reconciled once it has been
quiet for ``settle_s`` (a file still being written is taken once its size is stable). Lost
events (an inotify queue overflow), folder events and a periodic timer ask for a rescan, which
catches up with whatever the events missed.

A crash loses nothing acknowledged: a file's record is written after the index acknowledged its
item, and a file without a record is hashed again at the next scan, which the index answers
"exists" for an item it already has (nothing is indexed twice).

One file, over 400 lines: the state file, the scan, the watcher and the per-media-folder
owner lock share the Library object and its invariants (a record written only after the index
acknowledged); split, each part would reach into the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import fnmatch
import hashlib
import json
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from watchdog.events import (
    EVENT_TYPE_EVENTS_LOST,
    EVENT_TYPE_MOVED,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from glimpse.contracts.errors import ErrorType, GlimpseError
from glimpse.web.forms import FormPart

if TYPE_CHECKING:
    from glimpse.gateway.state import GatewayState

logger = logging.getLogger("glimpse.gateway")

# A rescan costs a stat per file (docs/library.md): cheap enough to run hourly as a safety net.
RESCAN_INTERVAL_S = 3600.0
# A file is taken once it has not changed for this long (a copy in progress keeps changing).
SETTLE_S = 2.0
# How often a polling observer (network filesystems) compares the folder with its last look.
POLL_INTERVAL_S = 30.0
# How often a process that does not sync a library checks whether its owner is gone, and the
# owner checks for a scan asked of another process.
OWNER_RETRY_S = 10.0
# A file an upstream or disk fault kept from being indexed is tried again after this long.
RETRY_S = 30.0
# Refusals that are the file's own: recorded failed, not tried again until it changes.
PERMANENT_ERRORS = frozenset(
    {"validation_error", "invalid_image", "payload_too_large", "image_too_large",
     "unsupported_media_type", "bad_request"}
)
# Files per ingest call: the gateway's per-request limit, and bytes read at once stay bounded.
BATCH_FILES = 32
BATCH_BYTES = 64 * 1024 * 1024
# Filesystems whose changes made on another machine inotify never reports.
NETWORK_FS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "davfs",
     "fuse.sshfs", "fuse.rclone", "fuse.s3fs", "fuse.glusterfs", "fuse.ceph", "virtiofs"}
)
DEFAULT_EXCLUDE = ("**/.thumbnails/**", "*.tmp", "*.part", "*.crdownload")


def parse_libraries(value: str | None) -> dict[str, Path]:
    """``name=/path,name2=/path2`` as a map; a bad entry raises ValueError naming it."""
    libraries: dict[str, Path] = {}
    for entry in (value or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        name, sep, path = entry.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path or "/" in name or name.startswith("."):
            raise ValueError(
                f"GATEWAY_LIBRARIES: {entry!r} is not name=/absolute/path "
                "(a name without '/', e.g. photos=/mnt/photos)"
            )
        if not Path(path).is_absolute():
            raise ValueError(f"GATEWAY_LIBRARIES: {name}'s path {path!r} is not absolute")
        if name in libraries:
            raise ValueError(f"GATEWAY_LIBRARIES: the name {name!r} is given twice")
        libraries[name] = Path(path)
    return libraries


def filesystem_type(path: Path, mounts: str = "/proc/mounts") -> str | None:
    """The type of the filesystem ``path`` is on, from the longest mount point above it."""
    best, kind = -1, None
    try:
        lines = Path(mounts).read_text().splitlines()
    except OSError:
        return None
    target = str(path)
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best:
            best, kind = len(point), fields[2]
    return kind


def watcher_kind(setting: str, root: Path) -> str:
    """``inotify``, ``polling`` or ``off``: the setting, or (``auto``) by the filesystem type."""
    if setting != "auto":
        return setting
    return "polling" if filesystem_type(root) in NETWORK_FS else "inotify"


def _excluded(relative: str, patterns: Iterable[str]) -> bool:
    # fnmatch's '*' also matches '/', so '**/x/**' matches x at any depth once the path is
    # given a leading '/'; a pattern without '/' is matched against the file name.
    name = relative.rsplit("/", 1)[-1]
    for pattern in patterns:
        if "/" in pattern:
            if fnmatch.fnmatchcase("/" + relative, "/" + pattern.removeprefix("/")):
                return True
        elif fnmatch.fnmatchcase(name, pattern):
            return True
    return False


@dataclass
class Row:
    size: int
    mtime_ns: int
    sha256: str | None
    id: int | None
    status: str  # indexed | failed
    error: str | None


class StateFile:
    """A library's records: relative path -> (size, mtime, sha256, id, status, error)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            # WAL: a reader (serving) never waits on a scan's writes. NORMAL: a crash can lose
            # the last records, which the next scan rebuilds (the index answers "exists").
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, "
                "mtime_ns INTEGER, sha256 TEXT, id INTEGER, status TEXT, error TEXT)"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS files_sha256 ON files (sha256)")
            self._db.execute("CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value)")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def stats(self) -> dict[str, tuple[int, int]]:
        with self._lock:
            rows = self._db.execute("SELECT path, size, mtime_ns FROM files").fetchall()
        return {path: (size, mtime) for path, size, mtime in rows}

    def get(self, relative: str) -> Row | None:
        with self._lock:
            found = self._db.execute(
                "SELECT size, mtime_ns, sha256, id, status, error FROM files WHERE path = ?",
                (relative,),
            ).fetchone()
        return None if found is None else Row(*found)

    def put(self, rows: Iterable[tuple[str, Row]]) -> None:
        values = [(p, r.size, r.mtime_ns, r.sha256, r.id, r.status, r.error) for p, r in rows]
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?)", values)
            self._db.execute("COMMIT")

    def remove(self, paths: Iterable[str]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM files WHERE path = ?", [(p,) for p in paths])
            self._db.execute("COMMIT")

    def rename(self, old: str, new: str) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM files WHERE path = ?", (new,))
            self._db.execute("UPDATE files SET path = ? WHERE path = ?", (new, old))
            self._db.execute("COMMIT")

    def paths_of(self, sha256: str) -> list[tuple[str, Row]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT path, size, mtime_ns, sha256, id, status, error FROM files "
                "WHERE sha256 = ? AND status = 'indexed' ORDER BY path",
                (sha256,),
            ).fetchall()
        return [(path, Row(*rest)) for path, *rest in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, count(*) FROM files GROUP BY status").fetchall()
        return {status: n for status, n in rows}

    def failures(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT path, error FROM files WHERE status = 'failed' ORDER BY path LIMIT ?",
                (limit,),
            ).fetchall()
        return [{"path": path, "error": error} for path, error in rows]

    def get_info(self, key: str) -> Any:
        with self._lock:
            found = self._db.execute("SELECT value FROM info WHERE key = ?", (key,)).fetchone()
        return None if found is None else found[0]

    def set_info(self, key: str, value: Any) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO info VALUES (?, ?)", (key, value))


@dataclass
class ScanPlan:
    """What a scan found: files to read (new, or a size or mtime that differs), and records
    whose file is gone."""

    changed: list[tuple[str, int, int]] = field(default_factory=list)  # path, size, mtime_ns
    gone: list[str] = field(default_factory=list)
    seen: int = 0


class Library:
    """One library folder: its records, scans and watcher."""

    def __init__(
        self,
        name: str,
        root: Path,
        state_dir: Path,
        *,
        exclude: Iterable[str] = DEFAULT_EXCLUDE,
        watch: str = "auto",
        settle_s: float = SETTLE_S,
    ) -> None:
        self.name = name
        self.configured_root = root
        self.root = root
        self.exclude = tuple(exclude)
        self.watch_setting = watch
        self.settle_s = settle_s
        self.state = StateFile(state_dir / f"{name}.sqlite")
        self._owner_path = state_dir / f"{name}.owner"
        self._owner_fd: int | None = None
        self.error: str | None = None
        self.watcher: str = "off"
        self.last_scan: dict[str, Any] | None = None
        self.scanning = False
        self.dirty: dict[str, float] = {}  # relative path -> when it was last reported
        self.pending: set[str] = set()
        # Items whose shown path a rename left behind: (id, old shown path, new shown path).
        self.renamed: list[tuple[int, str, str]] = []
        self.rescan_requested = asyncio.Event()
        self.wake = asyncio.Event()
        self.observer: BaseObserver | None = None

    # The folder -------------------------------------------------------------------------

    def try_own(self) -> bool:
        """Whether this process syncs the library: one process per media folder does (a lock
        that ends with its holder), the others (workers, gateways) serve from its records."""
        if self._owner_fd is None:
            fd = os.open(self._owner_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
            self._owner_fd = fd
        return True

    def disown(self) -> None:
        if self._owner_fd is not None:
            os.close(self._owner_fd)
            self._owner_fd = None

    def check_root(self) -> bool:
        """Whether the folder can be read; else ``error`` says why."""
        try:
            root = self.configured_root.resolve(strict=True)
            if not root.is_dir():
                raise NotADirectoryError(f"{self.configured_root} is not a folder")
            with os.scandir(root) as entries:
                next(entries, None)
        except (OSError, RuntimeError) as exc:
            self.error = f"the library folder cannot be read: {exc}"
            return False
        self.root, self.error = root, None
        return True

    def resolve(self, relative: str) -> Path | None:
        """The file at ``relative`` if it is a regular file strictly inside the root (symlinks
        resolved first, so one that leaves the root is refused), else None."""
        from glimpse.gateway.media import safe_relative_path

        clean = safe_relative_path(relative)
        if clean is None or clean != relative:
            return None
        try:
            resolved = (self.root / clean).resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if not resolved.is_relative_to(self.root) or not resolved.is_file():
            return None
        return resolved

    def skipped(self, relative: str) -> bool:
        """Hidden files and folders, and the exclusion globs."""
        return any(part.startswith(".") for part in relative.split("/")) or _excluded(
            relative, self.exclude
        )

    def _walk(self) -> Iterator[tuple[str, int, int]]:
        """(relative path, size, mtime_ns) of every file taken; stat only."""
        stack = [""]
        while stack:
            prefix = stack.pop()
            try:
                entries = os.scandir(self.root / prefix if prefix else self.root)
            except OSError as exc:
                logger.warning("library %s: %s not read: %s", self.name, prefix or "/", exc)
                continue
            with entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    relative = prefix + entry.name
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            if not _excluded(relative + "/", self.exclude):
                                stack.append(relative + "/")
                            continue
                        if entry.is_symlink():
                            # Taken only when it stays inside the root; folders never followed.
                            if self.resolve(relative) is None:
                                continue
                            info = os.stat(entry.path)
                        else:
                            info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue  # removed while we walked
                    if not stat.S_ISREG(info.st_mode) or _excluded(relative, self.exclude):
                        continue
                    yield relative, info.st_size, info.st_mtime_ns

    def plan(self, paths: Iterable[str] | None = None) -> ScanPlan:
        """Compare the folder (or only ``paths``) with the records; stat only. Blocks."""
        known = self.state.stats()
        plan = ScanPlan()
        if paths is None:
            found: Iterable[tuple[str, int, int]] = self._walk()
            candidates: Iterable[str] = known
        else:
            wanted = [p for p in paths if not self.skipped(p)]
            found = [f for p in wanted if (f := self._stat(p)) is not None]
            candidates = [p for p in wanted if p in known]
        present: set[str] = set()
        for relative, size, mtime in found:
            present.add(relative)
            if known.get(relative) != (size, mtime):
                plan.changed.append((relative, size, mtime))
        plan.seen = len(present)
        plan.gone = [p for p in candidates if p not in present]
        return plan

    def _stat(self, relative: str) -> tuple[str, int, int] | None:
        path = self.resolve(relative)
        if path is None:
            return None
        try:
            info = os.stat(path)
        except OSError:
            return None
        return (relative, info.st_size, info.st_mtime_ns) if stat.S_ISREG(info.st_mode) else None

    # Watching ---------------------------------------------------------------------------

    def start_watching(self, loop: asyncio.AbstractEventLoop) -> None:
        kind = watcher_kind(self.watch_setting, self.root)
        if kind == "off":
            self.watcher = "off"
            return
        observer: BaseObserver = (
            PollingObserver(timeout=POLL_INTERVAL_S) if kind == "polling" else Observer()
        )
        observer.schedule(_Handler(self, loop), str(self.root), recursive=True)
        observer.daemon = True
        try:
            observer.start()
        except OSError as exc:  # e.g. the inotify watch limit: polling still works
            logger.warning("library %s: inotify failed (%s); polling instead", self.name, exc)
            observer = PollingObserver(timeout=POLL_INTERVAL_S)
            observer.schedule(_Handler(self, loop), str(self.root), recursive=True)
            observer.daemon = True
            observer.start()
            kind = "polling"
        self.observer, self.watcher = observer, kind

    def stop_watching(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5)
            self.observer = None

    def notice(self, event: FileSystemEvent) -> None:
        """An observer's event, on the event loop."""
        if event.event_type == EVENT_TYPE_EVENTS_LOST or (
            event.is_directory and event.event_type in ("created", "moved", "deleted")
        ):
            # Lost events, or a folder made, moved or removed: a stat-only rescan catches up.
            self.rescan_requested.set()
        elif event.is_directory:
            return  # a folder's own mtime: its files' events say what changed
        else:
            now = time.monotonic()
            for raw in (event.src_path, getattr(event, "dest_path", "") or ""):
                relative = self._relative(raw)
                if relative is not None:
                    self.dirty[relative] = now
            if event.event_type == EVENT_TYPE_MOVED:
                self._moved(event)
        self.wake.set()

    def _relative(self, raw: bytes | str) -> str | None:
        path = os.fsdecode(raw)
        if not path:
            return None
        try:
            relative = Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return None
        return None if relative == "." or self.skipped(relative) else relative

    def _moved(self, event: FileSystemEvent) -> None:
        """A renamed file keeps its record (and so its item) when its size and mtime are the
        same at the new path: no read, no hash."""
        old, new = self._relative(event.src_path), self._relative(event.dest_path)
        if old is None or new is None:
            return
        row = self.state.get(old)
        now = self._stat(new)
        if row is not None and now is not None and (row.size, row.mtime_ns) == now[1:]:
            self.state.rename(old, new)
            if row.id is not None and row.status == "indexed":
                self.renamed.append((row.id, f"{self.name}/{old}", f"{self.name}/{new}"))

    # Status -----------------------------------------------------------------------------

    def publish(self) -> None:
        """Write what the status shows to the state file, for the other processes."""
        self.state.set_info("shared", json.dumps({
            "error": self.error, "scanning": self.scanning, "last_scan": self.last_scan,
            "pending": len(self.pending) + len(self.dirty), "watcher": self.watcher,
        }))

    def status(self) -> dict[str, Any]:
        counts = self.state.counts()
        if self._owner_fd is not None:
            shared: dict[str, Any] = {
                "error": self.error, "scanning": self.scanning, "last_scan": self.last_scan,
                "pending": len(self.pending) + len(self.dirty), "watcher": self.watcher,
            }
        else:  # another process syncs it: what it last wrote
            shared = json.loads(self.state.get_info("shared") or "{}")
            shared.setdefault("error", self.error)
        error = shared.get("error")
        return {
            "name": self.name,
            "path": str(self.configured_root),
            "status": "failed" if error else ("scanning" if shared.get("scanning") else "ok"),
            "error": error,
            "files_seen": sum(counts.values()) + len(self.pending),
            "indexed": counts.get("indexed", 0),
            "pending": shared.get("pending", 0),
            "failed": counts.get("failed", 0),
            "failures": self.state.failures(),
            "last_scan": shared.get("last_scan"),
            "watcher": shared.get("watcher", "off"),
            "synced_here": self._owner_fd is not None,
        }


class _Handler(FileSystemEventHandler):
    def __init__(self, library: Library, loop: asyncio.AbstractEventLoop) -> None:
        self.library, self.loop = library, loop

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        with contextlib.suppress(RuntimeError):  # the loop closed at shutdown
            self.loop.call_soon_threadsafe(self.library.notice, event)


@dataclass
class _Read:
    relative: str
    size: int
    mtime_ns: int
    data: bytes = b""
    sha256: str = ""
    error: str | None = None
    unsettled: bool = False


def _read_file(library: Library, relative: str, max_bytes: int, settle_s: float) -> _Read:
    """A file's bytes and sha256, or why it was not taken (gone, too large, still changing)."""
    path = library.resolve(relative)
    if path is None:
        return _Read(relative, -1, -1, error="gone")
    try:
        with open(path, "rb") as fh:
            before = os.fstat(fh.fileno())
            read = _Read(relative, before.st_size, before.st_mtime_ns)
            if time.time_ns() - before.st_mtime_ns < settle_s * 1e9:
                read.unsettled = True
                return read
            if before.st_size > max_bytes:
                read.error = (
                    f"{library.name}/{relative}: the file has {before.st_size} bytes, more "
                    f"than the limit of {max_bytes}."
                )
                return read
            data = fh.read(max_bytes + 1)
            after = os.fstat(fh.fileno())
    except OSError as exc:
        return _Read(relative, -1, -1, error=f"cannot be read: {exc.strerror or exc}")
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) or len(
        data
    ) != before.st_size:
        read.unsettled = True  # written while we read it
        return read
    read.data, read.sha256 = data, hashlib.sha256(data).hexdigest()
    return read


class Libraries:
    """Every library of a gateway, and the tasks that keep them in sync."""

    def __init__(self, state: GatewayState, libraries: dict[str, Library]) -> None:
        self.gateway = state
        self.libraries = libraries
        self._tasks: list[asyncio.Task[None]] = []
        self._work_lock = asyncio.Lock()  # one batch of ingests at a time, across libraries

    @classmethod
    def from_settings(cls, state: GatewayState) -> Libraries:
        settings = state.settings
        exclude = [p.strip() for p in settings.library_exclude.split(",") if p.strip()]
        state_dir = state.media.root / "libraries"
        libraries = {
            name: Library(name, root, state_dir, exclude=exclude, watch=settings.library_watch)
            for name, root in parse_libraries(settings.libraries).items()
        }
        return cls(state, libraries)

    def get(self, name: str) -> Library:
        library = self.libraries.get(name)
        if library is None:
            known = ", ".join(sorted(self.libraries)) or "none"
            raise GlimpseError(
                ErrorType.not_found,
                f"No library is named {name!r} (configured: {known}).",
                {"name": name, "libraries": sorted(self.libraries)},
            )
        return library

    # Lifetime ---------------------------------------------------------------------------

    def start(self) -> None:
        for library in self.libraries.values():
            self._tasks.append(asyncio.create_task(self._run(library)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for library in self.libraries.values():
            await anyio.to_thread.run_sync(library.stop_watching)
            library.disown()
            library.state.close()

    async def _run(self, library: Library) -> None:
        """Own the library (else wait: another process syncs it), check the folder (again every
        minute while it fails), watch, scan, keep up."""
        while not await anyio.to_thread.run_sync(library.try_own):
            await asyncio.sleep(OWNER_RETRY_S)  # the owner may die; then one of us takes over
        while not await anyio.to_thread.run_sync(library.check_root):
            logger.error("library %s failed: %s", library.name, library.error)
            await anyio.to_thread.run_sync(library.publish)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(library.rescan_requested.wait(), 60)
        # Watched before the first scan: a file added while the scan walks past its folder is
        # still reported (and one the scan took too is only compared again).
        await anyio.to_thread.run_sync(library.start_watching, asyncio.get_running_loop())
        next_rescan = time.monotonic()
        while True:
            try:
                if library.rescan_requested.is_set() or time.monotonic() >= next_rescan:
                    library.rescan_requested.clear()
                    await self.scan(library)
                    next_rescan = time.monotonic() + RESCAN_INTERVAL_S
                await self.settle(library)
            except asyncio.CancelledError:
                raise
            except Exception:  # an upstream down, a disk error: the next round tries again
                logger.exception("library %s: sync failed; retrying", library.name)
                await asyncio.sleep(5)
            await anyio.to_thread.run_sync(library.publish)
            library.wake.clear()
            wait = max(0.0, next_rescan - time.monotonic())  # now, after a failed scan
            if library.dirty:
                wait = min(wait, library.settle_s, 5.0)
            # A scan asked of another process is seen through the state file.
            wait = min(wait, OWNER_RETRY_S)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(_either(library.wake, library.rescan_requested), wait)
            if await anyio.to_thread.run_sync(library.state.get_info, "scan_requested"):
                await anyio.to_thread.run_sync(library.state.set_info, "scan_requested", 0)
                library.rescan_requested.set()

    # Work -------------------------------------------------------------------------------

    async def scan(self, library: Library) -> dict[str, Any]:
        """A full scan: stat everything, then read and ingest what changed."""
        started, clock = time.time(), time.perf_counter()
        library.scanning = True
        try:
            plan = await anyio.to_thread.run_sync(library.plan)
            stat_s = time.perf_counter() - clock
            if plan.seen == 0 and plan.gone:
                # An unmounted share looks like an empty folder: its items are kept.
                library.error = (
                    f"the library folder is empty but {len(plan.gone)} files were indexed; "
                    "is it mounted? Nothing was deleted."
                )
                plan.gone = []
            else:
                library.error = None
            await self.apply(library, plan)
        finally:
            library.scanning = False
        library.last_scan = {
            "started_at": started,
            "seconds": round(time.perf_counter() - clock, 3),
            "stat_seconds": round(stat_s, 3),
            "files": plan.seen,
            "changed": len(plan.changed),
            "gone": len(plan.gone),
        }
        await anyio.to_thread.run_sync(library.publish)
        return library.last_scan

    async def settle(self, library: Library) -> None:
        """Reconcile the paths events named that have been quiet for ``settle_s``."""
        while library.renamed:  # taken off only once the index has the new path
            item_id, gone, new = library.renamed[0]
            await self._repoint(item_id, gone, prefer=new)
            library.renamed.pop(0)
        cutoff = time.monotonic() - library.settle_s
        ready = [p for p, t in library.dirty.items() if t <= cutoff]
        if not ready:
            return
        for path in ready:
            del library.dirty[path]
        try:
            plan = await anyio.to_thread.run_sync(library.plan, ready)
            await self.apply(library, plan)
        except Exception:
            later = time.monotonic() + RETRY_S
            for path in ready:  # not lost: looked at again once the fault may have passed
                library.dirty.setdefault(path, later)
            raise

    async def apply(self, library: Library, plan: ScanPlan) -> None:
        """Ingest the changed files, then forget the gone ones (in that order, so a file
        moved is found at its new path before its old one lets go of the item)."""
        library.pending.update(p for p, _, _ in plan.changed)
        try:
            batch: list[tuple[str, int, int]] = []
            total = 0
            for entry in plan.changed:
                batch.append(entry)
                total += entry[1]
                if len(batch) >= BATCH_FILES or total >= BATCH_BYTES:
                    await self._ingest(library, batch)
                    batch, total = [], 0
            if batch:
                await self._ingest(library, batch)
            if plan.gone:
                await self._forget(library, plan.gone)
        finally:
            library.pending.difference_update(p for p, _, _ in plan.changed)

    async def _ingest(self, library: Library, batch: list[tuple[str, int, int]]) -> None:
        gateway = self.gateway
        max_bytes = gateway.encoder.limits.max_bytes or 0
        reads = await anyio.to_thread.run_sync(
            lambda: [_read_file(library, p, max_bytes, library.settle_s) for p, _, _ in batch]
        )
        rows: list[tuple[str, Row]] = []
        uploads: list[tuple[_Read, FormPart]] = []
        replaced: list[tuple[str, int, str]] = []  # (sha256, id, path) a changed file held
        gone: list[str] = []
        for read in reads:
            if read.error == "gone":
                gone.append(read.relative)
                continue
            if read.unsettled:
                library.dirty[read.relative] = time.monotonic()  # looked at again once quiet
                continue
            if read.error is not None:
                rows.append((read.relative, Row(read.size, read.mtime_ns, None, None,
                                                "failed", read.error)))
                continue
            old = library.state.get(read.relative)
            if old is not None and old.sha256 == read.sha256:
                # Touched, not changed: the record follows the new mtime; nothing is encoded.
                rows.append((read.relative, Row(read.size, read.mtime_ns, old.sha256, old.id,
                                                old.status, old.error)))
                continue
            if old is not None and old.sha256 and old.id is not None and old.status == "indexed":
                replaced.append((old.sha256, old.id, read.relative))
            name = f"{library.name}/{read.relative}"
            uploads.append((read, FormPart("files", name, None, read.data)))
        if uploads:
            from glimpse.gateway.ingest import ingest_files

            async with self._work_lock:
                # The mtime is the date taken of a file whose EXIF has none (metadata.py).
                mtimes = {u.filename or "": r.mtime_ns / 1e9 for r, u in uploads}
                answers = await ingest_files(gateway, [u for _, u in uploads], in_place=True,
                                             mtimes=mtimes)
            for (read, _), answer in zip(uploads, answers, strict=True):
                if answer["status"] in ("added", "exists"):
                    row = Row(read.size, read.mtime_ns, read.sha256, answer["id"], "indexed", None)
                elif answer.get("error_type") not in PERMANENT_ERRORS:
                    # An upstream or disk fault, not the file's: tried again later, unrecorded.
                    library.dirty[read.relative] = time.monotonic() + RETRY_S
                    read.data = b""
                    continue
                else:
                    row = Row(read.size, read.mtime_ns, read.sha256, None, "failed",
                              answer.get("error"))
                rows.append((read.relative, row))
                read.data = b""
        if rows:
            await anyio.to_thread.run_sync(library.state.put, rows)
        for sha256, item_id, relative in replaced:
            await self._release(sha256, item_id, f"{library.name}/{relative}")
        if gone:
            await self._forget(library, gone)

    async def _forget(self, library: Library, paths: list[str]) -> None:
        """Drop the records of files that are gone; an item no other path (or upload) holds
        is deleted."""
        rows = [(p, library.state.get(p)) for p in paths]
        await anyio.to_thread.run_sync(library.state.remove, paths)
        for path, row in rows:
            if row is not None and row.sha256 and row.id is not None and row.status == "indexed":
                await self._release(row.sha256, row.id, f"{library.name}/{path}")

    def _held_elsewhere(self, sha256: str) -> bool:
        media = self.gateway.media
        if media.original_path(sha256).is_file():
            return True  # uploaded as well
        return any(lib.state.paths_of(sha256) for lib in self.libraries.values())

    async def _release(self, sha256: str, item_id: int, gone: str) -> None:
        """``gone`` (a library path) no longer holds ``sha256``'s bytes: the item is deleted
        when nothing else holds them, else it shows a path that still does."""
        gateway = self.gateway
        async with gateway.media.locks.hold([sha256]):
            if await anyio.to_thread.run_sync(self._held_elsewhere, sha256):
                await self._repoint(item_id, gone)
                return
            with contextlib.suppress(GlimpseError):  # already deleted (by DELETE /images)
                await gateway.index.delete(item_id)
            gateway.records.drop(item_id)
            await anyio.to_thread.run_sync(gateway.media.remove, sha256)
            gateway.media.invalidate_bytes()

    async def _repoint(self, item_id: int, gone: str, prefer: str | None = None) -> None:
        """An item that shows ``gone`` shows a library path its bytes are at now (``prefer``
        when it is one: a rename's new path), so searches answer where the file is. An item
        showing another path (a copy still there, an upload's) keeps it."""
        gateway = self.gateway
        try:
            record = await gateway.index.item(item_id)
        except GlimpseError as exc:
            if exc.error_type == ErrorType.not_found:
                return  # deleted meanwhile (DELETE /images/{id})
            raise
        if record.get("path") != gone:
            return
        paths = await anyio.to_thread.run_sync(self.paths, str(record.get("key")))
        if not paths:
            return
        try:
            await gateway.index.update(item_id, path=prefer if prefer in paths else paths[0])
        except GlimpseError as exc:
            if exc.error_type != ErrorType.not_found:
                raise
        gateway.records.drop(item_id)

    # Serving ----------------------------------------------------------------------------

    def original(self, sha256: str, shown: str) -> Path | None:
        """A library file whose bytes are ``sha256``'s (the shown path's first). Its record's
        size and mtime vouch for a file the scan hashed; a file that differs is hashed again.
        Blocks."""
        candidates: list[tuple[Library, str, Row]] = []
        for library in self.libraries.values():
            for relative, row in library.state.paths_of(sha256):
                first = shown == f"{library.name}/{relative}"
                candidates.insert(0, (library, relative, row)) if first else candidates.append(
                    (library, relative, row)
                )
        for library, relative, row in candidates:
            path = library.resolve(relative)
            if path is None:
                continue
            try:
                info = os.stat(path)
                if (info.st_size, info.st_mtime_ns) == (row.size, row.mtime_ns):
                    return path
                if _hash_file(path) == sha256:
                    return path
            except OSError:
                continue
            library.dirty[relative] = time.monotonic()  # changed since the scan
        return None

    def paths(self, sha256: str) -> list[str]:
        """Every library path whose bytes are ``sha256``'s. Blocks."""
        return [
            f"{library.name}/{relative}"
            for library in self.libraries.values()
            for relative, _ in library.state.paths_of(sha256)
        ]

    def status(self) -> list[dict[str, Any]]:
        return [library.status() for library in self.libraries.values()]


def _hash_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


async def _either(*events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
