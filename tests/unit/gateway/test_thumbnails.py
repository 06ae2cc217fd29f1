"""Thumbnails made on first request: made once, kept, served after a failed write, never made
from bytes other than the item's."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import io
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from PIL import Image

import glimpse.gateway.thumbnails as thumbnails
from glimpse.gateway.config import Settings
from glimpse.gateway.media import MediaStore
from glimpse.gateway.thumbnails import thumbnail_of


def jpeg(size: tuple[int, int] = (640, 480)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(out, format="JPEG", quality=90)
    return out.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put(store: MediaStore, data: bytes) -> None:
    """Store an original; its location is its sha256, so the item's meta names none."""
    assert store.put_many([(sha(data), data)])[0] == [None]


def state_with(media: MediaStore) -> Any:
    return SimpleNamespace(
        settings=Settings(media_dir=media.root),
        media=media,
        decode_limiter=anyio.CapacityLimiter(2),
        encoder=SimpleNamespace(limits=SimpleNamespace(max_pixels=60_000_000)),  # its /v1/info
    )


async def test_the_first_request_makes_and_keeps_it(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    data = jpeg()
    put(store, data)
    made = await thumbnail_of(state_with(store), sha(data), "a.jpg", "image/webp")
    assert isinstance(made, bytes)
    with Image.open(io.BytesIO(made)) as img:
        assert (img.format, img.size) == ("WEBP", (320, 240))
    kept = await thumbnail_of(state_with(store), sha(data), "a.jpg", "image/webp")
    assert isinstance(kept, Path) and kept.read_bytes() == made


async def test_concurrent_first_requests_make_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MediaStore(tmp_path)
    data = jpeg()
    put(store, data)
    calls = []
    real = thumbnails.make_thumbnail

    def counting(*args: Any, **kwargs: Any) -> bytes:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(thumbnails, "make_thumbnail", counting)
    state = state_with(store)
    answers = await asyncio.gather(
        *(thumbnail_of(state, sha(data), "a.jpg", "image/jpeg") for _ in range(6))
    )
    assert len(calls) == 1
    first = next(a for a in answers if isinstance(a, bytes))
    assert all((a if isinstance(a, bytes) else a.read_bytes()) == first for a in answers)


async def test_no_original_or_an_undecodable_one_gives_none(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    state = state_with(store)
    assert await thumbnail_of(state, "ab" * 32, "gone.jpg", "image/webp") is None
    truncated = jpeg()[:300]
    put(store, truncated)
    assert await thumbnail_of(state, sha(truncated), "t.jpg", "image/webp") is None
    assert store.find_thumbnail(sha(truncated), "image/webp") is None


async def test_a_failed_write_still_serves_the_thumbnail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MediaStore(tmp_path)
    data = jpeg()
    put(store, data)

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "put_thumbnail", full)
    made = await thumbnail_of(state_with(store), sha(data), "a.jpg", "image/webp")
    assert isinstance(made, bytes) and made[8:12] == b"WEBP"
    assert store.find_thumbnail(sha(data), "image/webp") is None
