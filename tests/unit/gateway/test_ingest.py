"""Ingest with its upstreams scripted: one /v1/keys/ids question per batch, known keys answered
"exists" without an encoder call, a full media disk rejects the part (507 type), and the copies
a request made for parts that were not added are removed, except those an add that did not
answer may name."""

from __future__ import annotations

import errno
import hashlib
import io
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

import glimpse.gateway.media as media_module
from glimpse.contracts.errors import ErrorType, GlimpseError
from glimpse.gateway.clients import EmbeddedImages
from glimpse.gateway.ingest import Part, _hash_all, _store_media, ingest_files
from glimpse.gateway.media import MediaStore
from glimpse.imaging import ImageLimits, open_checked


def png(extra: int | None = None) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30)).save(out, format="PNG")
    # A byte after the image's end: distinct bytes, the same readable header.
    return out.getvalue() + (b"" if extra is None else bytes([extra]))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encoder_answer(
    files: list[tuple[str, bytes]], max_pixels: int, refuse: frozenset[str] = frozenset()
) -> EmbeddedImages:
    """As the encoder answers: a vector and the size as stored (no test turns its images), or
    the error of what a file's header shows, or of a path in ``refuse``."""
    answer = EmbeddedImages([], [], [])
    limits = ImageLimits(max_bytes=None, max_pixels=max_pixels)
    for path, data in files:
        try:
            if path in refuse:
                raise GlimpseError(ErrorType.invalid_image, "cannot decode")
            size = open_checked(data, limits).size
        except GlimpseError as exc:
            answer.vectors.append(None)
            answer.errors.append({"error": exc.message, "error_type": exc.error_type})
            answer.sizes.append(None)
        else:
            answer.vectors.append("AAAA")
            answer.errors.append(None)
            answer.sizes.append(size)
    return answer


class Upstreams:
    """The encoder and index calls that ingest makes, scripted per test."""

    def __init__(self, known: dict[str, int] | None = None, refuse: frozenset[str] = frozenset(),
                 encoder_down: bool = False, index_answers: str | None = "added") -> None:
        self.known = dict(known or {})
        self.refuse, self.encoder_down, self.index_answers = refuse, encoder_down, index_answers
        self.asked: list[list[str]] = []
        self.embedded: list[str] = []
        self.added: list[dict[str, Any]] = []
        self.limits = SimpleNamespace(max_pixels=10**6, max_bytes=10**6)  # the encoder's /v1/info

    async def key_ids(self, keys: list[str]) -> dict[str, int]:
        self.asked.append(list(keys))
        return {k: self.known[k] for k in keys if k in self.known}

    async def embed_images_wire(self, files: list[tuple[str, bytes]],
                                model: str | None = None) -> EmbeddedImages:
        if self.encoder_down:
            raise OSError("the encoder is down")
        self.embedded += [path for path, _ in files]
        return encoder_answer(files, self.limits.max_pixels, self.refuse)

    async def add(self, items: list[dict[str, Any]], space: str | None = None
                  ) -> list[dict[str, Any]]:
        if self.index_answers is None:
            raise TimeoutError("the index did not answer")  # it may have committed them
        self.added += items
        return [{"status": self.index_answers, "id": 100 + n} for n, _ in enumerate(items)]


def state_with(media: MediaStore, upstreams: Upstreams | None = None) -> Any:
    upstreams = upstreams or Upstreams()
    return SimpleNamespace(
        media=media, encoder=upstreams, index=upstreams,
        settings=SimpleNamespace(thumbnail_format="webp", max_files_per_request=64,
                                 max_file_bytes=10**6, max_pixels=10**6),
    )


def upload(name: str, data: bytes) -> Any:
    return SimpleNamespace(filename=name, data=data)


def originals(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "originals").rglob("*") if p.is_file())


async def test_one_question_answers_known_and_new_keys(tmp_path: Path) -> None:
    old, new, bad = png(1), png(2), b"not an image"
    upstreams = Upstreams(known={sha(old): 7, sha(bad): 8})
    state = state_with(MediaStore(tmp_path), upstreams)
    answers = await ingest_files(state, [upload("old.png", old), upload("new.png", new),
                                         upload("again.png", new), upload("bad.png", bad)])
    assert upstreams.asked == [[sha(old), sha(new), sha(bad)]]  # once, each key once
    assert [(a["status"], a["id"]) for a in answers] == [
        ("exists", 7), ("added", 100), ("exists", 100), ("exists", 8)
    ]
    assert upstreams.embedded == ["new.png"]  # known keys never reach the encoder
    assert originals(tmp_path) == [sha(new)]
    assert "original" not in upstreams.added[0]["meta"]  # found by its sha256 alone


async def test_a_part_the_encoder_refuses_leaves_no_copy(tmp_path: Path) -> None:
    datas = [png(i) for i in range(3)]
    state = state_with(MediaStore(tmp_path), Upstreams(refuse=frozenset({"1.png"})))
    answers = await ingest_files(state, [upload(f"{i}.png", d) for i, d in enumerate(datas)])
    assert [a["status"] for a in answers] == ["added", "rejected", "added"]
    assert originals(tmp_path) == sorted([sha(datas[0]), sha(datas[2])])


async def test_a_failed_encoder_call_leaves_no_copy_it_made(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    there, fresh = png(1), png(2)
    # Bytes already stored (an earlier add that did not answer may name them) stay.
    store.put_many([(sha(there), there)])
    state = state_with(store, Upstreams(encoder_down=True))
    with pytest.raises(OSError, match="encoder"):
        await ingest_files(state, [upload("a.png", there), upload("b.png", fresh)])
    assert originals(tmp_path) == [sha(there)]


async def test_copies_sent_in_an_add_that_did_not_answer_stay(tmp_path: Path) -> None:
    datas = [png(i) for i in range(3)]
    upstreams = Upstreams(refuse=frozenset({"0.png"}), index_answers=None)
    state = state_with(MediaStore(tmp_path), upstreams)
    with pytest.raises(TimeoutError):
        await ingest_files(state, [upload(f"{i}.png", d) for i, d in enumerate(datas)])
    # The index may have committed the add: its items' originals must stay.
    assert originals(tmp_path) == sorted([sha(datas[1]), sha(datas[2])])


async def test_copies_of_an_item_the_index_already_had_stay(tmp_path: Path) -> None:
    # "exists" from the add itself (a writer that holds no lock, such as an older gateway):
    # the item there names the same content-addressed file.
    state = state_with(MediaStore(tmp_path), Upstreams(index_answers="exists"))
    answers = await ingest_files(state, [upload("a.png", png(1))])
    assert answers[0]["status"] == "exists" and originals(tmp_path) == [sha(png(1))]


def test_a_full_disk_rejects_the_part_as_insufficient_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    part = Part(path="a.png", data=png(), sha256="ab" * 32)

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(media_module.os, "write", full)
    _store_media(state_with(MediaStore(tmp_path)), [part])
    assert part.status == "rejected" and not part.created
    assert part.error_type == "insufficient_storage" and part.error
    assert [n for _, _, files in os.walk(tmp_path) for n in files] == []  # no temporary files


def test_the_original_is_kept_and_no_thumbnail_is_made(tmp_path: Path) -> None:
    # Thumbnails are made on first request (glimpse/gateway/thumbnails.py), not at ingest.
    data = png()
    store = MediaStore(tmp_path)
    part = Part(path="a.png", data=data, sha256=sha(data))
    _store_media(state_with(store), [part])
    assert part.status is None and part.created
    assert store.original_path(sha(data)).read_bytes() == data
    assert store.find_thumbnail(sha(data), "image/webp") is None


def test_hash_all_hashes_each_part() -> None:
    parts = [Part(path="a.png", data=png()), Part(path="b.png", data=b"not an image")]
    _hash_all(parts)
    assert [p.sha256 for p in parts] == [hashlib.sha256(p.data).hexdigest() for p in parts]
    assert all(p.status is None for p in parts)  # judged later, by the encoder, if new


async def test_the_encoders_verdict_and_size_are_what_ingest_keeps(tmp_path: Path) -> None:
    # The gateway reads no header: a new file that is no image, or too large, is refused by
    # the encoder, named, and leaves no copy; an added one's size is the encoder's answer.
    big = io.BytesIO()
    Image.new("RGB", (2000, 1000)).save(big, format="PNG")
    upstreams = Upstreams()
    state = state_with(MediaStore(tmp_path), upstreams)
    answers = await ingest_files(state, [
        upload("a.png", png(1)), upload("b.png", b"not an image"),
        upload("c.png", big.getvalue()),
    ])
    assert [(a["status"], a["error_type"]) for a in answers] == [
        ("added", None), ("rejected", "invalid_image"), ("rejected", "image_too_large")
    ]
    assert answers[1]["error"].startswith("b.png: The file is not a recognisable image")
    assert upstreams.embedded == ["a.png", "b.png", "c.png"]
    meta = upstreams.added[0]["meta"]
    assert (meta["width"], meta["height"], meta["content_type"]) == (40, 30, "image/png")
    assert originals(tmp_path) == [sha(png(1))]
