"""Ingest helpers that need no upstream: a full media disk rejects the part (507 type)."""

from __future__ import annotations

import errno
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

import gateway.media as media_module
from gateway.images import prepare_image
from gateway.ingest import Part, _store_media
from gateway.media import MediaStore


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30)).save(out, format="PNG")
    return out.getvalue()


class State:
    def __init__(self, media: MediaStore, io_pool: ThreadPoolExecutor | None = None) -> None:
        self.media = media
        self.io_pool = io_pool


def test_a_full_disk_rejects_the_part_as_insufficient_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = png()
    part = Part(path="a.png", data=data, sha256="ab" * 32)
    part.prepared = prepare_image(data, max_pixels=10**6)

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(media_module.os, "write", full)
    _store_media(State(MediaStore(tmp_path)), [part])  # type: ignore[arg-type]
    assert part.status == "rejected"
    assert part.error_type == "insufficient_storage" and part.error
    assert [n for _, _, files in os.walk(tmp_path) for n in files] == []  # no temporary files


def test_one_failed_write_rejects_only_its_part(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    parts = []
    for i, sha in enumerate(("ab" * 32, "cd" * 32, "ef" * 32)):
        data = png()
        part = Part(path=f"{i}.png", data=data, sha256=sha)
        part.prepared = prepare_image(data, max_pixels=10**6)
        parts.append(part)
    # A file where the second part's folder should be: its writes fail, the others do not.
    (tmp_path / "thumbnails" / "cd").mkdir(parents=True)
    (tmp_path / "thumbnails" / "cd" / "cd").write_bytes(b"in the way")
    with ThreadPoolExecutor(4) as pool:
        _store_media(State(store, pool), parts)  # type: ignore[arg-type]
    assert [p.status for p in parts] == [None, "rejected", None]
    assert parts[1].error_type == "internal_error"
    for part in (parts[0], parts[2]):
        assert part.sha256 is not None
        assert store.find_thumbnail(part.sha256, "image/webp") is not None


def test_a_writable_disk_keeps_both_files(tmp_path: Path) -> None:
    data = png()
    store = MediaStore(tmp_path)
    part = Part(path="a.png", data=data, sha256="cd" * 32)
    part.prepared = prepare_image(data, max_pixels=10**6)
    _store_media(State(store), [part])  # type: ignore[arg-type]
    assert part.status is None
    assert store.find_original("cd" * 32, "a.png") is not None
    assert store.find_thumbnail("cd" * 32, "image/webp") is not None
