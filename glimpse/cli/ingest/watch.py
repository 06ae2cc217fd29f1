"""``glimpse ingest DIR --watch``: after the first upload pass, keep the gateway in sync with
the folders, over HTTP, as GATEWAY_LIBRARIES keeps a library on the gateway's own disk.

A state file (JSON, ``--state``) records each file's size, mtime and sha256, per gateway URL
and folder. A reconcile compares the folder (or only the paths events named) with it, stat
only, and reads just the files whose size or mtime differs:

- a new or changed file is uploaded (``POST /ingest``) unless the gateway has its bytes
  already (``POST /ingest/check``);
- bytes no file of the folder holds any more (a file deleted, or changed) are deleted
  (``DELETE /images/{id}``, the id from ``POST /ingest/ids``);
- bytes that a file still holds under another path (a move or a rename) keep their id: when
  the image showed the path that is gone, ``PATCH /images/{id}`` gives it the new one.

The watchdog library reports changes (inotify, or polling with ``--poll`` and where inotify
cannot start); a changed path is taken once it has been quiet for ``settle_s``, so a file still
being written is uploaded once. Lost events, folder events and an hourly timer ask for a full
reconcile, which costs a stat per file. The state is written after the gateway acknowledged
each round: a run killed meanwhile hashes those files again at its next start and the gateway
answers that it has them (nothing is uploaded twice).

One file, over 400 lines: the reconcile, the state file and the event handling share one state
and one lock, and nothing else uses them.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from glimpse.cli.ingest.discover import (
    IMAGE_EXTENSIONS,
    Candidate,
    Hashed,
    hash_file,
    sendable_kinds,
    walk_images,
)
from glimpse.cli.ingest.report import IngestSummary, Tally
from glimpse.cli.ingest.upload import (
    FATAL_STATUSES,
    FatalError,
    GaveUp,
    InFlightWindow,
    RetryPolicy,
    Uploader,
    batches,
    error_sentence,
)

DEFAULT_STATE = "ingest-watch.json"
# A file is taken once it has not changed for this long (a copy in progress keeps changing).
SETTLE_S = 2.0
# A full reconcile costs a stat per file: hourly, it catches whatever the events missed.
RESCAN_S = 3600.0
# How often the polling observer compares each folder with its last look.
POLL_S = 10.0
# After a round the gateway could not answer, the paths wait this long before the next try.
RETRY_S = 30.0

Entry = tuple[int, int, str, str]  # size, mtime_ns, sha256, "ok" | "rejected"


class StateFile:
    """The recorded files of each folder, under the gateway URL they were synced to."""

    def __init__(self, path: Path, url: str) -> None:
        self.path = path
        self.url = url.rstrip("/")
        self.folders: dict[str, dict[str, Entry]] = {}
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        if isinstance(data, dict) and data.get("url") == self.url:
            # Another gateway's ids and stored bytes say nothing about this one: start over.
            for folder, files in (data.get("folders") or {}).items():
                self.folders[folder] = {rel: tuple(e) for rel, e in files.items()}

    def of(self, root: Path) -> dict[str, Entry]:
        return self.folders.setdefault(str(root.resolve()), {})

    def save(self) -> None:
        """Written whole to a temporary file, then renamed: a kill leaves the old or the new."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"url": self.url, "folders": self.folders}))
        os.replace(tmp, self.path)


@dataclass
class Round:
    """What one reconcile did (the watch prints it)."""

    uploaded: int = 0
    moved: int = 0
    deleted: int = 0
    rejected: int = 0
    retry: list[str] = field(default_factory=list)  # paths to look at again later


class FolderSync:
    """One folder kept in sync with the gateway through ``uploader``'s client."""

    def __init__(self, root: Path, files: dict[str, Entry], uploader: Uploader,
                 settle_s: float = SETTLE_S) -> None:
        self.root = root
        self.files = files
        self.uploader = uploader
        self.settle_s = settle_s
        self.kinds = sendable_kinds()

    def _stat(self, relative: str) -> Candidate | None:
        path = self.root / relative
        if any(p.startswith(".") for p in relative.split("/")):
            return None
        if Path(relative).suffix.lower() not in IMAGE_EXTENSIONS:
            return None
        try:
            real = path.resolve(strict=True)
            info = os.stat(real)
        except (OSError, RuntimeError):
            return None
        if not real.is_relative_to(self.root.resolve()) or not real.is_file():
            return None  # a symlink leaving the folder is not followed, as by the first pass
        return Candidate(path, relative, info.st_size)

    def reconcile(self, paths: list[str] | None = None) -> Round:
        """Bring the gateway in line with the folder (or with ``paths`` of it); blocks."""
        summary = IngestSummary()
        tally = Tally(summary, progress=False)
        self.uploader.tally = tally
        done = Round()
        if paths is None:
            found = list(walk_images(self.root, IMAGE_EXTENSIONS, summary))
            candidates: list[str] = list(self.files)
        else:
            found = [c for p in paths if (c := self._stat(p)) is not None]
            candidates = [p for p in paths if p in self.files]
        present = {c.relative for c in found}
        now = time.time_ns()
        changed: list[tuple[Candidate, int]] = []
        for c in found:
            try:
                mtime = os.stat(c.path).st_mtime_ns
            except OSError:
                continue
            entry = self.files.get(c.relative)
            if entry is not None and entry[:2] == (c.size, mtime):
                continue
            if now - mtime < self.settle_s * 1e9:
                done.retry.append(c.relative)  # still being written, maybe
            else:
                changed.append((c, mtime))
        released: list[tuple[str, str]] = []  # (path, sha256) that path no longer holds
        hashed: list[tuple[Hashed, int]] = []
        for c, mtime in changed:
            h = hash_file(c, self.kinds, tally)
            old = self.files.get(c.relative)
            if h is None:
                refusal = next((f for f in summary.failures if f.relative == c.relative), None)
                if refusal is not None and refusal.status == "rejected" and refusal.sha256:
                    self.files[c.relative] = (c.size, mtime, refusal.sha256, "rejected")
                    done.rejected += 1
                    if old is not None and old[3] == "ok" and old[2] != refusal.sha256:
                        released.append((c.relative, old[2]))
                continue  # unreadable now: the next full reconcile looks again
            hashed.append((h, mtime))
            if old is not None and old[3] == "ok" and old[2] != h.sha256:
                released.append((c.relative, old[2]))
        self._upload(hashed, done, summary)
        gone = [p for p in candidates if p not in present]
        released += [(p, self.files[p][2]) for p in gone if self.files[p][3] == "ok"]
        new_paths = [h.candidate.relative for h, _ in hashed]
        for relative, sha256 in released:
            self._release(relative, sha256, new_paths, done)
            if relative in gone:  # forgotten only once the gateway has followed
                del self.files[relative]
        for relative in gone:
            self.files.pop(relative, None)  # the rejected ones
        return done

    def _upload(self, hashed: list[tuple[Hashed, int]], done: Round,
                summary: IngestSummary) -> None:
        """Send what the gateway lacks; record every file it holds now (or rejected)."""
        if not hashed:
            return
        missing = self.uploader.missing([h.sha256 for h, _ in hashed])
        mtimes = {h.candidate.relative: mtime for h, mtime in hashed}
        to_send = [h for h, _ in hashed if h.sha256 in missing]
        before = len(summary.failures)
        for batch in batches(to_send, 16, 32 << 20):
            self.uploader.upload(batch)
        refused = {f.relative: f for f in summary.failures[before:]}
        for h, _ in hashed:
            c = h.candidate
            failure = refused.get(c.relative)
            if failure is not None and failure.status != "rejected":
                done.retry.append(c.relative)  # not sent (gateway down): tried again later
                continue
            status = "rejected" if failure is not None else "ok"
            self.files[c.relative] = (c.size, mtimes[c.relative], h.sha256, status)
            if status == "rejected":
                done.rejected += 1
            elif h.sha256 in missing:
                done.uploaded += 1

    def _release(self, relative: str, sha256: str, new_paths: list[str], done: Round) -> None:
        """``relative`` no longer holds ``sha256``'s bytes: the image moves to a path that
        still does, or is deleted when none does."""
        holders = sorted(p for p, e in self.files.items()
                         if e[2] == sha256 and e[3] == "ok" and p != relative)
        item_id = self._ids([sha256]).get(sha256)
        if item_id is None:
            return  # deleted on the gateway already
        if not holders:
            resp = self.uploader.request("DELETE", f"/images/{item_id}")
            self._check(resp, (204, 404), "DELETE /images")
            done.deleted += 1
            return
        meta = self.uploader.request("GET", f"/images/{item_id}/meta")
        self._check(meta, (200,), "GET /images/{id}/meta")
        if meta.json().get("path") != relative:
            return  # the image shows another path (a copy still there): it keeps it
        fresh = [p for p in holders if p in new_paths]
        resp = self.uploader.request("PATCH", f"/images/{item_id}",
                                     json={"path": (fresh or holders)[0]})
        self._check(resp, (200, 404), "PATCH /images/{id}")
        done.moved += 1

    def _ids(self, digests: list[str]) -> dict[str, int]:
        resp = self.uploader.request("POST", "/ingest/ids", json={"sha256": digests})
        self._check(resp, (200,), "/ingest/ids")
        return {str(k): int(v) for k, v in resp.json()["ids"].items()}

    @staticmethod
    def _check(resp: httpx.Response, ok: tuple[int, ...], what: str) -> None:
        if resp.status_code in ok:
            return
        sentence = error_sentence(resp)[1]
        if resp.status_code in FATAL_STATUSES:
            raise FatalError(f"{what} answered {sentence}")
        raise GatewayFault(f"{what} answered {sentence}")


class GatewayFault(Exception):
    """An answer that is neither success nor the run's fault: the round is tried again."""


class Watch:
    """The observers of the folders and the loop that reconciles what they report."""

    def __init__(self, syncs: list[FolderSync], state: StateFile, *, poll: bool = False,
                 settle_s: float = SETTLE_S, rescan_s: float = RESCAN_S,
                 log: Any = None) -> None:
        self.syncs = syncs
        self.state = state
        self.poll = poll
        self.settle_s = settle_s
        self.rescan_s = rescan_s
        self.log = log or (lambda line: None)
        self.lock = threading.Lock()
        self.dirty: list[dict[str, float]] = [{} for _ in syncs]
        self.full = [True for _ in syncs]  # a first full reconcile catches up with the pass
        self.not_before = [0.0 for _ in syncs]  # after a fault, no round before this time
        self.watcher = "off"
        self.rounds = 0

    def _observer(self) -> Any:
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        def schedule(observer: Any) -> Any:
            for n, sync in enumerate(self.syncs):
                observer.schedule(_Handler(self, n), str(sync.root), recursive=True)
            observer.daemon = True
            observer.start()
            return observer

        if not self.poll:
            try:
                observer = schedule(Observer())
                self.watcher = "inotify"
                return observer
            except OSError as exc:  # the inotify watch limit, a filesystem without it
                self.log(f"inotify failed ({exc}); polling every {POLL_S:.0f} s instead")
        self.watcher = "polling"
        return schedule(PollingObserver(timeout=POLL_S))

    def notice(self, n: int, event: Any) -> None:
        """An observer's event (on its thread)."""
        from watchdog.events import EVENT_TYPE_EVENTS_LOST

        root = self.syncs[n].root
        with self.lock:
            if event.event_type == EVENT_TYPE_EVENTS_LOST or (
                event.is_directory and event.event_type in ("created", "moved", "deleted")
            ):
                self.full[n] = True
                return
            if event.is_directory or event.event_type in ("opened", "closed_no_write"):
                return
            for raw in (event.src_path, getattr(event, "dest_path", "") or ""):
                try:
                    relative = Path(os.fsdecode(raw)).relative_to(root).as_posix()
                except ValueError:
                    continue
                self.dirty[n][relative] = time.monotonic()

    def run(self, stop: threading.Event) -> None:
        """Until ``stop``: reconcile what changed. FatalError ends it (the run is refused)."""
        observer = self._observer()
        next_full = time.monotonic() + self.rescan_s
        try:
            while not stop.is_set():
                if time.monotonic() >= next_full:
                    self.full = [True for _ in self.syncs]
                    next_full = time.monotonic() + self.rescan_s
                for n, sync in enumerate(self.syncs):
                    self._round(n, sync)
                stop.wait(min(0.2, self.settle_s / 4))
        finally:
            observer.stop()
            observer.join(5)

    def _round(self, n: int, sync: FolderSync) -> None:
        if time.monotonic() < self.not_before[n]:
            return
        cutoff = time.monotonic() - self.settle_s
        with self.lock:
            full, self.full[n] = self.full[n], False
            ready = [] if full else [p for p, t in self.dirty[n].items() if t <= cutoff]
            for p in ready:
                del self.dirty[n][p]
            if full:
                self.dirty[n].clear()  # the full reconcile looks at them all
        if not (full or ready):
            return
        try:
            done = sync.reconcile(None if full else ready)
        except (GaveUp, GatewayFault, httpx.HTTPError, OSError) as exc:
            # Nothing of the round is lost: its paths (or the full reconcile) come back later.
            self.log(f"{sync.root}: {exc}; trying again in {RETRY_S:.0f} s")
            self.not_before[n] = time.monotonic() + RETRY_S
            with self.lock:
                self.full[n] = self.full[n] or full
                for p in ready:
                    self.dirty[n].setdefault(p, time.monotonic())
            self.state.save()  # what the round did before the fault
            return
        self.state.save()
        self.rounds += 1
        with self.lock:
            later = time.monotonic()
            for p in done.retry:
                self.dirty[n].setdefault(p, later)
        if done.uploaded or done.moved or done.deleted or done.rejected:
            self.log(f"{sync.root}: {done.uploaded} uploaded, {done.moved} moved, "
                     f"{done.deleted} deleted, {done.rejected} rejected")


class _Handler:
    """watchdog's handler protocol: ``dispatch`` is all an observer calls."""

    def __init__(self, watch: Watch, n: int) -> None:
        self.watch, self.n = watch, n

    def dispatch(self, event: Any) -> None:
        self.watch.notice(self.n, event)


def watch_folders(
    dirs: list[str], client: httpx.Client, state_path: Path, stop: threading.Event, *,
    hashed: dict[str, dict[str, Entry]] | None = None, poll: bool = False,
    settle_s: float = SETTLE_S, retry: RetryPolicy | None = None, log: Any = None,
) -> Watch:
    """Keep ``dirs`` in sync with the gateway behind ``client`` until ``stop`` is set.

    ``hashed``: what the first pass hashed, per folder (its files are not read again).
    """
    state = StateFile(state_path, str(client.base_url))
    summary = IngestSummary()
    uploader = Uploader(client, Tally(summary, progress=False), retry or RetryPolicy(),
                        InFlightWindow(1, 60.0))
    syncs = []
    for directory in dirs:
        root = Path(directory).resolve()
        files = state.of(root)
        files.update((hashed or {}).get(str(root), {}))
        syncs.append(FolderSync(root, files, uploader, settle_s))
    watch = Watch(syncs, state, poll=poll, settle_s=settle_s, log=log)
    watch.run(stop)
    state.save()
    return watch


def first_pass_entries(dirs: list[str], hashed: list[Hashed], summary: IngestSummary
                       ) -> dict[str, dict[str, Entry]]:
    """What the first pass hashed, per folder, as state entries, so the watch reads none of
    those files again: "ok" for bytes the gateway holds now, "rejected" for those it refused.
    Files it could not send are left out (the watch's first reconcile sends them)."""
    roots = [(Path(d), str(Path(d).resolve())) for d in dirs]
    failures = {f.path: f for f in summary.failures}
    out: dict[str, dict[str, Entry]] = {}
    for h in hashed:
        c = h.candidate
        failure = failures.get(str(c.path))
        if failure is not None and failure.status != "rejected":
            continue
        key = next((k for root, k in roots if c.path == root / c.relative), None)
        try:
            info = os.stat(c.path)
        except OSError:
            continue
        if key is None or info.st_size != c.size:
            continue  # changed since it was hashed: read again
        status = "rejected" if failure is not None else "ok"
        out.setdefault(key, {})[c.relative] = (c.size, info.st_mtime_ns, h.sha256, status)
    return out
