"""MediaStore: a durable file per original and thumbnail, named by sha256; originals packed by
older versions still read; per-key locks that hold across processes (library files are
test_library's)."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import multiprocessing
import os
import struct
import time
from pathlib import Path
from typing import Any

import pytest

import glimpse.gateway.media as media_module
from glimpse.gateway.media import (
    KeyLocks,
    MediaStore,
    safe_relative_path,
    write_atomic,
    write_atomic_many,
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_each_original_is_a_file_named_by_its_sha256(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    store.setup()
    datas = [b"first image", b"", b"third" * 1000]
    errors, created = store.put_many([(sha(d), d) for d in datas])
    assert errors == [None] * 3 and created == [True] * 3
    for data in datas:
        digest = sha(data)
        path = tmp_path / "originals" / digest
        assert path.read_bytes() == data
        assert store.find_original(digest, "ignored.jpg") == path
    assert store.total_bytes(max_age_s=0) == sum(len(d) for d in datas)
    assert not any(".tmp" in name for name in files_under(tmp_path))


def test_the_same_bytes_again_are_left_as_they_are(tmp_path: Path) -> None:
    # A copy already there may be named by an item (or an add that did not answer): the
    # caller must not remove it on a failure of its own, so put_many says it did not make it.
    store = MediaStore(tmp_path)
    assert store.put_many([(sha(b"x"), b"x")]) == ([None], [True])
    errors, created = store.put_many([(sha(b"x"), b"x")] * 2)
    assert errors == [None, None] and created == [False, False]
    assert store.original_path(sha(b"x")).read_bytes() == b"x"


def test_files_are_synced_before_and_after_their_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_sync, real_replace = media_module._sync_file_system, media_module.os.replace

    def sync(fd: int) -> None:
        events.append("sync")
        real_sync(fd)

    def replace(source: Any, target: Any) -> None:
        events.append(f"rename {Path(target).name[:4]}")
        real_replace(source, target)

    store = MediaStore(tmp_path)
    store.setup()
    monkeypatch.setattr(media_module, "_sync_file_system", sync)
    monkeypatch.setattr(media_module.os, "replace", replace)
    datas = (b"a", b"b", b"c")
    store.put_many([(sha(d), d) for d in datas])
    # One sync for the request's files, then their renames, then one sync for those.
    assert events == ["sync", *(f"rename {sha(d)[:4]}" for d in datas), "sync"]
    events.clear()
    digest = sha(b"t")
    store.put_thumbnail(digest, "image/webp", b"thumb")  # in new folders, synced with it
    assert events == ["sync", f"rename {digest[:4]}", "sync"]
    assert store.find_thumbnail(digest, "image/webp") is not None
    events.clear()
    MediaStore(tmp_path, fsync=False).put_many([(sha(b"d"), b"d")])
    assert events == [f"rename {sha(b'd')[:4]}"]


@pytest.mark.parametrize("failing", ["write", "sync"])
def test_a_failed_write_fails_its_original_and_keeps_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    def fail(*args: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    store = MediaStore(tmp_path)
    store.setup()
    if failing == "write":
        monkeypatch.setattr(media_module.os, "write", fail)
    else:
        monkeypatch.setattr(media_module, "_sync_file_system", fail)
    errors, created = store.put_many([(sha(d), d) for d in (b"x", b"y")])
    assert all(isinstance(e, OSError) and e.errno == errno.ENOSPC for e in errors)
    assert created == [False, False]
    assert files_under(tmp_path) == ["keys.lock"]  # made by setup


def test_remove_forgets_every_file_of_a_key(tmp_path: Path) -> None:
    store = MediaStore(tmp_path / "media")
    digest = sha(b"y")
    store.put_many([(digest, b"y")])
    store.put_thumbnail(digest, "image/webp", b"thumb")
    store.put_thumbnail(digest, "image/jpeg", b"jpeg thumb")
    store.remove(digest)
    assert files_under(tmp_path / "media") == []
    assert store.find_original(digest, "y.jpg") is None
    assert store.find_thumbnail(digest, "image/webp") is None


def _pack(entries: list[tuple[bytes, bytes]]) -> bytes:
    """A pack as an older version wrote it: each entry a header (magic, version, length,
    raw sha256), then its bytes."""
    header = struct.Struct("<4sIQ32s")
    return b"".join(header.pack(b"GLPK", 1, len(d), digest) + d for digest, d in entries)


def test_originals_from_before_packs_are_still_found_and_removed(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    digest = sha(b"before packs")
    path = tmp_path / "originals" / digest[:2] / digest[2:4] / digest
    path.parent.mkdir(parents=True)
    path.write_bytes(b"before packs")
    assert store.find_original(digest, "x.jpg") == path
    store.remove(digest)
    assert not path.exists() and store.find_original(digest, "x.jpg") is None


def test_originals_an_older_version_packed_are_still_read(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    data, other = b"the image", b"other image"
    pack = tmp_path / "packs" / "2025-01" / ("ab" * 16 + ".pack")
    pack.parent.mkdir(parents=True)
    pack.write_bytes(_pack([(bytes.fromhex(sha(data)), data), (bytes(32), b"erased")]))
    location = {"pack": "2025-01/" + pack.name, "offset": 48, "length": len(data)}
    assert store.find_original(sha(data), "ignored.jpg", location) == data
    erased = {**location, "offset": 48 + len(data) + 48, "length": 6}
    (tmp_path / "outside.pack").write_bytes(b"x" * 100)
    for bad in (
        None,
        "packs/x",
        {"pack": "../outside.pack", "offset": 48, "length": 1},
        {"pack": "/etc/passwd", "offset": 48, "length": 1},
        {**location, "offset": 49},  # not an entry's start
        {**location, "length": len(data) - 1},  # not its length
        {**location, "offset": 0},
        {**location, "offset": "48"},
        {**location, "length": 10**9},  # past the end
        {**location, "pack": "2025-01/" + "0" * 32 + ".pack"},  # no such pack
        erased,
    ):
        assert store.find_original(sha(data), "x.jpg", bad) is None, bad
    assert store.find_original(sha(other), "x.jpg", location) is None  # another image's


def test_write_atomic_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    write_atomic(target, b"old")
    write_atomic(target, b"new", fsync=False)
    assert target.read_bytes() == b"new"
    assert os.listdir(target.parent) == ["b"]


@pytest.mark.parametrize("fsync", [True, False])
def test_write_atomic_many_writes_all_and_reports_each_failure(
    tmp_path: Path, fsync: bool
) -> None:
    (tmp_path / "blocked").write_bytes(b"a file where a folder should be")
    files = [
        (tmp_path / "a" / "1", b"one"),
        (tmp_path / "blocked" / "2", b"two"),
        (tmp_path / "a" / "3", b"three"),
        (tmp_path / "b" / "4", b""),
    ]
    errors = write_atomic_many(files, fsync=fsync)
    assert [e is None for e in errors] == [True, False, True, True]
    assert isinstance(errors[1], OSError)
    for (path, data), error in zip(files, errors, strict=True):
        if error is None:
            assert path.read_bytes() == data
    assert sorted(os.listdir(tmp_path / "a")) == ["1", "3"]  # no temporary files left


def test_not_a_digest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        MediaStore(tmp_path).original_path("../../etc/passwd")


def test_total_bytes_is_cached_until_invalidated(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    store.put_many([(sha(b"abc"), b"abc")])
    assert store.total_bytes() == 3
    store.put_many([(sha(b"defg"), b"defg")])
    assert store.total_bytes() == 3
    store.invalidate_bytes()
    assert store.total_bytes() == 7


# Locks -----------------------------------------------------------------------------------------


def _hold_in_another_process(path: str, key: str, held: Any, release: Any) -> None:
    async def hold() -> None:
        async with KeyLocks(Path(path)).hold([key]):
            held.set()
            release.wait(30)

    asyncio.run(hold())


async def test_a_key_held_in_another_process_waits_here(tmp_path: Path) -> None:
    locks = KeyLocks(tmp_path / "keys.lock")
    key, other = sha(b"k"), sha(b"other")
    context = multiprocessing.get_context("spawn")
    held, release = context.Event(), context.Event()
    holder = context.Process(
        target=_hold_in_another_process, args=(str(locks.path), key, held, release)
    )
    holder.start()
    try:
        assert await asyncio.to_thread(held.wait, 60)
        async with locks.hold([other]):
            pass  # another key is free
        waiting = asyncio.ensure_future(_take(locks, [other, key]))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # the held key blocks it
        release.set()
        await asyncio.wait_for(waiting, 10)
    finally:
        release.set()
        holder.join(30)
    assert holder.exitcode == 0


async def _take(locks: KeyLocks, keys: list[str]) -> float:
    async with locks.hold(keys):
        return time.monotonic()


async def test_a_process_that_dies_holding_a_key_releases_it(tmp_path: Path) -> None:
    locks = KeyLocks(tmp_path / "keys.lock")
    context = multiprocessing.get_context("spawn")
    held, release = context.Event(), context.Event()
    holder = context.Process(
        target=_hold_in_another_process, args=(str(locks.path), "not a sha256", held, release)
    )
    holder.start()
    assert await asyncio.to_thread(held.wait, 60)
    holder.kill()
    holder.join(30)
    await asyncio.wait_for(_take(locks, ["not a sha256"]), 10)


async def test_two_holders_in_one_process_take_turns(tmp_path: Path) -> None:
    locks = KeyLocks(tmp_path / "keys.lock")
    inside = 0
    most = 0

    async def worker(keys: list[str]) -> None:
        nonlocal inside, most
        async with locks.hold(keys):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.02)
            inside -= 1

    a, b, c = sha(b"a"), sha(b"b"), sha(b"c")
    # Overlapping sets in different orders: one global order, so no deadlock.
    await asyncio.wait_for(asyncio.gather(worker([a, b]), worker([b, a]), worker([c, a])), 10)
    assert most == 1


# Client-given names and the library --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "clean"),
    [
        ("a.jpg", "a.jpg"),
        ("holiday/2019/a.jpg", "holiday/2019/a.jpg"),
        ("./x//y/./z.png", "x/y/z.png"),
        ("win\\dir\\b.jpg", "win/dir/b.jpg"),
        ("../a.jpg", None),
        ("a/../../b.jpg", None),
        ("..\\..\\b.jpg", None),
        ("/etc/passwd", None),
        ("C:\\Windows\\x.jpg", None),
        ("", None),
        (".", None),
        ("a\x00b.jpg", None),
        ("new\nline.jpg", None),
        ("tab\there.jpg", None),
        ("del\x7f.jpg", None),
        ("a//b/./c", "a/b/c"),
        ("..a/b..", "..a/b.."),
        ("x/../", None),
        ("d:relative.jpg", None),
        ("dir/", "dir"),
        ("/", None),
        ("\\\\server\\share\\x.jpg", None),
        ("ünï cödé/ß.jpg", "ünï cödé/ß.jpg"),
    ],
)
def test_safe_relative_path(name: str, clean: str | None) -> None:
    assert safe_relative_path(name) == clean
