"""Duplicate groups (GET /duplicates): a batched self-search over the index, in the background.

Each item's vector is searched once with ``NEIGHBOURS`` hits, and each item's original is
decoded once into its fingerprint (``SIDE`` x ``SIDE`` greyscale, upright, from a decode of at
least ``DRAFT`` times that a side: a JPEG's grey scaled in the DCT) whose ``NEIGHBOURS`` nearest
fingerprints are candidates too. A candidate pair is measured both ways: by its vectors (the
scale-free ratio below) and by its pixels (``difference``: the crop-aligned,
brightness-fitted difference of the two fingerprints). Linked items are grouped by union-find.

``exact`` links a pair within ``RATIO["exact"]`` of the same displayed size (meta width and
height) whose fingerprints differ by at most ``DRAFT_BOUND`` and then, decoded whole (only
these pairs' originals) in colour, by at most ``PIXEL_BOUND`` levels on average (the same
picture in other bytes: a lossless copy, metadata added or stripped; any recompression, even at
JPEG quality 95, or a colour edit is ``similar``). ``similar`` links a pair within
``DIFFERENCE`` by its pixels or within ``RATIO["similar"]`` by its vectors: random-weight
vectors do not bring crops and colour edits near (bench/bench_duplicates.py measured both
signals and their union).

A pass reads the items a page at a time from the index (GET /v1/items), fingerprints and
searches only the items added since the last pass; deleted items drop out of their groups. A
request starts a pass when the saved groups are older than ``REFRESH_S`` (and answers the saved
ones). One process per media folder computes (the per-key lock of media.py, on a key of its
own); every worker serves the JSON file it writes (temp + rename), the fingerprints are kept
beside it for the next pass.

The vectors' rule. A flat cosine threshold is a per-model constant (every model has its own
score scale). Instead each item's hits give its scale: ``d_k``, the distance (``1 - score``) to
its ``NEIGHBOURS``-th hit, is where its unrelated background lies, and a hit at distance
``d <= RATIO[mode] * d_k`` is near. The pass keeps every pair up to ``MAX_RATIO`` or
``MAX_DIFFERENCE``, so a request overrides the thresholds (``?ratio=``, ``?difference=``) at no
cost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
import numpy as np
from PIL import Image

from glimpse.contracts.errors import GlimpseError
from glimpse.contracts.vectors import decode_vectors, encode_vector
from glimpse.imaging import ImageLimits, load_upright, open_checked, to_rgb

if TYPE_CHECKING:
    from glimpse.gateway.state import GatewayState

log = logging.getLogger(__name__)

Mode = Literal["exact", "similar"]

# Hits per item of the self-search, and fingerprint neighbours per item: copies of one picture
# beyond this many are still grouped through each other (union-find), and the last hit gives
# the item's background scale.
NEIGHBOURS = 20
# A hit nearer than this fraction of the item's background distance is near (measured).
RATIO: dict[Mode, float] = {"exact": 0.005, "similar": 0.01}
# The pass keeps the pairs up to this ratio, so a request may ask for another one (``ratio``).
MAX_RATIO = 0.5
# The exact mode's pixel check: both originals decoded whole at SIDE x SIDE in RGB (a colour
# shift can leave the grey as it was), and the largest mean absolute difference (levels) that is
# still the same picture: none, since the same pixels give the same bytes, while a q95 re-save of
# a smooth grey picture moved a few cells by one level (bench_duplicates.py, seeds 0-2).
SIDE = 32
PIXEL_BOUND = 0.0
# The fingerprint every item gets is decoded at least DRAFT * SIDE a side (libjpeg scales a
# JPEG by up to 8 in the DCT, its grey only), which moves it from the whole decode's: by 0.4-0.8
# grey levels on average for photos, 3.7 for saturated noise whose decode clips. A same-size
# pair within DRAFT_BOUND is decoded whole for the exact check (bench_duplicates.py).
DRAFT = 4
DRAFT_BOUND = 4.0
# The similar mode's pixel check: one fingerprint's central window (CROP from each side) at
# DETAIL x DETAIL against each window of the other that a crop of up to CROP per axis (in the
# steps of CROPS, split in any way between the two edges) of either picture shows it at, after
# fitting a colour edit's gain and shift (GAIN, SHIFT). The difference is the fit's RMS over
# the picture's contrast (its standard deviation plus FLOOR grey levels, so that noise on a
# flat picture stays small); a pair within DIFFERENCE is a copy (bench_duplicates.py chose it).
DETAIL = 16
CROP = 0.1
CROPS = (0.0, 0.025, 0.05, 0.075, 0.1)
GAIN = (0.85, 1.18)
SHIFT = 12.0
FLOOR = 4.0
DIFFERENCE = 0.16
# The pass keeps the pairs up to this difference, so a request may ask for another one.
MAX_DIFFERENCE = 0.5
# Items read per page and searched per request.
PAGE = 500
BATCH = 64
# A pass starts when the file is older than this and someone asks.
REFRESH_S = 30.0
FILE_NAME = "duplicates.json"
PRINTS_NAME = "duplicates.prints.npz"
# The saved state's layout (3: exact pairs confirmed in colour): another one is recomputed.
VERSION = 3
_LOCK_KEY = "glimpse:duplicates"
_TINY = 1e-6


@dataclass(frozen=True)
class Item:
    id: int
    path: str
    width: int | None
    height: int | None
    bytes: int | None
    date: str | None  # the date taken, ISO (meta "taken")

    @classmethod
    def of(cls, record: dict[str, Any]) -> Item:
        meta = record.get("meta") or {}

        def number(name: str) -> int | None:
            value = meta.get(name)
            return value if isinstance(value, int) else None

        taken = meta.get("taken")
        return cls(int(record["id"]), str(record["path"]), number("width"), number("height"),
                   number("bytes"), taken if isinstance(taken, str) else None)

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "path": self.path, "width": self.width, "height": self.height,
                "bytes": self.bytes, "date": self.date}


def keeper(items: Sequence[Item]) -> int:
    """The id to keep: the most pixels, then the largest file, then the oldest date taken
    (an item with no date after any with one), then the smallest id."""
    def rank(item: Item) -> tuple[int, int, int, str, int]:
        pixels = (item.width or 0) * (item.height or 0)
        return (-pixels, -(item.bytes or 0), item.date is None, item.date or "", item.id)

    return min(items, key=rank).id


# smaller id, larger id, cosine, the vectors' ratio, same size and pixels, the pixels' difference
Link = tuple[int, int, float, float, bool, float | None]


def fingerprint(img: Image.Image, colour: bool = False) -> bytes:
    """An upright decoded image as ``SIDE`` x ``SIDE`` greyscale bytes (or RGB, ``colour``):
    each pixel the mean of those it covers, or for an image smaller than that, interpolated (so
    that a small copy's pixels are not blocks of another size than its original's)."""
    small = min(img.size) < SIDE
    resample = Image.Resampling.BILINEAR if small else Image.Resampling.BOX
    if colour:
        img = to_rgb(img)
    elif img.mode != "L":
        img = to_rgb(img).convert("L")
    return img.resize((SIDE, SIDE), resample).tobytes()


def fingerprint_of(data: bytes, max_pixels: int, whole: bool = False) -> bytes:
    """The fingerprint of an original's bytes: decoded at least ``DRAFT * SIDE`` a side (a
    JPEG's grey only, scaled in the DCT), or ``whole`` and in colour as the exact check needs.

    Raises GlimpseError when the bytes do not decode (or hold too many pixels)."""
    img = open_checked(data, ImageLimits(None, max_pixels, None))
    if not whole and img.format in ("JPEG", "MPO"):
        img.draft("L", (DRAFT * SIDE, DRAFT * SIDE))  # load_upright's draft then keeps this
    # At the size decoded: a further whole-factor reduction rounds the last row's and column's
    # cells up and so shifts the fingerprint's.
    return fingerprint(load_upright(img, img.size), colour=whole)


def same_pixels(a: bytes | None, b: bytes | None, bound: float = PIXEL_BOUND) -> bool:
    """Two fingerprints of the same picture (within ``bound``, the whole decodes' by default);
    an unreadable one never is."""
    if a is None or b is None or len(a) != len(b):
        return False
    diff = np.frombuffer(a, np.uint8).astype(np.int16) - np.frombuffer(b, np.uint8)
    return float(np.abs(diff).mean()) <= bound


def _sampler(start: float, width: float) -> np.ndarray:
    """The DETAIL x SIDE matrix that averages the span [start, start + width] of a side
    (fractions of it) into DETAIL cells: each cell the mean of the pixels it covers, in
    proportion, so fine texture does not alias."""
    edges = np.clip((start + np.arange(DETAIL + 1) / DETAIL * width) * SIDE, 0.0, SIDE)
    pixels = np.arange(SIDE)
    cover = np.clip(np.minimum(edges[1:, None], pixels + 1) - np.maximum(edges[:-1, None], pixels),
                    0.0, None)
    return (cover / np.maximum(cover.sum(axis=1, keepdims=True), _TINY)).astype(np.float32)


def _spans() -> np.ndarray:
    """Per axis, the samplers of the spans of a picture that another's central span shows when
    one of the two is a crop (``cut`` of the side in all, ``left`` of it before) of the other."""
    middle = 1.0 - 2 * CROP
    found: set[tuple[float, float]] = set()
    for cut in CROPS:
        for left in (c for c in CROPS if c <= cut):
            found.add((round(left + CROP * (1 - cut), 6), round(middle * (1 - cut), 6)))
            found.add((round((CROP - left) / (1 - cut), 6), round(middle / (1 - cut), 6)))
    return np.stack([_sampler(start, width) for start, width in sorted(found)])


_SPANS = _spans()
_CENTRE = _sampler(CROP, 1.0 - 2 * CROP)


class Pixels:
    """The fingerprints a pass knows, by item id: the exact check, the fingerprint neighbours
    (cosine of the central windows at half DETAIL, mean removed) and the similar check."""

    def __init__(self, prints: dict[int, bytes]) -> None:
        self.prints = prints
        self.ids = np.array(sorted(prints), dtype=np.int64)
        self.row = {int(i): r for r, i in enumerate(self.ids)}
        grey = self._grey([prints[int(i)] for i in self.ids])
        self.centres = (_CENTRE @ grey @ _CENTRE.T).reshape(len(grey), DETAIL * DETAIL)
        half = DETAIL // 2
        coarse = self.centres.reshape(-1, half, 2, half, 2).mean(axis=(2, 4)).reshape(
            len(grey), half * half)
        coarse -= coarse.mean(axis=1, keepdims=True)
        self.keys = coarse / (np.linalg.norm(coarse, axis=1, keepdims=True) + _TINY)

    @staticmethod
    def _grey(prints: Sequence[bytes]) -> np.ndarray:
        flat = np.frombuffer(b"".join(prints), np.uint8).astype(np.float32)
        return flat.reshape(len(prints), SIDE, SIDE)

    def near(self, item_ids: Sequence[int], count: int = NEIGHBOURS) -> list[list[int]]:
        """Per item, the ``count`` items whose fingerprints look most like its own (by their
        coarse shapes; a flat one, or one without a fingerprint, has none)."""
        rows = [self.row.get(i) for i in item_ids]
        known = [r for r in rows if r is not None]
        if not known or len(self.ids) < 2:
            return [[] for _ in item_ids]
        scores = self.keys[known] @ self.keys.T
        scores[np.arange(len(known)), known] = -np.inf
        # The largest from the end: partitioning the negated scores takes twice as long.
        take = min(count, len(self.ids) - 1)
        top = np.argpartition(scores, -take, axis=1)[:, -take:]
        at = {row: k for k, row in enumerate(known)}
        return [[] if row is None else [int(self.ids[r]) for r in top[at[row]]
                                        if scores[at[row], r] > 0]
                for row in rows]

    def same(self, a: int, b: int) -> bool:
        """Whether the pair may be the same pixels (their originals decoded whole tell)."""
        return same_pixels(self.prints.get(a), self.prints.get(b), DRAFT_BOUND)

    def differences(self, item_id: int, others: Sequence[int]) -> list[float | None]:
        """Each other's difference from this item (None where either has no fingerprint): the
        least over this one's spans of the colour fit's RMS to the other's central window."""
        out: list[float | None] = [None] * len(others)
        rows = [(k, self.row[o]) for k, o in enumerate(others) if o in self.row]
        if item_id not in self.row or not rows:
            return out
        grey = self._grey([self.prints[item_id]])[0]
        views = (_SPANS @ grey)[:, None] @ _SPANS.transpose(0, 2, 1)[None]
        views = views.reshape(-1, DETAIL * DETAIL)
        targets = self.centres[[r for _, r in rows]]
        size = views.shape[1]
        v_mean = views.mean(axis=1)
        v_centred = views - v_mean[:, None]
        v_norm = (v_centred**2).sum(axis=1)
        t_mean = targets.mean(axis=1)
        t_centred = targets - t_mean[:, None]
        t_norm = (t_centred**2).sum(axis=1)
        dot = t_centred @ v_centred.T  # targets x views
        # The target as gain * view + shift, both within a colour edit's reach.
        gain = np.clip(dot / np.maximum(v_norm, _TINY), *GAIN)
        shift = np.clip(t_mean[:, None] - gain * v_mean, -SHIFT, SHIFT)
        rest = ((t_norm[:, None] - 2 * gain * dot + gain**2 * v_norm) / size
                + (t_mean[:, None] - gain * v_mean - shift) ** 2)
        error = np.sqrt(np.maximum(rest.min(axis=1), 0.0)) / (np.sqrt(t_norm / size) + FLOOR)
        for (k, _), value in zip(rows, error, strict=True):
            out[k] = float(value)
        return out


def links(ids: Sequence[int], hits: Sequence[Sequence[tuple[int, float]]],
          items: dict[int, Item], vectors: dict[int, np.ndarray], pixels: Pixels,
          limit: float = MAX_RATIO, most: float = MAX_DIFFERENCE) -> list[Link]:
    """The pairs near by their vectors (within ``limit`` of each item's background) or by their
    pixels (within ``most``), from each item's hits and fingerprint neighbours.

    An item's background is its last hit's distance when it got ``NEIGHBOURS`` of them; with
    fewer (a collection smaller than that) every other item is its background, so the farthest
    one stands for it. A pair found from both sides keeps its smaller ratio and difference.
    """
    out: dict[tuple[int, int], Link] = {}
    for item_id, row, near in zip(ids, hits, pixels.near(ids), strict=True):
        others = [(i, s) for i, s in row if i != item_id]
        if not others:
            continue
        background = max(1.0 - others[-1][1], _TINY)
        scores = dict(others)
        mine = vectors[item_id].astype(np.float32)
        for other in near:
            if other not in scores and other in vectors:
                scores[other] = float(mine @ vectors[other].astype(np.float32))
        found = list(scores)
        for other, difference in zip(found, pixels.differences(item_id, found), strict=True):
            score = scores[other]
            ratio = max(1.0 - score, 0.0) / background
            if ratio > limit and (difference is None or difference > most):
                continue
            a, b = min(item_id, other), max(item_id, other)
            known = out.get((a, b))
            if known is not None:
                ratio = min(ratio, known[3])
                if known[5] is not None:
                    difference = known[5] if difference is None else min(difference, known[5])
            same = _same_size(items.get(a), items.get(b)) and pixels.same(a, b)
            out[(a, b)] = (a, b, score, ratio, same, difference)
    return list(out.values())


def confirm(found: Iterable[Link], whole: Callable[[int], bytes | None]) -> list[Link]:
    """The links with ``same`` kept only where the two originals decoded whole (``whole``: an
    item's fingerprint so, None when it has none) match too."""
    return [(a, b, s, r, same and same_pixels(whole(a), whole(b)), d)
            for a, b, s, r, same, d in found]


def exact_candidates(found: Iterable[Link]) -> set[int]:
    """The items whose originals :func:`confirm` decodes whole."""
    return {i for a, b, _, _, same, _ in found if same for i in (a, b)}


def select(found: Iterable[Sequence[Any]], mode: Mode, ratio: float | None = None,
           difference: float | None = None) -> list[tuple[int, int, float]]:
    """The pairs that link in ``mode``: ``exact`` within its ratio (RATIO unless given) with
    the same size and pixels, ``similar`` within its difference (DIFFERENCE unless given) by
    its pixels or within its ratio by its vectors."""
    limit = RATIO[mode] if ratio is None else ratio
    most = DIFFERENCE if difference is None else difference
    if mode == "exact":
        return [(int(a), int(b), float(s)) for a, b, s, r, same, _ in found
                if r <= limit and same]
    return [(int(a), int(b), float(s)) for a, b, s, r, _, d in found
            if r <= limit or (d is not None and d <= most)]


def _same_size(a: Item | None, b: Item | None) -> bool:
    return (a is not None and b is not None and a.width is not None and a.height is not None
            and (a.width, a.height) == (b.width, b.height))


def groups(pairs: Iterable[tuple[int, int, float]]) -> list[tuple[list[int], float]]:
    """Union-find over the pairs: each group's ids (sorted) and its score, the lowest score of
    the links that hold it together; the best-scoring groups first."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    weakest: dict[int, float] = {}
    edges = list(pairs)
    for a, b, _ in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    for a, _, s in edges:
        root = find(a)
        weakest[root] = min(s, weakest.get(root, 2.0))
    members: dict[int, list[int]] = {}
    for x in parent:
        members.setdefault(find(x), []).append(x)
    out = [(sorted(m), weakest[root]) for root, m in members.items()]
    out.sort(key=lambda g: (-g[1], g[0][0]))
    return out


def answer(state: dict[str, Any], mode: Mode, ratio: float | None = None,
           difference: float | None = None) -> dict[str, Any]:
    """The body of GET /duplicates from a pass's saved state (one of another layout is none)."""
    if state.get("version") != VERSION:
        state = {}
    items = {int(k): Item(**v) for k, v in state.get("items", {}).items()}
    pairs = [p for p in select(state.get("links", []), mode, ratio, difference)
             if p[0] in items and p[1] in items]
    body = []
    for ids, score in groups(pairs):
        members = [items[i] for i in ids]
        body.append({"score": round(score, 4), "keeper": keeper(members),
                     "items": [m.as_json() for m in members]})
    return {"mode": mode, "ratio": RATIO[mode] if ratio is None else ratio,
            "difference": DIFFERENCE if difference is None else difference,
            "complete": bool(state.get("complete")),
            "progress": state.get("progress", {"done": 0, "total": 0}),
            "updated_at": state.get("updated_at"), "groups": body}


def merged(found: Iterable[Sequence[Any]]) -> list[list[Any]]:
    """One link per pair: its smaller ratio and difference (a pair both of whose items were
    new is found from each side)."""
    out: dict[tuple[int, int], list[Any]] = {}
    for a, b, score, ratio, same, difference in found:
        known = out.get((int(a), int(b)))
        if known is not None:
            ratio = min(ratio, known[3])
            if known[5] is not None:
                difference = known[5] if difference is None else min(difference, known[5])
        out[(int(a), int(b))] = [int(a), int(b), score, ratio, bool(same), difference]
    return list(out.values())


# The pass -----------------------------------------------------------------------------------


class Duplicates:
    """The saved groups of one media folder and the background pass that keeps them."""

    def __init__(self, gateway: GatewayState) -> None:
        self.gateway = gateway
        self.path = Path(gateway.media.root) / FILE_NAME
        self.prints_path = Path(gateway.media.root) / PRINTS_NAME
        self.task: asyncio.Task[None] | None = None

    def load(self) -> dict[str, Any]:
        try:
            loaded: dict[str, Any] = json.loads(self.path.read_bytes())
            return loaded
        except (OSError, ValueError):
            return {}

    def _save(self, state: dict[str, Any]) -> None:
        temp = self.path.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
        temp.write_bytes(json.dumps(state, separators=(",", ":")).encode())
        os.replace(temp, self.path)

    def _load_prints(self) -> dict[int, bytes]:
        try:
            with np.load(self.prints_path) as saved:
                return {int(i): p.tobytes() for i, p in zip(saved["ids"], saved["prints"],
                                                            strict=True)}
        except (OSError, ValueError, KeyError):
            return {}

    def _save_prints(self, prints: dict[int, bytes]) -> None:
        temp = self.prints_path.with_name(f".{PRINTS_NAME}.{os.getpid()}.tmp")
        ids = sorted(prints)
        matrix = np.frombuffer(b"".join(prints[i] for i in ids), np.uint8).reshape(
            len(ids), SIDE * SIDE)
        with temp.open("wb") as fh:
            np.savez(fh, ids=np.array(ids, dtype=np.int64), prints=matrix)
        os.replace(temp, self.prints_path)

    def _fingerprint(self, key: str, path: str, original: Any, whole: bool = False
                     ) -> bytes | None:
        """The fingerprint of an item's stored original (thumbnails.py finds it the same way),
        or None when it has none or it no longer decodes."""
        media, limits = self.gateway.media, self.gateway.encoder.limits
        found = media.find_original(key, path, original)
        try:
            data = found if isinstance(found, bytes) or found is None else found.read_bytes()
            return (None if data is None
                    else fingerprint_of(data, limits.max_pixels, whole))
        except (OSError, GlimpseError):
            return None

    def stale(self, state: dict[str, Any]) -> bool:
        return (state.get("version") != VERSION or not state.get("complete")
                or time.time() - state.get("updated_at", 0) > REFRESH_S)

    def poke(self) -> None:
        """Start a pass in the background unless one runs in this process."""
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._guarded())

    async def _guarded(self) -> None:
        try:
            async with self.gateway.media.locks.hold([_LOCK_KEY]):
                state = await asyncio.to_thread(self.load)
                if self.stale(state):  # another worker may have just written it
                    await self.run(state)
        except Exception:  # a pass that fails is retried on the next request
            log.exception("the duplicates pass failed")

    async def run(self, state: dict[str, Any]) -> None:
        """One pass: list every item (deletions drop out), fingerprint and search the new
        ones, save."""
        index = self.gateway.index
        again = state.get("complete") and state.get("version") == VERSION
        last = int(state.get("last_id", 0)) if again else 0
        found: list[Any] = list(state.get("links", [])) if last else []
        sources: dict[int, tuple[str, str, Any]] = {}
        total = int((await index.stats()).get("count", 0))
        items: dict[int, Item] = {}
        # Every item's vector (halved: only for the cosine of the pairs that only the pixels
        # find), and the new ones' whole for their search.
        vectors: dict[int, np.ndarray] = {}
        queries: dict[int, np.ndarray] = {}
        fresh: list[int] = []
        after: int | None = 0
        waiting = 1 << 62  # the smallest id this pass could not take
        while after is not None:
            page = await index.json("GET", "/v1/items", params={
                "after": after, "limit": PAGE, "vectors": "true", "encoding": "base64"})
            for record in page["items"]:
                if record["vector"] is None:
                    # No vector in the active space yet: a migration's switch waits for every
                    # item's, so this is an add racing the pass; the next pass takes it.
                    waiting = min(waiting, int(record["id"]))
                    continue
                item = Item.of(record)
                items[item.id] = item
                vector = _vector(record["vector"])
                vectors[item.id] = vector.astype(np.float16)
                key = record.get("key")
                if isinstance(key, str):
                    meta = record.get("meta") or {}
                    sources[item.id] = (key, item.path, meta.get("original"))
                if item.id > last:
                    fresh.append(item.id)
                    queries[item.id] = vector
            after = page["next_after"]
            if last == 0:  # the first pass shows its progress
                progress = {"done": 0, "total": 2 * max(total, len(items))}
                await asyncio.to_thread(self._save, {**state, "complete": False,
                                                     "progress": progress})
        # The fingerprints are read (and kept) only when there is something new to compare.
        prints = await asyncio.to_thread(self._load_prints) if last and fresh else {}
        prints = {i: p for i, p in prints.items() if i in items}
        # Each new item's original is decoded once; the progress counts these, then searches.
        steps = 2 * len(fresh)
        for done, item_id in enumerate(fresh, 1):
            if item_id in sources:
                made = await anyio.to_thread.run_sync(
                    self._fingerprint, *sources[item_id], limiter=self.gateway.decode_limiter)
                if made is not None:
                    prints[item_id] = made
            if last == 0 and done % (10 * BATCH) == 0:
                await asyncio.to_thread(self._save, {
                    **state, "complete": False, "progress": {"done": done, "total": steps}})
        pixels = await asyncio.to_thread(Pixels, prints)
        new: list[Link] = []
        for start in range(0, len(fresh), BATCH):
            ids = fresh[start : start + BATCH]
            answer_ = await index.json("POST", "/v1/search", json={
                "vectors": [encode_vector(queries[i]) for i in ids],
                "k": NEIGHBOURS + 1})
            hits = [[(int(h["id"]), float(h["score"])) for h in row]
                    for row in answer_["results"]]
            new.extend(await asyncio.to_thread(links, ids, hits, items, vectors, pixels))
            if last == 0 and (start // BATCH) % 10 == 9:
                done = len(fresh) + start + len(ids)
                await asyncio.to_thread(self._save, {
                    **state, "complete": False, "progress": {"done": done, "total": steps}})
        # The exact check decodes whole only the originals of the pairs it may take.
        whole: dict[int, bytes | None] = {}
        for item_id in sorted(exact_candidates(new)):
            whole[item_id] = None if item_id not in sources else await anyio.to_thread.run_sync(
                partial(self._fingerprint, *sources[item_id], whole=True),
                limiter=self.gateway.decode_limiter)
        found.extend(confirm(new, whole.get))
        kept = [p for p in merged(found) if p[0] in items and p[1] in items]
        if fresh:
            await asyncio.to_thread(self._save_prints, prints)
        await asyncio.to_thread(self._save, {
            "version": VERSION, "complete": True, "updated_at": time.time(),
            "last_id": min(max(items, default=0), waiting - 1), "progress": {"done": len(items),
                                                           "total": len(items)},
            "items": {str(i): vars(it) for i, it in items.items()}, "links": kept})


def _vector(value: Any) -> np.ndarray:
    return np.asarray(decode_vectors([value], None, what="vector")[0], dtype=np.float32)
