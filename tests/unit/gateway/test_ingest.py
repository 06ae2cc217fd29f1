"""Ingest helpers that need no upstream: a full media disk rejects the part (507 type)."""

from __future__ import annotations

import errno
import io
from pathlib import Path

from PIL import Image

from gateway.images import prepare_image
from gateway.ingest import Part, _store_media
from gateway.media import MediaStore


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30)).save(out, format="PNG")
    return out.getvalue()


class FullDisk(MediaStore):
    def put_original(self, sha256: str, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


class State:
    def __init__(self, media: MediaStore) -> None:
        self.media = media


def test_a_full_disk_rejects_the_part_as_insufficient_storage(tmp_path: Path) -> None:
    data = png()
    part = Part(path="a.png", data=data, sha256="ab" * 32)
    part.prepared = prepare_image(data, max_pixels=10**6)
    _store_media(State(FullDisk(tmp_path)), [part])  # type: ignore[arg-type]
    assert part.status == "rejected"
    assert part.error_type == "insufficient_storage" and part.error


def test_a_writable_disk_keeps_both_files(tmp_path: Path) -> None:
    data = png()
    store = MediaStore(tmp_path)
    part = Part(path="a.png", data=data, sha256="cd" * 32)
    part.prepared = prepare_image(data, max_pixels=10**6)
    _store_media(State(store), [part])  # type: ignore[arg-type]
    assert part.status is None
    assert store.find_original("cd" * 32, "a.png") is not None
    assert store.find_thumbnail("cd" * 32, "image/webp") is not None
