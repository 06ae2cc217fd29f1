"""MediaStore: content-addressed layout, atomic writes, strict library path resolution."""

from __future__ import annotations

import errno
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import gateway.media as media_module
from gateway.media import (
    MediaStore,
    safe_relative_path,
    write_atomic,
    write_atomic_many,
    write_new_many,
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_original_is_content_addressed_and_sharded(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    store.setup()
    data = b"some image bytes"
    digest = sha(data)
    store.put_original(digest, data)
    path = tmp_path / "originals" / digest[:2] / digest[2:4] / digest
    assert path.read_bytes() == data
    assert store.find_original(digest, "ignored.jpg") == path


def test_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    digest = sha(b"x")
    store.put_original(digest, b"x")
    store.put_thumbnail(digest, "image/webp", b"thumb")
    names = [n for _, _, files in os.walk(tmp_path) for n in files]
    assert sorted(names) == sorted([digest, f"{digest}.webp"])


def test_write_atomic_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    write_atomic(target, b"old")
    write_atomic(target, b"new", fsync=False)
    assert target.read_bytes() == b"new"
    assert os.listdir(target.parent) == ["b"]


def test_remove_forgets_original_and_thumbnails(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    digest = sha(b"y")
    store.put_original(digest, b"y")
    store.put_thumbnail(digest, "image/jpeg", b"t")
    store.remove(digest)
    assert store.find_original(digest, "y.jpg") is None
    assert store.find_thumbnail(digest, "image/jpeg") is None


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
    store.put_original(digest, b"inside")
    assert not store.original_path(digest).exists()
    assert store.find_original(digest, "trip/a.jpg") == (library / "trip" / "a.jpg").resolve()


def test_total_bytes_is_cached_until_invalidated(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    store.put_original(sha(b"abc"), b"abc")
    assert store.total_bytes() == 3
    store.put_original(sha(b"defg"), b"defg")
    assert store.total_bytes() == 3
    store.invalidate_bytes()
    assert store.total_bytes() == 7


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
    assert store.put_many(items) == [None, None, None]
    for digest, data, thumb_type, thumb in items:
        assert store.original_path(digest).read_bytes() == data
        found = store.find_thumbnail(digest, thumb_type)
        assert found is not None and found.read_bytes() == thumb
    names = [n for _, _, files in os.walk(tmp_path) for n in files]
    assert len(names) == 6 and not any(n.endswith(".tmp") for n in names)


def test_put_many_without_originals_keeps_thumbnails_only(tmp_path: Path) -> None:
    store = MediaStore(tmp_path / "media", store_originals=False, library_dir=tmp_path)
    assert store.put_many([(sha(b"q"), b"q", "image/webp", b"t")]) == [None]
    assert not store.original_path(sha(b"q")).exists()
    assert store.find_thumbnail(sha(b"q"), "image/webp") is not None


def test_put_many_without_a_thumbnail_keeps_the_original_only(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    errors = store.put_many([(sha(b"o"), b"o", "image/webp", None)])
    assert errors == [None]
    assert store.find_original(sha(b"o"), "o.jpg") is not None
    assert store.find_thumbnail(sha(b"o"), "image/webp") is None
    assert not (tmp_path / "thumbnails").exists()


def test_write_new_many_creates_at_the_final_name_and_syncs_new_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real = media_module._fsync_dir

    def record(folder: Path | str) -> None:
        synced.append(str(folder))
        real(folder)

    monkeypatch.setattr(media_module, "_fsync_dir", record)
    (tmp_path / "old").mkdir()
    files = [
        (str(tmp_path / "new" / "deeper" / "1"), b"one"),
        (str(tmp_path / "new" / "deeper" / "2"), b"two"),
        (str(tmp_path / "old" / "3"), b"three"),
    ]
    assert write_new_many(files) == [None, None, None]
    for path, data in files:
        assert Path(path).read_bytes() == data
    assert sorted(os.listdir(tmp_path / "new" / "deeper")) == ["1", "2"]
    # Each folder that gained an entry, once: the files' two, and the parents of new folders.
    folders = [tmp_path / "new" / "deeper", tmp_path / "new", tmp_path, tmp_path / "old"]
    assert sorted(synced) == sorted(map(str, folders))
    synced.clear()
    assert write_new_many([(str(tmp_path / "old" / "4"), b"four")], fsync=False) == [None]
    assert synced == []


def test_write_new_many_keeps_the_same_bytes_and_replaces_a_torn_file(tmp_path: Path) -> None:
    same, torn, short = tmp_path / "same", tmp_path / "torn", tmp_path / "short"
    same.write_bytes(b"content")
    torn.write_bytes(b"cont\0\0\0")  # a crash can leave the size right and the bytes not
    short.write_bytes(b"con")
    inode = same.stat().st_ino
    files = [(str(same), b"content"), (str(torn), b"content"), (str(short), b"content")]
    assert write_new_many(files) == [None, None, None]
    assert [Path(p).read_bytes() for p, _ in files] == [b"content"] * 3
    assert same.stat().st_ino == inode  # kept, not rewritten
    assert sorted(os.listdir(tmp_path)) == ["same", "short", "torn"]  # no temporary files


def test_a_failed_write_leaves_no_file_under_the_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(media_module.os, "fsync", fail)
    errors = write_new_many([(str(tmp_path / "a" / "1"), b"one")])
    assert isinstance(errors[0], OSError) and errors[0].errno == errno.EIO
    assert os.listdir(tmp_path / "a") == []


def test_a_failed_write_leaves_another_writers_whole_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Writer A creates the name and is still writing when writer B (same image) finds it
    # half-written and replaces it with a whole copy, which B may acknowledge. A's write then
    # fails: A must remove only its own file, never B's copy now under the name.
    path = tmp_path / "x"
    real_fsync = media_module.os.fsync

    def replaced_then_fails(fd: int) -> None:
        if os.fstat(fd).st_ino == path.stat().st_ino:  # A's own file, about to be synced
            media_module.write_atomic(path, b"whole")  # B's replacement meanwhile
            raise OSError(errno.EIO, "I/O error")
        real_fsync(fd)

    monkeypatch.setattr(media_module.os, "fsync", replaced_then_fails)
    errors = write_new_many([(str(path), b"whole")])
    assert isinstance(errors[0], OSError) and errors[0].errno == errno.EIO
    assert path.read_bytes() == b"whole"
