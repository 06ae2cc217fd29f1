"""glimpse/cli/ingest/watch.py against a fake gateway (httpx.MockTransport): what a reconcile
sends for adds, renames, copies, changes and deletes, files not taken (still written, not an
image), a gateway fault that loses nothing, and the state the first pass leaves. The same
against the real services: tests/integration/test_ingest_watch.py."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from glimpse.cli.ingest.cli import main
from glimpse.cli.ingest.discover import Candidate, Hashed
from glimpse.cli.ingest.report import Failure, IngestSummary, Tally
from glimpse.cli.ingest.upload import InFlightWindow, RetryPolicy, Uploader
from glimpse.cli.ingest.watch import FolderSync, StateFile, Watch, first_pass_entries
from tests.unit.cli.test_ingest import image_bytes, parse_files

ONCE = RetryPolicy(attempts=1)


class Gateway:
    """The routes the watch calls, over a dict of sha256 -> (id, path)."""

    def __init__(self) -> None:
        self.items: dict[str, tuple[int, str]] = {}
        self.calls: list[str] = []
        self.down = False
        self._next = 1

    def __call__(self, request: httpx.Request) -> httpx.Response:
        route = f"{request.method} {re.sub(r'/[0-9]+', '/{id}', request.url.path)}"
        self.calls.append(route)
        if self.down:
            return httpx.Response(503, json={"error": "Index down.", "error_type": "x"})
        by_id = {i: (s, p) for s, (i, p) in self.items.items()}
        tail = request.url.path.rsplit("/", 2)
        if route == "POST /ingest/check":
            wanted = json.loads(request.read())["sha256"]
            return httpx.Response(200, json={"missing": [h for h in wanted if h not in self.items]})
        if route == "POST /ingest/ids":
            wanted = json.loads(request.read())["sha256"]
            return httpx.Response(200, json={"ids": {h: self.items[h][0] for h in wanted
                                                     if h in self.items}})
        if route == "POST /ingest":
            answers = []
            for name, data in parse_files(request):
                digest = hashlib.sha256(data).hexdigest()
                if not data.startswith(b"\xff\xd8"):
                    answers.append({"path": name, "status": "rejected", "error": "Not an image.",
                                    "error_type": "invalid_image"})
                    continue
                if digest not in self.items:
                    self.items[digest] = (self._next, name)
                    self._next += 1
                answers.append({"path": name, "status": "added", "id": self.items[digest][0]})
            return httpx.Response(200, json={"items": answers})
        item_id = int(tail[-1] if route != "GET /images/{id}/meta" else tail[-2])
        if item_id not in by_id:
            return httpx.Response(404, json={"error": "No image.", "error_type": "not_found"})
        digest, path = by_id[item_id]
        if route == "GET /images/{id}/meta":
            return httpx.Response(200, json={"id": item_id, "path": path})
        if route == "PATCH /images/{id}":
            self.items[digest] = (item_id, json.loads(request.read())["path"])
            return httpx.Response(200, json={"id": item_id, "path": self.items[digest][1]})
        assert route == "DELETE /images/{id}", route
        del self.items[digest]
        return httpx.Response(204)

    def paths(self) -> dict[str, str]:
        return {s: p for s, (_, p) in self.items.items()}


def settled(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (time.time() - 60, time.time() - 60))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def folder_sync(root: Path, gateway: Gateway, files: dict[str, Any] | None = None
                ) -> FolderSync:
    client = httpx.Client(base_url="http://gw", transport=httpx.MockTransport(gateway))
    uploader = Uploader(client, Tally(IngestSummary(), False), ONCE, InFlightWindow(1, 60))
    return FolderSync(root, {} if files is None else files, uploader, settle_s=1.0)


def test_a_reconcile_follows_adds_renames_copies_changes_and_deletes(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    a, b, c = image_bytes(1), image_bytes(2), image_bytes(3)
    settled(root / "a.jpg", a)
    settled(root / "sub/b.jpg", b)
    settled(root / "c.jpg", c)
    settled(root / "notes.jpg", b"not an image at all")
    (root / "fresh.jpg").write_bytes(image_bytes(4))  # written just now: maybe not finished
    gateway = Gateway()
    sync = folder_sync(root, gateway)

    first = sync.reconcile()
    assert (first.uploaded, first.rejected, first.retry) == (3, 1, ["fresh.jpg"])
    assert gateway.paths() == {sha(a): "a.jpg", sha(b): "sub/b.jpg", sha(c): "c.jpg"}
    assert sync.files["notes.jpg"][3] == "rejected"
    ids = {s: i for s, (i, _) in gateway.items.items()}

    gateway.calls.clear()
    again = sync.reconcile(["a.jpg", "notes.jpg"])  # unchanged: stat only, nothing sent
    assert again.uploaded == again.rejected == 0 and gateway.calls == []

    os.rename(root / "sub/b.jpg", root / "b2.jpg")
    moved = sync.reconcile(["sub/b.jpg", "b2.jpg"])
    assert moved.moved == 1 and moved.uploaded == 0 and "POST /ingest" not in gateway.calls
    assert gateway.items[sha(b)] == (ids[sha(b)], "b2.jpg")

    settled(root / "copy/c.jpg", c)  # a copy, then the original goes: the image stays
    sync.reconcile(["copy/c.jpg"])
    (root / "c.jpg").unlink()
    gone = sync.reconcile(["c.jpg"])
    assert (gone.deleted, gone.moved) == (0, 1)
    assert gateway.items[sha(c)] == (ids[sha(c)], "copy/c.jpg")

    a2 = image_bytes(5)
    settled(root / "a.jpg", a2)
    (root / "copy/c.jpg").unlink()
    changed = sync.reconcile()  # a full one: the change and the delete
    assert (changed.uploaded, changed.deleted) == (1, 2)
    assert sha(a) not in gateway.items and sha(c) not in gateway.items
    assert gateway.paths()[sha(a2)] == "a.jpg"
    assert sorted(sync.files) == ["a.jpg", "b2.jpg", "notes.jpg"]


def test_a_gateway_fault_loses_nothing(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    a, b = image_bytes(11), image_bytes(12)
    settled(root / "a.jpg", a)
    gateway = Gateway()
    sync = folder_sync(root, gateway)
    state = StateFile(tmp_path / "state.json", "http://gw")
    sync.files = state.of(root)
    lines: list[str] = []
    watch = Watch([sync], state, settle_s=0.0, log=lines.append)
    watch._round(0, sync)  # the first, full reconcile
    assert sha(a) in gateway.items and watch.rounds == 1

    settled(root / "b.jpg", b)
    (root / "a.jpg").unlink()
    watch.dirty[0].update({"b.jpg": 0.0, "a.jpg": 0.0})
    gateway.down = True
    watch._round(0, sync)
    assert "503" in lines[-1] and watch.rounds == 1
    assert set(watch.dirty[0]) == {"a.jpg", "b.jpg"}  # kept for the next round
    assert "a.jpg" in sync.files  # not forgotten before the gateway deleted its image
    watch._round(0, sync)
    assert watch.rounds == 1  # not before the retry delay

    gateway.down = False
    watch.not_before[0] = 0.0
    watch._round(0, sync)
    assert watch.rounds == 2 and gateway.paths() == {sha(b): "b.jpg"}
    saved = json.loads((tmp_path / "state.json").read_text())
    assert list(saved["folders"][str(root.resolve())]) == ["b.jpg"]
    # Another gateway's state says nothing about this one.
    assert StateFile(tmp_path / "state.json", "http://other").folders == {}


def test_the_first_pass_leaves_what_it_hashed_but_not_what_it_could_not_send(
    tmp_path: Path
) -> None:
    root = tmp_path / "photos"
    for name in ("ok.jpg", "bad.jpg", "down.jpg"):
        settled(root / name, image_bytes(len(name)))
    hashed = [Hashed(Candidate(root / n, n, (root / n).stat().st_size), f"h-{n}", "jpeg")
              for n in ("ok.jpg", "bad.jpg", "down.jpg")]
    summary = IngestSummary()
    summary.failures = [
        Failure(str(root / "bad.jpg"), "bad.jpg", "rejected", "invalid_image", "no", "h-bad.jpg"),
        Failure(str(root / "down.jpg"), "down.jpg", "failed", "unavailable", "503"),
    ]
    entries = first_pass_entries([str(root)], hashed, summary)[str(root.resolve())]
    assert {n: e[2:] for n, e in entries.items()} == {
        "ok.jpg": ("h-ok.jpg", "ok"), "bad.jpg": ("h-bad.jpg", "rejected")}
    assert entries["ok.jpg"][:2] == ((root / "ok.jpg").stat().st_size,
                                    (root / "ok.jpg").stat().st_mtime_ns)


def test_watch_options(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as refused:
        main([str(tmp_path), "--watch", "--dry-run"])
    assert refused.value.code == 2
    state = StateFile(tmp_path / "state.json", "http://gw")
    sync = folder_sync(tmp_path, Gateway())
    for poll, kind in ((True, "polling"), (False, "inotify")):
        watch = Watch([sync], state, poll=poll)
        observer = watch._observer()
        try:
            assert watch.watcher == kind
        finally:
            observer.stop()
            observer.join(5)
