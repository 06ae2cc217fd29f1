"""Libraries (GATEWAY_LIBRARIES) with their upstreams faked: files indexed in place through the
ingest, one item per bytes with every path known, moves keep the id, deletes release the item,
failures recorded once, rescans stat only, a symlink leaving the root refused, a folder that
cannot be read reported while the others work."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from PIL import Image
from watchdog.events import FileMovedEvent

import glimpse.gateway.library as library_module
from glimpse.contracts.errors import ErrorType, GlimpseError
from glimpse.gateway.clients import EmbeddedImages
from glimpse.gateway.library import (
    Libraries,
    Library,
    filesystem_type,
    parse_libraries,
    watcher_kind,
)
from glimpse.gateway.media import MediaStore
from glimpse.gateway.state import LruCache
from tests.unit.gateway.test_ingest import encoder_answer


def png(n: int, size: tuple[int, int] = (24, 16)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (n % 256, n // 256 % 256, 7)).save(out, format="PNG")
    return out.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FakeUpstreams:
    """The encoder and the index, as ingest and the library call them: keys to ids."""

    def __init__(self) -> None:
        self.items: dict[int, dict[str, Any]] = {}
        self.embedded: list[str] = []
        self.deleted: list[int] = []
        self.limits = SimpleNamespace(max_pixels=10**6, max_bytes=200_000)
        self._next = 1

    async def key_ids(self, keys: list[str]) -> dict[str, int]:
        ids = {item["key"]: i for i, item in self.items.items()}
        return {k: ids[k] for k in keys if k in ids}

    async def embed_images_wire(self, files: list[tuple[str, bytes]],
                                model: str | None = None) -> EmbeddedImages:
        self.embedded += [path for path, _ in files]
        return encoder_answer(files, self.limits.max_pixels)

    async def add(self, items: list[dict[str, Any]], space: str | None = None
                  ) -> list[dict[str, Any]]:
        out = []
        for item in items:
            self.items[self._next] = item
            out.append({"status": "added", "id": self._next})
            self._next += 1
        return out

    async def delete(self, item_id: int) -> None:
        self.deleted.append(item_id)
        self.items.pop(item_id, None)

    async def item(self, item_id: int) -> dict[str, Any]:
        if item_id not in self.items:
            raise GlimpseError(ErrorType.not_found, f"Item {item_id} does not exist.")
        return {"id": item_id, **self.items[item_id]}

    async def update(self, item_id: int, *, path: str) -> dict[str, Any]:
        await self.item(item_id)
        self.items[item_id]["path"] = path
        return {"id": item_id, **self.items[item_id]}

    def paths(self) -> list[str]:
        return sorted(item["path"] for item in self.items.values())


def gateway_state(tmp_path: Path, upstreams: FakeUpstreams | None = None) -> Any:
    media = MediaStore(tmp_path / "media", fsync=False)
    media.setup()
    upstreams = upstreams or FakeUpstreams()
    return SimpleNamespace(
        media=media, encoder=upstreams, index=upstreams,
        records=LruCache(100), decode_limiter=anyio.CapacityLimiter(2),
        settings=SimpleNamespace(max_files_per_request=64),
    )


def old(path: Path, data: bytes) -> Path:
    """Write a file whose mtime is a minute ago: settled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    past = path.stat().st_mtime - 60
    os.utime(path, (past, past))
    return path


def make(state: Any, **roots: Path) -> Libraries:
    libraries = Libraries(
        state,
        {name: Library(name, root, state.media.root / "libraries", watch="off")
         for name, root in roots.items()},
    )
    state.libraries = libraries
    state.media.library_lookup = libraries.original
    for library in libraries.libraries.values():
        library.check_root()
    return libraries


def test_parse_libraries() -> None:
    assert parse_libraries("photos=/mnt/photos, nas=/mnt/nas") == {
        "photos": Path("/mnt/photos"), "nas": Path("/mnt/nas")
    }
    assert parse_libraries("") == {}
    for bad in ("photos", "a/b=/x", "p=relative", "p=/a,p=/b", ".h=/x"):
        with pytest.raises(ValueError, match="GATEWAY_LIBRARIES"):
            parse_libraries(bad)


def test_watcher_kind_from_mounts(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/sda1 / ext4 rw 0 0\nserver:/x /mnt/nas nfs4 rw 0 0\n")
    assert filesystem_type(Path("/mnt/nas/a"), str(mounts)) == "nfs4"
    assert filesystem_type(Path("/mnt/nasty"), str(mounts)) == "ext4"
    assert watcher_kind("polling", Path("/")) == "polling"
    assert watcher_kind("auto", Path("/")) in ("inotify", "polling")


async def test_scan_indexes_in_place_one_item_per_bytes(tmp_path: Path) -> None:
    state = gateway_state(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    old(a / "x/one.png", png(1))
    old(a / "two.png", png(2))
    old(b / "copy.png", png(1))  # the same bytes in another library
    old(a / ".hidden.png", png(3))
    old(a / ".secret/in.png", png(4))
    old(a / "y/.thumbnails/t.png", png(5))
    old(a / "w.tmp", png(6))
    libraries = make(state, a=a, b=b)
    for library in libraries.libraries.values():
        await libraries.scan(library)
    up = state.index
    assert len(up.items) == 2
    assert sorted(up.embedded) == ["a/two.png", "a/x/one.png"]
    assert not list((state.media.root / "originals").iterdir())  # no copy
    assert libraries.paths(sha(png(1))) == ["a/x/one.png", "b/copy.png"]
    status = {s["name"]: s for s in libraries.status()}
    assert status["a"]["indexed"] == 2 and status["b"]["indexed"] == 1
    assert status["a"]["last_scan"]["files"] == 2
    # Served from the library, checked against the key.
    found = state.media.find_original(sha(png(1)), "b/copy.png")
    assert found == (b / "copy.png").resolve()


async def test_rescan_of_unchanged_library_reads_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = gateway_state(tmp_path)
    root = tmp_path / "lib"
    for n in range(20):
        old(root / f"{n}.png", png(n))
    libraries = make(state, lib=root)
    library = libraries.libraries["lib"]
    await libraries.scan(library)
    reads: list[str] = []
    real = library_module._read_file
    monkeypatch.setattr(library_module, "_read_file",
                        lambda lib, p, *a: reads.append(p) or real(lib, p, *a))
    summary = await libraries.scan(library)
    assert reads == [] and summary["changed"] == 0 and summary["files"] == 20


async def test_touched_changed_moved_deleted(tmp_path: Path) -> None:
    state = gateway_state(tmp_path)
    root = tmp_path / "lib"
    old(root / "t.png", png(1))
    old(root / "c.png", png(2))
    old(root / "m.png", png(3))
    old(root / "d.png", png(4))
    old(root / "dup1.png", png(5))
    old(root / "dup2.png", png(5))
    libraries = make(state, lib=root)
    library = libraries.libraries["lib"]
    await libraries.scan(library)
    up = state.index
    ids = {item["key"]: i for i, item in up.items.items()}
    up.embedded.clear()

    os.utime(root / "t.png", (1_000_000, 1_000_000))  # touched: same bytes
    old(root / "c.png", png(22))  # changed bytes
    (root / "sub").mkdir()
    os.rename(root / "m.png", root / "sub/moved.png")  # moved
    (root / "d.png").unlink()  # deleted
    (root / "dup1.png").unlink()  # deleted, its bytes still at dup2.png
    await libraries.scan(library)

    assert up.embedded == ["lib/c.png"]  # the touched and moved files are not encoded again
    assert set(up.deleted) == {ids[sha(png(2))], ids[sha(png(4))]}
    assert {item["key"]: i for i, item in up.items.items()}[sha(png(3))] == ids[sha(png(3))]
    assert libraries.paths(sha(png(3))) == ["lib/sub/moved.png"]
    assert libraries.paths(sha(png(5))) == ["lib/dup2.png"]
    # The index shows where the bytes are now (what a search answers).
    assert up.items[ids[sha(png(3))]]["path"] == "lib/sub/moved.png"
    assert up.items[ids[sha(png(5))]]["path"] == "lib/dup2.png"
    assert ids[sha(png(5))] in up.items
    assert library.state.get("t.png").mtime_ns == 1_000_000 * 10**9  # type: ignore[union-attr]


async def test_a_rename_moves_the_shown_path_not_a_copys(tmp_path: Path) -> None:
    state = gateway_state(tmp_path)
    root = tmp_path / "lib"
    old(root / "a.png", png(1))
    old(root / "b.png", png(2))
    old(root / "b2.png", png(2))
    libraries = make(state, lib=root)
    library = libraries.libraries["lib"]
    await libraries.scan(library)
    up = state.index
    ids = {item["key"]: i for i, item in up.items.items()}
    shown = up.items[ids[sha(png(2))]]["path"]
    copy = "b2.png" if shown == "lib/b.png" else "b.png"  # the one the item does not show
    up.embedded.clear()
    (root / "sub").mkdir()
    for name, new in (("a.png", "sub/a2.png"), (copy, "sub/copy.png")):
        os.rename(root / name, root / new)
        library.notice(FileMovedEvent(str(root / name), str(root / new)))

    failing = up.update
    up.update = _unavailable  # type: ignore[method-assign]
    with pytest.raises(GlimpseError):
        await libraries.settle(library)
    assert len(library.renamed) == 2  # kept for the next round
    up.update = failing  # type: ignore[method-assign]
    await libraries.settle(library)
    assert library.renamed == []
    assert up.items[ids[sha(png(1))]]["path"] == "lib/sub/a2.png"
    assert up.items[ids[sha(png(2))]]["path"] == shown
    assert up.embedded == [] and up.deleted == []


async def _unavailable(item_id: int, *, path: str) -> dict[str, Any]:
    raise GlimpseError(ErrorType.upstream_unavailable, "The index service is not ready.")


async def test_failures_recorded_once_until_changed(tmp_path: Path) -> None:
    state = gateway_state(tmp_path)
    root = tmp_path / "lib"
    old(root / "notes.txt", b"not an image")
    old(root / "big.png", png(1, (400, 400)) + b"\0" * 300_000)
    old(root / "bomb.png", png(2, (2000, 1000)))  # 2 MP, over the fake encoder's 1 MP
    old(root / "ok.png", png(3))
    libraries = make(state, lib=root)
    library = libraries.libraries["lib"]
    await libraries.scan(library)
    status = library.status()
    assert status["indexed"] == 1 and status["failed"] == 3
    reasons = {f["path"]: f["error"] for f in status["failures"]}
    assert "limit" in reasons["big.png"] and "notes.txt" in reasons["notes.txt"]
    assert "pixel" in reasons["bomb.png"].lower()
    summary = await libraries.scan(library)
    assert summary["changed"] == 0  # not retried
    old(root / "notes.txt", png(4))  # changed: tried again
    await libraries.scan(library)
    assert library.status()["failed"] == 2


async def test_symlink_leaving_the_root_is_refused(tmp_path: Path) -> None:
    state = gateway_state(tmp_path)
    root, outside = tmp_path / "lib", tmp_path / "outside"
    secret = old(outside / "secret.png", png(9))
    old(root / "in.png", png(1))
    (root / "out.png").symlink_to(secret)
    (root / "outdir").symlink_to(outside, target_is_directory=True)
    (root / "alias.png").symlink_to(root / "in.png")  # inside: taken
    libraries = make(state, lib=root)
    library = libraries.libraries["lib"]
    await libraries.scan(library)
    assert sorted(libraries.paths(sha(png(1)))) == ["lib/alias.png", "lib/in.png"]
    assert libraries.paths(sha(png(9))) == []
    assert library.resolve("out.png") is None and library.resolve("outdir/secret.png") is None
    assert library.resolve("../outside/secret.png") is None
    # A record forged to name the link is not served either.
    from glimpse.gateway.library import Row

    info = secret.stat()
    library.state.put([("out.png", Row(info.st_size, info.st_mtime_ns, sha(png(9)), 7,
                                       "indexed", None))])
    assert libraries.original(sha(png(9)), "lib/out.png") is None


async def test_changed_file_is_not_served_for_the_old_key(tmp_path: Path) -> None:
    state = gateway_state(tmp_path)
    root = tmp_path / "lib"
    old(root / "a.png", png(1))
    libraries = make(state, lib=root)
    await libraries.scan(libraries.libraries["lib"])
    assert libraries.original(sha(png(1)), "lib/a.png") is not None
    (root / "a.png").write_bytes(png(2))
    assert libraries.original(sha(png(1)), "lib/a.png") is None
    from glimpse.gateway.thumbnails import thumbnail_of

    assert await thumbnail_of(state, sha(png(1)), "lib/a.png", "image/webp") is None
    (root / "a.png").write_bytes(png(1))
    assert isinstance(await thumbnail_of(state, sha(png(1)), "lib/a.png", "image/webp"), bytes)


async def test_an_upload_named_like_a_library_file_never_serves_it(tmp_path: Path) -> None:
    # Issue 25 F7: an upload names its own path, which may be any library file's.
    from glimpse.gateway.ingest import ingest_files
    from glimpse.web.forms import FormPart

    state = gateway_state(tmp_path)
    root = tmp_path / "lib"
    private = old(root / "private.png", png(5))
    libraries = make(state, lib=root)
    await libraries.scan(libraries.libraries["lib"])
    [answer] = await ingest_files(state, [FormPart("files", "lib/private.png", None, png(6))])
    assert answer["status"] == "added"
    media = state.media
    assert media.find_original(sha(png(6)), "lib/private.png") == media.original_path(sha(png(6)))
    media.remove(sha(png(6)))  # its stored copy lost: nothing is served, not the library file
    assert media.find_original(sha(png(6)), "lib/private.png") is None
    assert media.find_original(sha(png(6)), "private.png") is None
    assert media.find_original(sha(png(5)), "lib/private.png") == private


async def test_unreadable_library_reported_others_work(tmp_path: Path) -> None:
    state = gateway_state(tmp_path)
    good = tmp_path / "good"
    old(good / "a.png", png(1))
    libraries = Libraries(state, {
        "gone": Library("gone", tmp_path / "missing", state.media.root / "libraries", watch="off"),
        "good": Library("good", good, state.media.root / "libraries", watch="off"),
    })
    libraries.start()
    try:
        for _ in range(200):
            status = {s["name"]: s for s in libraries.status()}
            if status["good"]["indexed"] == 1 and status["gone"]["error"]:
                break
            await asyncio.sleep(0.02)
        assert status["good"]["indexed"] == 1
        assert status["gone"]["status"] == "failed"
        assert "cannot be read" in status["gone"]["error"]
    finally:
        await libraries.stop()


async def test_file_still_written_is_taken_once_stable(tmp_path: Path) -> None:
    state = gateway_state(tmp_path)
    root = tmp_path / "lib"
    (root).mkdir()
    (root / "fresh.png").write_bytes(png(1))  # mtime now: maybe still being written
    libraries = make(state, lib=root)
    library = libraries.libraries["lib"]
    library.settle_s = 0.3
    await libraries.scan(library)
    assert state.index.items == {} and "fresh.png" in library.dirty
    await asyncio.sleep(0.4)
    await libraries.settle(library)
    assert state.index.paths() == ["lib/fresh.png"]


async def test_uploaded_library_bytes_outlive_the_library_file(tmp_path: Path) -> None:
    from glimpse.gateway.ingest import ingest_files
    from glimpse.web.forms import FormPart

    state = gateway_state(tmp_path)
    root = tmp_path / "lib"
    old(root / "a.png", png(1))
    libraries = make(state, lib=root)
    library = libraries.libraries["lib"]
    await libraries.scan(library)
    assert not state.media.original_path(sha(png(1))).exists()  # in place
    [answer] = await ingest_files(state, [FormPart("files", "up/a.png", None, png(1))])
    assert answer["status"] == "exists"
    assert state.media.original_path(sha(png(1))).read_bytes() == png(1)  # the upload's copy
    (root / "a.png").unlink()
    await libraries.scan(library)
    assert state.index.deleted == [] and answer["id"] in state.index.items


async def test_an_emptied_folder_deletes_nothing(tmp_path: Path) -> None:
    state = gateway_state(tmp_path)
    root = tmp_path / "lib"
    old(root / "a.png", png(1))
    old(root / "b/c.png", png(2))
    libraries = make(state, lib=root)
    library = libraries.libraries["lib"]
    await libraries.scan(library)
    for path in (root / "a.png", root / "b/c.png"):
        path.unlink()  # what an unmounted share looks like
    await libraries.scan(library)
    assert state.index.deleted == [] and library.status()["indexed"] == 2
    assert "mounted" in (library.error or "") and library.status()["status"] == "failed"
    old(root / "a.png", png(1))
    await libraries.scan(library)  # one file back: the other is gone for real
    assert library.error is None and len(state.index.deleted) == 1


async def test_an_upstream_fault_is_retried_not_recorded(tmp_path: Path) -> None:
    class Flaky(FakeUpstreams):
        down = True

        async def embed_images_wire(self, files: list[tuple[str, bytes]],
                                    model: str | None = None) -> EmbeddedImages:
            if self.down:
                fault = {"error": "the encoder failed", "error_type": "upstream_error"}
                return EmbeddedImages([None] * len(files), [fault] * len(files),
                                      [None] * len(files))
            return await super().embed_images_wire(files)

    up = Flaky()
    state = gateway_state(tmp_path, up)
    root = tmp_path / "lib"
    old(root / "a.png", png(1))
    libraries = make(state, lib=root)
    library = libraries.libraries["lib"]
    await libraries.scan(library)
    assert library.status()["failed"] == 0 and library.state.get("a.png") is None
    assert "a.png" in library.dirty
    up.down = False
    library.dirty["a.png"] = 0.0  # its retry time has come
    await libraries.settle(library)
    assert library.status()["indexed"] == 1
