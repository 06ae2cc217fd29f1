"""Duplicate groups (glimpse/gateway/duplicates.py): linking, union-find, the keeper, the answer."""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from PIL import Image

from glimpse.contracts.vectors import encode_vector
from glimpse.gateway.duplicates import (
    DIFFERENCE,
    DRAFT_BOUND,
    NEIGHBOURS,
    PRINTS_NAME,
    SIDE,
    VERSION,
    Duplicates,
    Item,
    Pixels,
    answer,
    confirm,
    exact_candidates,
    fingerprint,
    fingerprint_of,
    groups,
    keeper,
    links,
    same_pixels,
    select,
)
from glimpse.gateway.media import KeyLocks
from glimpse.imaging import DEFAULT_LIMITS


def item(i: int, w: int | None = 100, h: int | None = 80, size: int | None = 1000,
         date: str | None = None) -> Item:
    return Item(i, f"{i}.jpg", w, h, size, date)


def test_keeper_takes_pixels_then_bytes_then_the_oldest_date() -> None:
    assert keeper([item(1, 100, 80), item(2, 200, 80)]) == 2
    assert keeper([item(1, size=900), item(2, size=1200)]) == 2
    assert keeper([item(1, date="2021-05-01T10:00:00"), item(2, date="2019-01-01T00:00:00"),
                   item(3)]) == 2
    assert keeper([item(5), item(3)]) == 3  # a tie: the smallest id
    assert keeper([item(1, None, None, None), item(2, 10, 10, 1)]) == 2


def test_groups_join_through_shared_members_and_keep_the_weakest_link() -> None:
    found = groups([(1, 2, 0.99), (2, 3, 0.97), (7, 8, 0.995), (3, 1, 0.98)])
    assert found == [([7, 8], 0.995), ([1, 2, 3], 0.97)]
    assert groups([]) == []


def _row(me: int, near: list[tuple[int, float]]) -> list[tuple[int, float]]:
    # The item itself, its near hits, then a background of unrelated items at distance 0.4.
    far = [(100 + n, 0.6) for n in range(NEIGHBOURS - len(near))]
    return [(me, 1.0), *near, *far]


def _vectors(ids: list[int]) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(7)
    return {i: (v / np.linalg.norm(v)).astype(np.float32)
            for i, v in zip(ids, rng.standard_normal((len(ids), 16)), strict=True)}


def test_a_hit_links_when_it_is_near_against_the_items_own_background() -> None:
    items = {i: item(i) for i in (1, 2, 3)} | {4: item(4, 50, 40)}
    items.update({100 + n: item(100 + n) for n in range(NEIGHBOURS)})
    same = fingerprint(_picture(1))
    pixels = Pixels({1: same, 2: same, 4: same, 3: fingerprint(_picture(3))})
    vectors = _vectors(list(items))
    hits = [_row(1, [(2, 0.999), (4, 0.997), (3, 0.9)])]
    found = links([1], hits, items, vectors, pixels)
    # Background distance 0.4: the ratios 0.0025, 0.0075 and 0.25; 4 is smaller than 1.
    assert [(a, b, same) for a, b, _, _, same, _ in found] == [(1, 2, True), (1, 4, False),
                                                               (1, 3, False)]
    assert select(found, "exact") == [(1, 2, 0.999)]  # within 0.005, same size and pixels
    # 4 by both signals, 3 by neither (another picture, and a ratio past 0.01).
    assert select(found, "similar") == [(1, 2, 0.999), (1, 4, 0.997)]
    assert select(found, "similar", difference=-1.0) == [(1, 2, 0.999), (1, 4, 0.997)]
    assert len(select(found, "similar", ratio=0.3)) == 3  # a request's own ratio
    # The same scores against a nearer background (a denser region) link nothing by vectors.
    dense = [[(1, 1.0), (3, 0.999), *[(100 + n, 0.9995) for n in range(NEIGHBOURS)]]]
    assert select(links([1], dense, items, vectors, pixels), "similar", difference=-1.0) == []


def test_a_pair_found_from_both_sides_counts_once_with_its_smaller_ratio() -> None:
    items = {i: item(i) for i in (1, 2)} | {100 + n: item(100 + n) for n in range(NEIGHBOURS)}
    far = [(2, 1.0), (1, 0.99), *[(200 + n, 0.95) for n in range(NEIGHBOURS - 1)]]
    found = links([1, 2], [_row(1, [(2, 0.99)]), far], items, _vectors([1, 2]), Pixels({}))
    assert [(a, b) for a, b, *_ in found] == [(1, 2)]
    assert abs(found[0][3] - 0.01 / 0.4) < 1e-9 and found[0][5] is None


def _edits(img: Image.Image) -> dict[str, Image.Image]:
    """A picture's copies the similar mode must take: each edit of the issue, and all of them."""
    w, h = img.size
    resized = img.resize((w * 6 // 10, h * 6 // 10), Image.Resampling.BILINEAR)
    cropped = img.crop((2, 3, w - 3, h - 1))  # about 8 % of each side, split unevenly
    coloured = Image.eval(img, lambda v: min(255, int(v * 1.08) + 4))
    recompressed = _decoded(_jpeg(img, 35))
    everything = _decoded(_jpeg(Image.eval(
        img.crop((4, 0, w - 1, h - 3)).resize((w // 2, h // 2), Image.Resampling.BILINEAR),
        lambda v: max(0, int(v * 0.93) - 3)), 50))
    return {"resized": resized, "cropped": cropped, "coloured": coloured,
            "recompressed": recompressed, "everything": everything}


def test_the_pixels_take_edited_copies_and_leave_other_pictures() -> None:
    originals = [_picture(seed) for seed in range(1, 31)]
    prints = {k: fingerprint(img) for k, img in enumerate(originals)}
    copies = _edits(originals[0])
    prints |= {100 + k: fingerprint(img) for k, img in enumerate(copies.values())}
    pixels = Pixels(prints)
    copy_ids = list(range(100, 100 + len(copies)))
    near = dict(zip(copies, pixels.differences(0, copy_ids), strict=True))
    assert all(d is not None and d <= DIFFERENCE for d in near.values()), near
    others = pixels.differences(0, list(range(1, 30)))
    assert min(d for d in others if d is not None) > DIFFERENCE
    # Each copy finds its original among its fingerprint neighbours.
    assert all(0 in near for near in pixels.near(copy_ids))
    # A flat picture has no shape to be near by, and one without a fingerprint no neighbours.
    flat = Pixels(prints | {999: bytes(SIDE * SIDE)})
    nothing, mine, unknown = flat.near([999, 0, 12345])
    assert nothing == [] and 999 not in mine and set(copy_ids) <= set(mine) and unknown == []


def test_a_pair_only_the_pixels_find_links_in_similar_with_its_cosine() -> None:
    items = {i: item(i) for i in (1, 2)} | {100 + n: item(100 + n) for n in range(NEIGHBOURS)}
    original = _picture(5)
    pixels = Pixels({1: fingerprint(original), 2: fingerprint(_edits(original)["cropped"])})
    vectors = _vectors(list(items))
    found = links([1], [_row(1, [])], items, vectors, pixels)  # 2 is not among 1's hits
    assert [(a, b) for a, b, *_ in found] == [(1, 2)]
    cosine = float(vectors[1] @ vectors[2])
    assert abs(found[0][2] - cosine) < 1e-3
    assert select(found, "similar") == [(1, 2, found[0][2])] and select(found, "exact") == []


def test_the_answer_drops_deleted_items_and_names_the_keeper() -> None:
    state = {
        "version": VERSION, "complete": True, "updated_at": 1.0,
        "progress": {"done": 3, "total": 3},
        "items": {"1": vars(item(1, size=10)), "2": vars(item(2, size=20)),
                  "3": vars(item(3))},
        "links": [[1, 2, 0.98, 0.008, False, 0.3], [2, 9, 0.99, 0.001, True, 0.0],
                  [1, 3, 0.5, 0.4, False, 0.05]],
    }
    body = answer(state, "similar")
    assert body["complete"] is True and body["mode"] == "similar"
    assert body["difference"] == DIFFERENCE
    assert [[i["id"] for i in g["items"]] for g in body["groups"]] == [[1, 2, 3]]
    assert body["groups"][0]["keeper"] == 3 and body["groups"][0]["score"] == 0.5
    assert answer(state, "exact")["groups"] == []  # not of the same size
    # By the vectors alone, and by the pixels alone.
    assert [[i["id"] for i in g["items"]] for g in answer(
        state, "similar", difference=0.01)["groups"]] == [[1, 2]]
    assert [[i["id"] for i in g["items"]] for g in answer(
        state, "similar", ratio=0.005)["groups"]] == [[1, 3]]
    first = answer({}, "exact")
    assert first["complete"] is False and first["groups"] == []
    # A file of an older layout is none: the next pass recomputes it.
    older = answer({**state, "version": VERSION - 1}, "similar")
    assert older["complete"] is False and older["groups"] == []


class FakeIndex:
    """GET /v1/items and POST /v1/search over a dict of unit vectors (exact search)."""

    def __init__(self) -> None:
        self.vectors: dict[int, np.ndarray] = {}
        self.searched = 0  # vectors searched

    async def stats(self) -> dict[str, Any]:
        return {"count": len(self.vectors)}

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        if path == "/v1/items":
            after, limit = kwargs["params"]["after"], kwargs["params"]["limit"]
            ids = sorted(i for i in self.vectors if i > after)[:limit]
            return {"items": [{"id": i, "key": f"k{i}", "path": f"{i}.jpg",
                               "meta": {"width": 10, "height": 10},
                               "vector": encode_vector(self.vectors[i])} for i in ids],
                    "next_after": ids[-1] if len(ids) == limit else None}
        queries = [np.frombuffer(base64.b64decode(v), "<f4") for v in kwargs["json"]["vectors"]]
        ids = sorted(self.vectors)
        matrix = np.stack([self.vectors[i] for i in ids])
        results = []
        for q in queries:
            self.searched += 1
            order = np.argsort(-(matrix @ q))[: kwargs["json"]["k"]]
            results.append([{"id": ids[j], "score": float(matrix[j] @ q)} for j in order])
        return {"results": results}


def test_a_pass_searches_only_new_items_and_drops_deleted_ones(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    index = FakeIndex()

    def unit(v: np.ndarray) -> np.ndarray:
        return (v / np.linalg.norm(v)).astype(np.float32)

    for i in range(1, 41):
        index.vectors[i] = unit(rng.standard_normal(16))
    index.vectors[41] = index.vectors[3].copy()  # an exact copy of 3
    # Each item's original: a picture of its own; 41 and 46 the pixels of 3 and 7 in PNG, 43 a
    # vector copy of 5 whose pixels differ (a recompression): similar, never exact; 45 a crop
    # of 9 that only the pixels find (its vector is unrelated).
    originals = {f"k{i}": _jpeg(_picture(i), 90) for i in range(1, 41)}
    originals |= {"k41": _png(_decoded(originals["k3"])),
                  "k46": _png(_decoded(originals["k7"])),
                  "k43": _jpeg(_decoded(originals["k5"]), 40),
                  "k45": _png(_edits(_decoded(originals["k9"]))["cropped"])}
    index.vectors[43] = index.vectors[5].copy()
    index.vectors[45] = unit(rng.standard_normal(16))
    decoded: list[str] = []

    def find_original(key: str, path: str, original: Any) -> bytes | None:
        decoded.append(key)
        return originals.get(key)

    media = SimpleNamespace(root=tmp_path, locks=KeyLocks(tmp_path / "keys.lock"),
                            find_original=find_original)
    gateway = SimpleNamespace(index=index, media=media, decode_limiter=None,
                              encoder=SimpleNamespace(limits=DEFAULT_LIMITS))
    duplicates = Duplicates(gateway)  # type: ignore[arg-type]

    asyncio.run(duplicates.run(duplicates.load()))
    state = duplicates.load()
    assert state["complete"] and not duplicates.stale(state)
    assert [[i["id"] for i in g["items"]] for g in answer(state, "exact")["groups"]] == [[3, 41]]
    # Each item searched and fingerprinted once; the originals of the same-size pairs near in
    # pixels (an exact copy, a recompression) decoded whole once more for the exact check.
    assert index.searched == 43
    assert sorted(decoded) == sorted([f"k{i}" for i in range(1, 42)] + ["k43", "k45"]
                                     + ["k3", "k41", "k5", "k43"])
    assert sorted([i["id"] for i in g["items"]] for g in answer(state, "similar")["groups"]) == [
        [3, 41], [5, 43], [9, 45]]
    assert (tmp_path / PRINTS_NAME).exists()

    index.searched = 0
    decoded.clear()
    index.vectors[46] = index.vectors[7].copy()
    del index.vectors[41]
    asyncio.run(duplicates.run(duplicates.load()))
    state = duplicates.load()
    assert index.searched == 1 and decoded == ["k46", "k7", "k46"]  # only the new item
    assert [[i["id"] for i in g["items"]] for g in answer(state, "exact")["groups"]] == [[7, 46]]
    assert sorted([i["id"] for i in g["items"]] for g in answer(state, "similar")["groups"]) == [
        [5, 43], [7, 46], [9, 45]]


def _picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((64, 48), Image.Resampling.BILINEAR)


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _decoded(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def test_the_pixel_check_takes_lossless_copies_only() -> None:
    original = _jpeg(_picture(1), 90)
    # The same JPEG with a comment segment (metadata added: other bytes, the same pixels).
    commented = original[:2] + b"\xff\xfe\x00\x07hello" + original[2:]
    assert commented != original

    def printed(data: bytes) -> bytes:
        return fingerprint(_decoded(data))

    base = printed(original)
    assert len(base) == SIDE * SIDE
    assert same_pixels(base, printed(commented))
    assert same_pixels(base, printed(_png(_decoded(original))))
    for quality in (40, 70, 95):  # every recompression moves the pixels
        assert not same_pixels(base, printed(_jpeg(_decoded(original), quality)))
    brighter = Image.eval(_decoded(original), lambda v: min(255, v + 3))
    assert not same_pixels(base, printed(_png(brighter)))
    assert not same_pixels(base, None) and not same_pixels(None, None)


def test_a_jpeg_is_fingerprinted_from_its_dct_scaled_grey_and_decoded_whole_for_exact() -> None:
    rng = np.random.default_rng(3)
    noisy = np.asarray(_picture(2).resize((1024, 768), Image.Resampling.BICUBIC), np.float32)
    noisy += rng.normal(0.0, 6.0, (768, 1024, 1))
    original = _jpeg(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), 90)
    most = DEFAULT_LIMITS.max_pixels
    draft, whole = fingerprint_of(original, most), fingerprint_of(original, most, whole=True)
    grey = fingerprint(_decoded(original))
    assert draft != grey and same_pixels(draft, grey, DRAFT_BOUND)
    # Decoded whole the fingerprint is in colour: a lossless copy's is the original's.
    assert len(whole) == 3 * SIDE * SIDE == len(fingerprint(_decoded(original), colour=True))
    lossless = _png(_decoded(original))
    assert fingerprint_of(lossless, most) == grey
    assert fingerprint_of(lossless, most, whole=True) == whole
    resaved = _jpeg(_decoded(original), 95)
    pixels = Pixels({1: draft, 2: fingerprint_of(lossless, most), 3: fingerprint_of(resaved, most)})
    assert pixels.same(1, 2) and pixels.same(1, 3)  # both candidates ...
    found = [(1, 2, 0.999, 0.001, True, 0.0), (1, 3, 0.999, 0.001, True, 0.01),
             (1, 4, 0.9, 0.2, False, 0.3)]
    assert exact_candidates(found) == {1, 2, 3}
    wholes = {1: whole, 2: fingerprint_of(lossless, most, whole=True),
              3: fingerprint_of(resaved, most, whole=True)}
    # ... and decoded whole only the lossless copy is the same pixels; a pair not a candidate
    # stays none.
    assert [link[4] for link in confirm(found, wholes.get)] == [True, False, False]
    assert [link[4] for link in confirm(found, {}.get)] == [False, False, False]


def test_the_exact_check_tells_a_colour_shift_that_leaves_the_grey_as_it_was() -> None:
    most = DEFAULT_LIMITS.max_pixels
    grey = np.asarray(_picture(1).convert("L").convert("RGB"), np.int16)
    # Red up 6 and green down 3 levels: every pixel's luma stays the same grey level.
    tinted = _png(Image.fromarray(np.clip(grey + np.array([6, -3, 0]), 0, 255).astype(np.uint8)))
    plain = _png(Image.fromarray(grey.astype(np.uint8)))
    assert fingerprint_of(plain, most) == fingerprint_of(tinted, most)  # a candidate ...
    found = [(1, 2, 0.999, 0.001, True, 0.0)]
    wholes = {1: fingerprint_of(plain, most, whole=True), 2: fingerprint_of(tinted, most, True)}
    assert [link[4] for link in confirm(found, wholes.get)] == [False]  # ... but not the same
    wholes[2] = fingerprint_of(_png(_decoded(plain)), most, whole=True)
    assert [link[4] for link in confirm(found, wholes.get)] == [True]


def test_the_exact_check_takes_no_re_save_however_close() -> None:
    # A white page with one stroke re-saved at JPEG quality 95 moves a few cells by one level.
    page = Image.new("RGB", (100, 82), "white")
    page.paste((0, 0, 0), (20, 20, 60, 22))
    original = _jpeg(page, 90)
    resaved = _jpeg(_decoded(original), 95)
    most = DEFAULT_LIMITS.max_pixels
    a, b = fingerprint_of(original, most, whole=True), fingerprint_of(resaved, most, whole=True)
    diff = np.abs(np.frombuffer(a, np.uint8).astype(np.int16) - np.frombuffer(b, np.uint8))
    assert 0 < diff.mean() < 0.02 and not same_pixels(a, b)
    assert same_pixels(a, fingerprint_of(_png(_decoded(original)), most, whole=True))
