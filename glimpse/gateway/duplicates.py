"""Duplicate groups (GET /duplicates): a batched self-search over the index, in the background.

Each item's vector is searched once with ``NEIGHBOURS`` hits; a pair is linked when the two are
nearer than the item's own background puts anything (the scale-free rule below), and linked
items are grouped by union-find. ``exact`` also asks the same displayed size (meta width and
height) and the same pixels: both originals, decoded whole and upright, at ``SIDE`` x ``SIDE``
greyscale, differ by at most ``PIXEL_BOUND`` grey levels on average (the same picture in other
bytes: a lossless copy, metadata added or stripped; any recompression, even at JPEG quality
95, or a colour edit is ``similar``). A pass reads the items a page at a time from the
index (GET /v1/items) and searches only the items added since the last pass; deleted items
drop out of their groups. A request starts a pass when the saved groups are older than
``REFRESH_S`` (and answers the saved ones). One process per media folder computes (the
per-key lock of media.py, on a key of its own); every worker serves the JSON file it writes
(temp + rename).

The linking rule. A flat cosine threshold is a per-model constant (every model has its own
score scale). Instead each item's hits give its scale: ``d_k``, the distance (``1 - score``) to
its ``NEIGHBOURS``-th hit, is where its unrelated background lies, and a hit at distance
``d <= RATIO[mode] * d_k`` is a copy. bench/bench_duplicates.py measured this rule, flat
thresholds and the relevance cutoff (relevance.py) per item on transformed copies of the sample
photos with two models; the ratios are the ones it chose. The pass keeps every pair up to
``MAX_RATIO``, so a request overrides the mode's ratio with ``?ratio=`` at no cost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
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

# Hits per item of the self-search: copies of one picture beyond this many are still grouped
# through each other (union-find), and the last hit gives the item's background scale.
NEIGHBOURS = 20
# A hit nearer than this fraction of the item's background distance is a copy (measured).
RATIO: dict[Mode, float] = {"exact": 0.005, "similar": 0.01}
# The pass keeps the pairs up to this ratio, so a request may ask for another one (``ratio``).
MAX_RATIO = 0.5
# The exact mode's pixel check: both originals at SIDE x SIDE greyscale, and the largest mean
# absolute difference (grey levels) that is still the same picture. bench_duplicates.py measured
# 0 for lossless copies and from 0.046 up for recompressions (q30-95) and colour edits.
SIDE = 32
PIXEL_BOUND = 0.02
# Only pairs this near (ten times the exact ratio) are decoded for the check: the bench's exact
# copies all lie within RATIO["exact"], and each check decodes two originals whole.
PIXEL_RATIO = 0.05
# Items read per page and searched per request.
PAGE = 500
BATCH = 64
# A pass starts when the file is older than this and someone asks.
REFRESH_S = 30.0
FILE_NAME = "duplicates.json"
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


Link = tuple[int, int, float, float, bool]  # smaller id, larger id, score, ratio, same size


def links(ids: Sequence[int], hits: Sequence[Sequence[tuple[int, float]]],
          items: dict[int, Item], limit: float = MAX_RATIO) -> list[Link]:
    """The pairs within ``limit`` of each item's background, from each item's hits: (smaller
    id, larger id, score, the pair's distance over the background, same displayed size).

    An item's background is its last hit's distance when it got ``NEIGHBOURS`` of them; with
    fewer (a collection smaller than that) every other item is its background, so the farthest
    one stands for it. A pair found from both sides keeps its smaller ratio.
    """
    out: dict[tuple[int, int], Link] = {}
    for item_id, row in zip(ids, hits, strict=True):
        others = [(i, s) for i, s in row if i != item_id]
        if not others:
            continue
        background = max(1.0 - others[-1][1], _TINY)
        for other, score in others:
            ratio = max(1.0 - score, 0.0) / background
            if ratio > limit:
                break
            a, b = min(item_id, other), max(item_id, other)
            known = out.get((a, b))
            if known is None or ratio < known[3]:
                same = _same_size(items.get(item_id), items.get(other))
                out[(a, b)] = (a, b, score, ratio, same)
    return list(out.values())


def select(found: Iterable[Sequence[Any]], mode: Mode, ratio: float | None = None
           ) -> list[tuple[int, int, float]]:
    """The pairs that link in ``mode``: within its ratio (RATIO unless given), and of the same
    displayed size for ``exact``."""
    limit = RATIO[mode] if ratio is None else ratio
    return [(int(a), int(b), float(s)) for a, b, s, r, same in found
            if r <= limit and (same or mode == "similar")]


def fingerprint(img: Image.Image) -> bytes:
    """An upright decoded image as ``SIDE`` x ``SIDE`` greyscale bytes."""
    return to_rgb(img).convert("L").resize((SIDE, SIDE), Image.Resampling.BOX).tobytes()


def same_pixels(a: bytes | None, b: bytes | None) -> bool:
    """Two fingerprints of the same picture (within ``PIXEL_BOUND``); an unreadable one never is."""
    if a is None or b is None or len(a) != len(b):
        return False
    diff = np.frombuffer(a, np.uint8).astype(np.int16) - np.frombuffer(b, np.uint8)
    return float(np.abs(diff).mean()) <= PIXEL_BOUND


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


def answer(state: dict[str, Any], mode: Mode, ratio: float | None = None) -> dict[str, Any]:
    """The body of GET /duplicates from a pass's saved state."""
    items = {int(k): Item(**v) for k, v in state.get("items", {}).items()}
    pairs = [p for p in select(state.get("links", []), mode, ratio)
             if p[0] in items and p[1] in items]
    body = []
    for ids, score in groups(pairs):
        members = [items[i] for i in ids]
        body.append({"score": round(score, 4), "keeper": keeper(members),
                     "items": [m.as_json() for m in members]})
    return {"mode": mode, "ratio": RATIO[mode] if ratio is None else ratio,
            "complete": bool(state.get("complete")),
            "progress": state.get("progress", {"done": 0, "total": 0}),
            "updated_at": state.get("updated_at"), "groups": body}


# The pass -----------------------------------------------------------------------------------


class Duplicates:
    """The saved groups of one media folder and the background pass that keeps them."""

    def __init__(self, gateway: GatewayState) -> None:
        self.gateway = gateway
        self.path = Path(gateway.media.root) / FILE_NAME
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

    def _fingerprint(self, key: str, path: str, original: Any) -> bytes | None:
        """The fingerprint of an item's stored original (thumbnails.py finds it the same way),
        or None when it has none or it no longer decodes."""
        media, limits = self.gateway.media, self.gateway.encoder.limits
        found = media.find_original(key, path, original)
        try:
            data = found if isinstance(found, bytes) or found is None else found.read_bytes()
            if data is None:
                return None
            img = open_checked(data, ImageLimits(None, limits.max_pixels, None))
            # Decoded whole: a JPEG's reduced (DCT-scaled) decode differs from a lossless
            # copy's by more than a recompression does.
            return fingerprint(load_upright(img, img.size))
        except (OSError, GlimpseError):
            return None

    async def _confirm(self, found: list[Any], sources: dict[int, tuple[str, str, Any]],
                       prints: dict[str, str | None]) -> list[Any]:
        """The links with ``same`` kept only where the two originals' pixels match too; each
        item's fingerprint is made once (``prints``, saved with the links)."""
        out = []
        for a, b, score, ratio, same in found:
            same = same and ratio <= PIXEL_RATIO
            if same:
                pair = []
                for i in (int(a), int(b)):
                    if str(i) not in prints and i in sources:
                        made = await anyio.to_thread.run_sync(
                            self._fingerprint, *sources[i],
                            limiter=self.gateway.decode_limiter)
                        prints[str(i)] = None if made is None else made.hex()
                    known = prints.get(str(i))
                    pair.append(None if known is None else bytes.fromhex(known))
                same = same_pixels(*pair)
            out.append([a, b, score, ratio, same])
        return out

    def stale(self, state: dict[str, Any]) -> bool:
        return not state.get("complete") or time.time() - state.get("updated_at", 0) > REFRESH_S

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
        """One pass: list every item (deletions drop out), search the new ones, save."""
        index = self.gateway.index
        last = int(state.get("last_id", 0)) if state.get("complete") else 0
        found: list[Any] = list(state.get("links", [])) if last else []
        prints: dict[str, str | None] = dict(state.get("prints", {})) if last else {}
        sources: dict[int, tuple[str, str, Any]] = {}
        total = int((await index.stats()).get("count", 0))
        items: dict[int, Item] = {}
        fresh: list[tuple[int, np.ndarray]] = []
        after: int | None = 0
        while after is not None:
            page = await index.json("GET", "/v1/items", params={
                "after": after, "limit": PAGE, "vectors": "true", "encoding": "base64"})
            for record in page["items"]:
                item = Item.of(record)
                items[item.id] = item
                key = record.get("key")
                if isinstance(key, str):
                    meta = record.get("meta") or {}
                    sources[item.id] = (key, item.path, meta.get("original"))
                if item.id > last:
                    fresh.append((item.id, _vector(record["vector"])))
            after = page["next_after"]
            if last == 0:  # the first pass shows its progress
                progress = {"done": 0, "total": max(total, len(items))}
                await asyncio.to_thread(self._save, {**state, "complete": False,
                                                     "progress": progress})
        done = 0
        for start in range(0, len(fresh), BATCH):
            batch = fresh[start : start + BATCH]
            answer_ = await index.json("POST", "/v1/search", json={
                "vectors": [encode_vector(v) for _, v in batch], "k": NEIGHBOURS + 1})
            ids = [i for i, _ in batch]
            hits = [[(int(h["id"]), float(h["score"])) for h in row]
                    for row in answer_["results"]]
            found.extend(await self._confirm(links(ids, hits, items), sources, prints))
            done += len(batch)
            if last == 0 and (start // BATCH) % 10 == 9:
                await asyncio.to_thread(self._save, {
                    **state, "complete": False,
                    "progress": {"done": done, "total": len(fresh)}})
        kept = [p for p in found if int(p[0]) in items and int(p[1]) in items]
        await asyncio.to_thread(self._save, {
            "complete": True, "updated_at": time.time(),
            "last_id": max(items, default=0), "progress": {"done": len(items),
                                                           "total": len(items)},
            "items": {str(i): vars(it) for i, it in items.items()}, "links": kept,
            "prints": {k: v for k, v in prints.items() if int(k) in items}})


def _vector(value: Any) -> np.ndarray:
    return np.asarray(decode_vectors([value], None, what="vector")[0], dtype=np.float32)
