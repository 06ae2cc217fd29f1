"""Ingest helpers that need no upstream: a full media disk rejects the part (507 type), the
media write keeps originals (thumbnails only when made), the header check per part."""

from __future__ import annotations

import errno
import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

import glimpse.gateway.media as media_module
from glimpse.gateway.images import make_thumbnail
from glimpse.gateway.ingest import Part, _check_all, _embed_and_add, _store_media
from glimpse.gateway.media import MediaStore
from glimpse.gateway.state import KeyLocks, LruCache


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30)).save(out, format="PNG")
    return out.getvalue()


class State:
    def __init__(self, media: MediaStore, io_pool: ThreadPoolExecutor | None = None) -> None:
        self.media = media
        self.io_pool = io_pool
        self.settings = SimpleNamespace(thumbnail_format="webp")


def test_a_full_disk_rejects_the_part_as_insufficient_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = png()
    part = Part(path="a.png", data=data, sha256="ab" * 32)

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(media_module.os, "writev", full)
    _store_media(State(MediaStore(tmp_path)), [part])  # type: ignore[arg-type]
    assert part.status == "rejected"
    assert part.error_type == "insufficient_storage" and part.error
    assert [n for _, _, files in os.walk(tmp_path) for n in files] == []  # no temporary files


def test_a_failed_pack_write_rejects_every_part_of_the_request(tmp_path: Path) -> None:
    # The request's originals share one pack: it is written whole or not at all.
    store = MediaStore(tmp_path)
    parts = [Part(path=f"{i}.png", data=png(), sha256=sha) for i, sha in
             enumerate(("ab" * 32, "cd" * 32, "ef" * 32))]
    (tmp_path / "packs").write_bytes(b"a file where the packs folder should be")
    with ThreadPoolExecutor(4) as pool:
        _store_media(State(store, pool), parts)  # type: ignore[arg-type]
    assert [p.status for p in parts] == ["rejected"] * 3
    assert {p.error_type for p in parts} == {"internal_error"}
    assert all(p.original is None for p in parts)


def test_the_original_is_kept_and_no_thumbnail_is_made(tmp_path: Path) -> None:
    # Thumbnails are made on first request (glimpse/gateway/thumbnails.py), not at ingest.
    data = png()
    store = MediaStore(tmp_path)
    part = Part(path="a.png", data=data, sha256="cd" * 32)
    _store_media(State(store), [part])  # type: ignore[arg-type]
    assert part.status is None and part.original is not None
    assert store.find_original("cd" * 32, "a.png", part.original) == data
    assert store.find_thumbnail("cd" * 32, "image/webp") is None


def test_a_thumbnail_made_at_ingest_is_kept_too(tmp_path: Path) -> None:
    # Without stored originals the thumbnail is made at ingest: the one copy kept.
    data = png()
    store = MediaStore(tmp_path, store_originals=False, library_dir=tmp_path)
    part = Part(path="a.png", data=data, sha256="cd" * 32)
    part.thumbnail = make_thumbnail(data, max_pixels=10**6)
    _store_media(State(store), [part])  # type: ignore[arg-type]
    assert part.status is None
    assert not (tmp_path / "originals").exists()
    thumbnail = store.find_thumbnail("cd" * 32, "image/webp")
    assert thumbnail is not None and thumbnail.read_bytes() == part.thumbnail


def test_check_all_hashes_and_reads_each_header() -> None:
    good, bad = png(), b"not an image"
    big = io.BytesIO()
    Image.new("RGB", (400, 300)).save(big, format="PNG")
    parts = [Part(path="a.png", data=good), Part(path="b.png", data=bad),
             Part(path="c.png", data=big.getvalue())]
    _check_all(parts, max_pixels=100_000)
    assert [p.sha256 for p in parts] == [hashlib.sha256(p.data).hexdigest() for p in parts]
    assert parts[0].info is not None and parts[0].problem is None
    assert (parts[0].info.width, parts[0].info.height) == (40, 30)
    assert parts[0].info.content_type == "image/png"
    assert parts[1].info is None and parts[1].problem is not None
    assert parts[1].problem.error_type == "invalid_image"
    assert parts[2].problem is not None and parts[2].problem.error_type == "image_too_large"
    assert all(p.status is None for p in parts)  # rejected later, for new keys only


# Packed copies that no item refers to ------------------------------------------------------


class Upstreams:
    """The encoder and index clients' two calls that ingest makes, scripted per test."""

    def __init__(self, refuse: set[str] = frozenset(), encoder_down: bool = False,
                 index_answers: str | None = "added") -> None:
        self.refuse, self.encoder_down, self.index_answers = refuse, encoder_down, index_answers
        self.added: list[dict[str, Any]] = []
        self.in_flight: set[str] | None = None  # the gateway's packs in flight, at the add
        self.state: Any = None

    async def embed_images_wire(
        self, files: list[tuple[str, bytes, str]]
    ) -> tuple[list[str | None], list[dict[str, str] | None]]:
        if self.encoder_down:
            raise OSError("the encoder is down")
        vectors: list[str | None] = []
        errors: list[dict[str, str] | None] = []
        for path, _, _ in files:
            refused = path in self.refuse
            vectors.append(None if refused else "AAAA")
            errors.append({"error": "cannot decode", "error_type": "invalid_image"}
                          if refused else None)
        return vectors, errors

    async def add(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.state is not None:
            self.in_flight = set(self.state.packs_in_flight)
        if self.index_answers is None:
            raise TimeoutError("the index did not answer")  # it may have committed them
        self.added += items
        return [{"status": self.index_answers, "id": n} for n, _ in enumerate(items)]


def ingest_state(tmp_path: Path, upstreams: Upstreams) -> Any:
    upstreams.state = SimpleNamespace(
        media=MediaStore(tmp_path), io_pool=None, encoder=upstreams, index=upstreams,
        settings=SimpleNamespace(thumbnail_format="webp"), key_locks=KeyLocks(),
        key_ids=LruCache(16), packs_in_flight=set(),
    )
    return upstreams.state


def new_parts(n: int) -> list[Part]:
    parts = []
    for i in range(n):
        data = png() + bytes([i])  # distinct bytes, a readable header
        part = Part(path=f"{i}.png", data=data, sha256=hashlib.sha256(data).hexdigest())
        _check_all([part], max_pixels=10**6)
        parts.append(part)
    return parts


def stored(state: Any, part: Part) -> bool:
    assert part.sha256 is not None and part.original is not None
    return state.media.read_packed(part.sha256, part.original) == part.data


def pack_files(tmp_path: Path) -> list[str]:
    """The pack and marker files left, by suffix."""
    return sorted(p.suffix for p in (tmp_path / "packs").rglob("*.*"))


async def test_a_part_the_encoder_refuses_leaves_no_packed_copy(tmp_path: Path) -> None:
    state = ingest_state(tmp_path, Upstreams(refuse={"1.png"}))
    parts = new_parts(3)
    await _embed_and_add(state, parts)
    assert [p.status for p in parts] == ["added", "rejected", "added"]
    assert [stored(state, p) for p in parts] == [True, False, True]
    assert [i["meta"]["original"] for i in state.index.added] == [parts[0].original,
                                                                  parts[2].original]
    assert pack_files(tmp_path) == [".pack"]  # settled: its marker removed
    # The settling pass leaves a pack alone while its request has not ended.
    assert state.index.in_flight == {parts[0].original["pack"]}
    assert state.packs_in_flight == set()


async def test_a_failed_encoder_call_leaves_no_packed_copy(tmp_path: Path) -> None:
    state = ingest_state(tmp_path, Upstreams(encoder_down=True))
    parts = new_parts(2)
    with pytest.raises(OSError, match="encoder"):
        await _embed_and_add(state, parts)
    assert not any(stored(state, p) for p in parts)
    assert pack_files(tmp_path) == []  # no item refers to the pack: it is removed


async def test_copies_the_index_kept_another_item_for_are_erased(tmp_path: Path) -> None:
    state = ingest_state(tmp_path, Upstreams(index_answers="exists"))
    parts = new_parts(2)
    await _embed_and_add(state, parts)
    assert [p.status for p in parts] == ["exists", "exists"]
    assert not any(stored(state, p) for p in parts)
    assert pack_files(tmp_path) == []


async def test_copies_sent_in_an_add_that_did_not_answer_stay(tmp_path: Path) -> None:
    state = ingest_state(tmp_path, Upstreams(refuse={"0.png"}, index_answers=None))
    parts = new_parts(3)
    with pytest.raises(TimeoutError):
        await _embed_and_add(state, parts)
    # The index may have committed the add: its items' originals must stay, and the pack
    # stays marked for the settling pass.
    assert [stored(state, p) for p in parts] == [False, True, True]
    assert pack_files(tmp_path) == [".pack", ".pending"]
    assert state.packs_in_flight == set()
