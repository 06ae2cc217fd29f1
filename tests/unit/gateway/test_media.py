"""MediaStore: originals in packs (one per call, durable, erased in place), thumbnails
content-addressed and atomic, originals from before packs still found, strict library path
resolution."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import glimpse.gateway.media as media_module
from glimpse.gateway.media import (
    PACK_ENTRY,
    PACK_MAGIC,
    MediaStore,
    PackEntry,
    safe_relative_path,
    write_atomic,
    write_atomic_many,
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def packs(root: Path) -> list[Path]:
    return sorted((root / "packs").rglob("*.pack"))


def markers(root: Path) -> list[Path]:
    return sorted((root / "packs").rglob("*.pending"))


def read_pack(path: Path) -> list[tuple[str, bytes]]:
    """(sha256, bytes) of every entry, from the pack file alone."""
    blob, entries, at = path.read_bytes(), [], 0
    while at < len(blob):
        magic, version, length, digest = PACK_ENTRY.unpack_from(blob, at)
        assert (magic, version) == (PACK_MAGIC, 1)
        at += PACK_ENTRY.size
        entries.append((digest.hex(), blob[at : at + length]))
        at += length
    return entries


def test_originals_of_one_call_go_to_one_new_pack(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    store.setup()
    datas = [b"first image", b"", b"third" * 1000]
    items = [(sha(d), d, "image/webp", None) for d in datas]
    errors, locations = store.put_many(items)
    assert errors == [None, None, None]
    [pack] = packs(tmp_path)
    assert pack.parent.parent == tmp_path / "packs"  # packs/<yyyy-mm>/<name>.pack
    assert read_pack(pack) == [(sha(d), d) for d in datas]  # self-describing, in order
    # Born pending: the caller settles it once each entry is referenced or erased. The
    # marker is a second name of the pack, counted once.
    assert markers(tmp_path) == [pack.with_suffix(".pending")]
    assert store.marker_path(locations[0]["pack"]) == pack.with_suffix(".pending")
    assert markers(tmp_path)[0].stat().st_ino == pack.stat().st_ino
    assert store.total_bytes(max_age_s=0) == pack.stat().st_size
    for data, location in zip(datas, locations, strict=True):
        assert location is not None
        assert location["pack"] == f"{pack.parent.name}/{pack.name}"
        assert location["length"] == len(data)
        assert store.find_original(sha(data), "ignored.jpg", location) == data
    # The next call gets a pack of its own.
    assert store.put_original(sha(b"later"), b"later") is not None
    assert len(packs(tmp_path)) == 2


def test_a_pack_is_synced_with_its_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    files: list[int] = []
    real_dir, real_file = media_module._fsync_dir, media_module.os.fsync

    def record_dir(folder: Path | str) -> None:
        synced.append(str(folder))
        real_dir(folder)

    def record_file(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):  # not a folder's (_fsync_dir's own)
            files.append(fd)
        real_file(fd)

    monkeypatch.setattr(media_module, "_fsync_dir", record_dir)
    monkeypatch.setattr(media_module.os, "fsync", record_file)
    store = MediaStore(tmp_path)
    store.setup()
    location = store.write_pack([(sha(b"a"), b"a"), (sha(b"b"), b"b")])[0]
    month = str(tmp_path / "packs" / location["pack"].split("/")[0])
    # One fsync of the pack for all its originals; the new month folder's entry in packs/ and
    # the pack's entry in the month folder.
    assert len(files) == 1 and sorted(synced) == sorted([str(tmp_path / "packs"), month])
    synced.clear()
    files.clear()
    store.write_pack([(sha(b"c"), b"c")])
    assert len(files) == 1 and synced == [month]  # the folder is known durable now
    synced.clear()
    files.clear()
    MediaStore(tmp_path, fsync=False).write_pack([(sha(b"d"), b"d")])
    assert files == [] and synced == []


@pytest.mark.parametrize("failing", ["writev", "fsync"])
def test_a_failed_pack_write_fails_every_original_and_keeps_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    def fail(*args: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    store = MediaStore(tmp_path)
    store.setup()
    monkeypatch.setattr(media_module.os, failing, fail)
    items = [(sha(d), d, "image/webp", None) for d in (b"x", b"y")]
    errors, _ = store.put_many(items)
    assert all(isinstance(e, OSError) and e.errno == errno.ENOSPC for e in errors)
    assert packs(tmp_path) == [] and markers(tmp_path) == []


def test_where_links_are_refused_the_marker_is_an_empty_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(media_module.os, "link", refuse)
    store = MediaStore(tmp_path)
    location = store.write_pack([(sha(b"a"), b"a")])[0]
    [marker] = markers(tmp_path)
    assert marker.stat().st_size == 0 and store.pending_packs(-1) == [location["pack"]]
    assert store.read_packed(sha(b"a"), location) == b"a"


def test_short_writes_are_continued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = media_module.os.writev

    def at_most_seven(fd: int, buffers: list[memoryview]) -> int:
        chunk = b"".join(bytes(b) for b in buffers)[:7]
        return real(fd, [chunk])

    monkeypatch.setattr(media_module.os, "writev", at_most_seven)
    store = MediaStore(tmp_path)
    datas = [b"0123456789" * 3, b"abc", b"", b"xyz" * 11]
    locations = store.write_pack([(sha(d), d) for d in datas])
    read = [store.read_packed(sha(d), at) for d, at in zip(datas, locations, strict=True)]
    assert read == datas


def test_writers_in_threads_never_share_a_pack(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    store.setup()
    datas = [f"image {i}".encode() * 100 for i in range(64)]
    locations: dict[bytes, dict[str, Any]] = {}
    lock = threading.Lock()

    def write(data: bytes) -> None:
        location = store.write_pack([(sha(data), data)])[0]
        with lock:
            locations[data] = location

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, datas))
    assert len(packs(tmp_path)) == 64
    for data, location in locations.items():
        assert store.read_packed(sha(data), location) == data


def test_a_location_is_checked_before_it_is_used(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    data, other = b"the image", b"other image"
    location = store.put_original(sha(data), data)
    assert location is not None
    store.put_original(sha(other), other)
    pack, offset, length = location["pack"], location["offset"], location["length"]
    (tmp_path / "outside.pack").write_bytes(b"x" * 100)
    for bad in (
        None,
        "packs/x",
        {"pack": "../outside.pack", "offset": PACK_ENTRY.size, "length": 1},
        {"pack": f"{pack.split('/')[0]}/../../outside.pack", "offset": 48, "length": 1},
        {"pack": "/etc/passwd", "offset": 48, "length": 1},
        {"pack": pack, "offset": offset + 1, "length": length},  # not an entry's start
        {"pack": pack, "offset": offset, "length": length - 1},  # not its length
        {"pack": pack, "offset": 0, "length": length},
        {"pack": pack, "offset": -offset, "length": length},
        {"pack": pack, "offset": str(offset), "length": length},
        {"pack": pack, "offset": offset, "length": 10**9},  # past the end
        {"pack": pack[:-6] + "0" * 6, "offset": offset, "length": length},  # no such pack
    ):
        assert store.read_packed(sha(data), bad) is None, bad
    assert store.read_packed(sha(other), location) is None  # another image's location
    assert store.read_packed("../../etc", location) is None
    assert store.read_packed(sha(data), location) == data


def test_original_files_from_before_packs_are_found_and_removed(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    data = b"stored before packs"
    digest = sha(data)
    path = tmp_path / "originals" / digest[:2] / digest[2:4] / digest
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    assert store.find_original(digest, "ignored.jpg") == path
    assert store.find_original(digest, "ignored.jpg", {"pack": "junk"}) == path
    store.remove(digest)
    assert not path.exists() and store.find_original(digest, "ignored.jpg") is None


def test_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    digest = sha(b"x")
    store.put_original(digest, b"x")
    store.put_thumbnail(digest, "image/webp", b"thumb")
    names = [n for _, _, files in os.walk(tmp_path) for n in files]
    [pack] = packs(tmp_path)
    assert sorted(names) == sorted([pack.name, f"{pack.stem}.pending", f"{digest}.webp"])


def test_write_atomic_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    write_atomic(target, b"old")
    write_atomic(target, b"new", fsync=False)
    assert target.read_bytes() == b"new"
    assert os.listdir(target.parent) == ["b"]


def test_remove_forgets_original_and_thumbnails(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    digest = sha(b"y")
    location = store.put_original(digest, b"y")
    store.put_thumbnail(digest, "image/jpeg", b"t")
    store.remove(digest, location)
    assert store.find_original(digest, "y.jpg", location) is None
    assert store.find_thumbnail(digest, "image/jpeg") is None


@pytest.mark.parametrize("holes", [True, False])
def test_remove_erases_a_packed_original_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, holes: bool
) -> None:
    if not holes:  # a file system that cannot punch holes: the range is zeroed instead
        monkeypatch.setattr(media_module._FALLOCATE, "call", None)
    store = MediaStore(tmp_path)
    gone, kept = os.urandom(3 * 4096), os.urandom(5000)
    first, second = store.write_pack([(sha(gone), gone), (sha(kept), kept)])
    [pack] = packs(tmp_path)
    size, blocks = pack.stat().st_size, pack.stat().st_blocks
    store.remove(sha(gone), first)
    assert store.read_packed(sha(gone), first) is None
    assert store.read_packed(sha(kept), second) == kept
    blob = pack.read_bytes()
    assert len(blob) == size and gone not in blob
    # The header keeps the length (the pack can still be walked), its sha256 cleared.
    header = PACK_ENTRY.pack(PACK_MAGIC, 1, len(gone), bytes(32))
    assert blob[: PACK_ENTRY.size + len(gone)] == header + bytes(len(gone))
    assert store.pack_entries(first["pack"]) == (
        [
            PackEntry(None, PACK_ENTRY.size, len(gone)),
            PackEntry(sha(kept), second["offset"], second["length"]),
        ],
        True,
    )
    if holes and media_module._FALLOCATE.call is not None:
        assert pack.stat().st_blocks < blocks  # the erased original's whole blocks freed
    store.remove(sha(kept), first)  # a location that is not this image's: nothing erased
    assert store.read_packed(sha(kept), second) == kept


def test_a_pack_is_walked_entry_by_entry_up_to_what_does_not_parse(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    datas = [b"one", b"", b"three" * 100]
    locations = store.write_pack([(sha(d), d) for d in datas])
    name = locations[0]["pack"]
    whole = [PackEntry(sha(d), loc["offset"], loc["length"])
             for d, loc in zip(datas, locations, strict=True)]
    assert store.pack_entries(name) == (whole, True)
    assert [e.location(name) for e in whole] == locations
    [pack] = packs(tmp_path)
    blob = pack.read_bytes()
    pack.write_bytes(blob[:-1])  # the last entry cut short
    assert store.pack_entries(name) == (whole[:2], False)
    pack.write_bytes(blob[: locations[2]["offset"] - 1])  # its header cut short
    assert store.pack_entries(name) == (whole[:2], False)
    second = locations[1]["offset"] - PACK_ENTRY.size
    pack.write_bytes(blob[:second] + b"X" * 100)  # a header that is not one
    assert store.pack_entries(name) == (whole[:1], False)
    pack.unlink()
    assert store.pack_entries(name) == ([], True)
    with pytest.raises(ValueError):
        store.pack_entries("../x.pack")


def test_pending_packs_are_listed_by_age_and_settled(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    assert store.pending_packs(0) == []  # no packs folder yet
    old, older, new = (store.write_pack([(sha(d), d)])[0]["pack"] for d in (b"o", b"p", b"n"))
    for name, age in ((old, 120), (older, 600)):
        os.utime(store.marker_path(name), (time.time() - age,) * 2)
    stray = tmp_path / "packs" / new.split("/")[0] / "not-a-pack-name.pending"
    stray.touch()
    os.utime(stray, (1.0, 1.0))
    assert store.pending_packs(60) == [older, old]  # oldest first; the new one is too young
    assert store.pending_packs(-1) == [older, old, new]
    store.settle_pack(old, keep=True)
    assert (tmp_path / "packs" / old).exists() and store.pending_packs(60) == [older]
    store.settle_pack(older, keep=False)
    assert not (tmp_path / "packs" / older).exists() and store.pending_packs(-1) == [new]
    (tmp_path / "packs" / new).unlink()  # a crash between removing a pack and its marker
    store.settle_pack(new, keep=False)
    assert store.pending_packs(-1) == [] and packs(tmp_path) == [tmp_path / "packs" / old]
    with pytest.raises(ValueError):
        store.settle_pack("../../etc/passwd", keep=False)


def test_not_a_digest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        MediaStore(tmp_path).original_path("../../etc/passwd")


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


@pytest.fixture
def library(tmp_path: Path) -> Path:
    lib = tmp_path / "library"
    (lib / "trip").mkdir(parents=True)
    (lib / "trip" / "a.jpg").write_bytes(b"inside")
    (tmp_path / "secret.txt").write_bytes(b"outside")
    (lib / "escape.jpg").symlink_to(tmp_path / "secret.txt")
    (lib / "inner-link.jpg").symlink_to(lib / "trip" / "a.jpg")
    (lib / "dirlink").symlink_to(tmp_path)
    return lib


def test_library_resolves_only_inside(library: Path, tmp_path: Path) -> None:
    store = MediaStore(tmp_path / "media", store_originals=False, library_dir=library)
    assert store.library_path("trip/a.jpg") == (library / "trip" / "a.jpg").resolve()
    assert store.library_path("inner-link.jpg") == (library / "trip" / "a.jpg").resolve()
    for bad in (
        "../secret.txt",
        "trip/../../secret.txt",
        str(tmp_path / "secret.txt"),
        "escape.jpg",
        "dirlink/secret.txt",
        "trip",
        "missing.jpg",
        "%2e%2e/secret.txt",
    ):
        assert store.library_path(bad) is None, bad


def test_without_stored_originals_the_library_serves(library: Path, tmp_path: Path) -> None:
    store = MediaStore(tmp_path / "media", store_originals=False, library_dir=library)
    digest = sha(b"inside")
    assert store.put_original(digest, b"inside") is None
    assert not (tmp_path / "media" / "packs").exists()
    assert store.find_original(digest, "trip/a.jpg") == (library / "trip" / "a.jpg").resolve()


def test_total_bytes_is_cached_until_invalidated(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    store.put_original(sha(b"abc"), b"abc")
    assert store.total_bytes() == PACK_ENTRY.size + 3
    store.put_original(sha(b"defg"), b"defg")
    assert store.total_bytes() == PACK_ENTRY.size + 3
    store.invalidate_bytes()
    assert store.total_bytes() == 2 * PACK_ENTRY.size + 7


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
    with ThreadPoolExecutor(4) as pool:
        errors = write_atomic_many(files, fsync=fsync, pool=pool)
    assert [e is None for e in errors] == [True, False, True, True]
    assert isinstance(errors[1], OSError)
    for (path, data), error in zip(files, errors, strict=True):
        if error is None:
            assert path.read_bytes() == data
    assert sorted(os.listdir(tmp_path / "a")) == ["1", "3"]  # no temporary files left


def test_put_many_is_put_original_plus_put_thumbnail(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    items = [(sha(d), d, "image/webp", b"thumb " + d) for d in (b"x", b"y")]
    items.append((sha(b"z"), b"z", "image/jpeg", b"jpeg thumb"))
    errors, locations = store.put_many(items)
    assert errors == [None, None, None]
    for (digest, data, thumb_type, thumb), location in zip(items, locations, strict=True):
        assert store.read_packed(digest, location) == data
        found = store.find_thumbnail(digest, thumb_type)
        assert found is not None and found.read_bytes() == thumb
    names = [n for _, _, files in os.walk(tmp_path) for n in files]
    # A pack, its marker, 3 thumbnails.
    assert len(names) == 5 and not any(n.endswith(".tmp") for n in names)


def test_put_many_without_originals_keeps_thumbnails_only(tmp_path: Path) -> None:
    store = MediaStore(tmp_path / "media", store_originals=False, library_dir=tmp_path)
    assert store.put_many([(sha(b"q"), b"q", "image/webp", b"t")]) == ([None], [None])
    assert not (tmp_path / "media" / "packs").exists()
    assert store.find_thumbnail(sha(b"q"), "image/webp") is not None


def test_put_many_without_a_thumbnail_keeps_the_original_only(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    errors, [location] = store.put_many([(sha(b"o"), b"o", "image/webp", None)])
    assert errors == [None]
    assert store.find_original(sha(b"o"), "o.jpg", location) == b"o"
    assert store.find_thumbnail(sha(b"o"), "image/webp") is None
    assert not (tmp_path / "thumbnails").exists()
