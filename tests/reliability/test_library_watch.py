"""A watched library (watchdog's inotify observer, upstreams faked): adds, renames and deletes
are followed; with the events lost (the observer stopped while 1,000 files are written, then
the overflow event inotify gives) the catch-up rescan indexes every one of them."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from watchdog.events import EventsLostEvent

import glimpse.gateway.library as library_module
from glimpse.gateway.library import Libraries, Library
from tests.unit.gateway.test_library import gateway_state, png, sha


async def wait_for(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


def watched(tmp_path: Path) -> tuple[Libraries, Library, Path]:
    state = gateway_state(tmp_path)
    root = tmp_path / "lib"
    root.mkdir()
    library = Library("lib", root, state.media.root / "libraries", watch="inotify", settle_s=0.2)
    libraries = Libraries(state, {"lib": library})
    state.libraries = libraries
    return libraries, library, root


async def test_watcher_follows_adds_renames_deletes(tmp_path: Path) -> None:
    libraries, library, root = watched(tmp_path)
    up = libraries.gateway.index
    libraries.start()
    try:
        await wait_for(lambda: library.watcher == "inotify" and library.last_scan is not None)
        (root / "a.png").write_bytes(png(1))
        (root / "sub").mkdir()
        (root / "sub/b.png").write_bytes(png(2))
        await wait_for(lambda: len(up.items) == 2)
        item_id = {item["key"]: i for i, item in up.items.items()}[sha(png(1))]
        embedded = len(up.embedded)

        os.rename(root / "a.png", root / "sub/renamed.png")
        await wait_for(lambda: libraries.paths(sha(png(1))) == ["lib/sub/renamed.png"])
        assert item_id in up.items and len(up.embedded) == embedded  # same id, not re-encoded
        await wait_for(lambda: up.items[item_id]["path"] == "lib/sub/renamed.png")

        (root / "sub/b.png").unlink()
        await wait_for(lambda: len(up.items) == 1)
        assert library.status()["indexed"] == 1
    finally:
        await libraries.stop()


async def test_lost_events_caught_up_for_1000_files(tmp_path: Path) -> None:
    libraries, library, root = watched(tmp_path)
    up = libraries.gateway.index
    libraries.start()
    try:
        await wait_for(lambda: library.watcher == "inotify" and library.last_scan is not None)
        # The observer misses everything: stopped while the files are written.
        await asyncio.to_thread(library.stop_watching)
        for n in range(1000):
            (root / f"d{n % 10}").mkdir(exist_ok=True)
            (root / f"d{n % 10}/{n}.png").write_bytes(png(n))
        await asyncio.sleep(0.3)
        assert up.items == {}
        library.notice(EventsLostEvent(str(root)))  # what watchdog gives for IN_Q_OVERFLOW
        await wait_for(lambda: len(up.items) == 1000, timeout=120)
        assert sorted(item["key"] for item in up.items.values()) == sorted(
            sha(png(n)) for n in range(1000)
        )
        assert library.status()["indexed"] == 1000
    finally:
        await libraries.stop()


async def test_polling_watcher_follows_adds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(library_module, "POLL_INTERVAL_S", 0.2)
    state = gateway_state(tmp_path)
    root = tmp_path / "nas"
    root.mkdir()
    library = Library("nas", root, state.media.root / "libraries", watch="polling", settle_s=0.2)
    libraries = Libraries(state, {"nas": library})
    up = state.index
    libraries.start()
    try:
        await wait_for(lambda: library.watcher == "polling" and library.last_scan is not None)
        (root / "a.png").write_bytes(png(1))
        await wait_for(lambda: len(up.items) == 1)
        (root / "a.png").unlink()
        await wait_for(lambda: len(up.items) == 0)
    finally:
        await libraries.stop()


async def test_one_process_syncs_a_library_the_other_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(library_module, "OWNER_RETRY_S", 0.2)
    state = gateway_state(tmp_path)
    root = tmp_path / "lib"
    root.mkdir()
    (root / "a.png").write_bytes(png(1))
    os.utime(root / "a.png", (1_000_000, 1_000_000))
    # Two gateways (or workers) on one media folder: each its own Libraries, one index.
    pair = []
    for _ in range(2):
        library = Library("lib", root, state.media.root / "libraries", watch="off")
        pair.append((Libraries(state, {"lib": library}), library))
    owners: list[Library] = []
    for libraries, _ in pair:
        libraries.start()
    try:
        await wait_for(lambda: all(lib.status()["indexed"] == 1 for _, lib in pair))
        owners = [lib for _, lib in pair if lib.status()["synced_here"]]
        assert len(owners) == 1
        other = next(lib for _, lib in pair if lib is not owners[0])
        assert other.status()["last_scan"]["files"] == 1  # the owner's, through the state file
        # A scan asked of the process that does not sync it reaches the owner.
        (root / "b.png").write_bytes(png(2))
        os.utime(root / "b.png", (1_000_000, 1_000_000))
        other.rescan_requested.set()
        other.state.set_info("scan_requested", 1)
        await wait_for(lambda: other.status()["indexed"] == 2)
        assert len(state.index.items) == 2 and len(state.index.embedded) == 2
        # The owner stops: the other takes over.
        owner_libraries = next(libs for libs, lib in pair if lib is owners[0])
        await owner_libraries.stop()
        await wait_for(lambda: other.status()["synced_here"])
    finally:
        for libraries, library in pair:
            if library is not owners[0]:
                await libraries.stop()


async def test_a_file_event_does_not_rescan_the_library(tmp_path: Path) -> None:
    libraries, library, root = watched(tmp_path)
    up = libraries.gateway.index
    libraries.start()
    try:
        await wait_for(lambda: library.watcher == "inotify" and library.last_scan is not None)
        first = library.last_scan
        (root / "a.png").write_bytes(png(1))  # also its folder's "modified" event
        await wait_for(lambda: len(up.items) == 1)
        assert library.last_scan is first
    finally:
        await libraries.stop()
