"""Searches narrowed by ``filters`` (glimpse/contracts/filters.py), in both backends.

One meaning, written three ways: :func:`matches` (a Python predicate over one item's path and
meta: the reference the others are tested against), :func:`matching_mask` (numpy over the
Faiss backend's in-memory columns of its store, filter_table.py) and :func:`milvus_expr` (a
boolean expression over Milvus's ``path`` and JSON ``meta``; where Milvus 2.3 cannot say it
exactly, ``near``'s circle or a folder holding a wildcard, it says more and :func:`matches`
checks the hits).

The Faiss backend searches with the filter, not after it (:func:`search`): the matching ids
become a bitmap ``IDSelector``, kept by the index until its table or the filter's items change
(:class:`Selection`), so every hit answered matches and k hits come back whenever k items
match. It chooses by the filter's share of the live items:

- up to ``EXACT_ROWS`` matching items that are under ``GATHER_SHARE`` of the table: their
  float16 rows gathered and scored exactly;
- at most one matching row per ``CODES_PER_ROW`` list entries the IVF search would visit (or
  an exact or graph index): Faiss's exact scan of the table's rows past the selector (both
  exact: recall 1);
- a broader one: the IVF lists with the selector, ``nprobe`` widened by ``1 / share``, then
  the usual re-rank.

One file, over 400 lines: the three writings of one meaning stay side by side, so a change to
one is seen next to the others (tests/unit/index/test_filters.py checks they agree).
"""

from __future__ import annotations

import math
import posixpath
import weakref
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from glimpse.contracts.filters import SearchFilters
from glimpse.index.filter_table import FilterTable, table_of

if TYPE_CHECKING:
    from glimpse.index.index import VectorIndex
    from glimpse.index.live import LiveIndex
    from glimpse.index.store import Store

EARTH_RADIUS_KM = 6371.0088
# One row scored by Faiss's exact scan past the selector costs about what this many list
# entries cost the IVF search with its re-rank (IVF64,PQ48x4fs on 19k x 384, all lists: the
# two met at about 500 matching rows with other searches in between, as a service runs them;
# at 1800 when the same rows were scanned over and over, in cache).
CODES_PER_ROW = 40
# Up to this many matching items, gathering their rows costs less than any scan.
EXACT_ROWS = 2_000
# ... and only while they are under this share of the table: a gathered row's float16 decode
# costs what Faiss's scan past the selector spends on some 300 rows it skips, so at 5 % of 19k
# items the gather took 3.7x an unfiltered search and the scan under 1.5x.
GATHER_SHARE = 1 / 300
# Selections an index keeps; past this many, all are dropped (a few distinct filters are in use).
_SELECTIONS = 16
_KM_PER_DEGREE = math.pi * EARTH_RADIUS_KM / 180.0
_F32 = np.float32


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (math.sin((p2 - p1) / 2) ** 2
         + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2)
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def near_box(f: SearchFilters) -> tuple[float, float, float, float] | None:
    """(south, west, north, east) around ``f.near``'s circle; west > east crosses the 180th
    meridian; west -180 and east 180 when the circle holds a pole or spans every longitude."""
    if f.near is None:
        return None
    lat, lon, r = f.near.lat, f.near.lon, f.near.radius_km
    dlat = r / _KM_PER_DEGREE
    south, north = max(-90.0, lat - dlat), min(90.0, lat + dlat)
    if south <= -90.0 or north >= 90.0:
        return south, -180.0, north, 180.0
    # The widest longitude span of the circle (at its tangent latitude).
    ratio = math.sin(r / EARTH_RADIUS_KM) / math.cos(math.radians(lat))
    if ratio >= 1.0:
        return south, -180.0, north, 180.0
    dlon = math.degrees(math.asin(ratio))
    west, east = lon - dlon, lon + dlon
    return south, (west + 540.0) % 360.0 - 180.0, north, (east + 540.0) % 360.0 - 180.0


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _in_lon(lon: float, west: float, east: float) -> bool:
    return west <= lon <= east if west <= east else lon >= west or lon <= east


def matches(f: SearchFilters, path: str, meta: dict[str, Any]) -> bool:
    """Whether an item at ``path`` with ``meta`` passes ``f`` (the reference meaning of every
    field). The folder is read from the path, which a library's move or rename updates."""
    after, before = f.taken_bounds()
    taken = _number(meta.get("taken_ts"))
    if (after is not None or before is not None) and taken is None:
        return False
    if taken is not None and ((after is not None and taken < after)
                              or (before is not None and taken >= before)):
        return False
    if f.folder is not None and not any(path.startswith(p + "/") for p in f.folder):
        return False
    camera = meta.get("camera")
    if f.camera is not None and not (
            isinstance(camera, list) and all(w in camera for w in f.camera.split())):
        return False
    words = meta.get("keywords")
    if f.keyword is not None and not (
            isinstance(words, list) and any(w in words for w in f.keyword)):
        return False
    lat, lon = _number(meta.get("lat")), _number(meta.get("lon"))
    located = lat is not None and lon is not None
    if f.has_location is not None and located != f.has_location:
        return False
    if f.bbox is not None or f.near is not None:
        if lat is None or lon is None:
            return False
        b = f.bbox
        if b is not None and not (b.south <= lat <= b.north and _in_lon(lon, b.west, b.east)):
            return False
        n = f.near
        if n is not None and distance_km(n.lat, n.lon, lat, lon) > n.radius_km:
            return False
    if f.type is not None and meta.get("file_type") not in f.type:
        return False
    width = _number(meta.get("width"))
    return f.min_width is None or (width is not None and width >= f.min_width)


# -- the Faiss backend: a mask over the store's items ----------------------------------------


def _in_lon_array(lon: np.ndarray, west: float, east: float) -> np.ndarray:
    if west <= east:
        return (lon >= west) & (lon <= east)
    return (lon >= west) | (lon <= east)


def _distance_km_array(lat: float, lon: float, lats: np.ndarray, lons: np.ndarray
                       ) -> np.ndarray:
    p1, p2 = math.radians(lat), np.radians(lats)
    a = (np.sin((p2 - p1) / 2) ** 2
         + math.cos(p1) * np.cos(p2) * np.sin(np.radians(lons - lon) / 2) ** 2)
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.minimum(1.0, np.sqrt(a)))


def _mask(t: FilterTable, f: SearchFilters) -> np.ndarray:
    """Items of ``t`` passing ``f``, by id (caller holds ``t.lock``, refreshed)."""
    m = t.present.copy()
    fl, codes, values = t.floats, t.codes, t.values

    def coded(name: str, test: Callable[[Any], bool]) -> None:
        nonlocal m
        # A lookup table by code (its last entry: no value, code -1): one gather per item,
        # where np.isin compared every item with each passing code.
        passing = np.zeros(len(values[name].values) + 1, dtype=bool)
        passing[values[name].passing(test)] = True
        m &= passing[codes[name]]

    after, before = f.taken_bounds()
    with np.errstate(invalid="ignore"):  # NaN (no value) compares false: no match
        if after is not None:
            m &= fl["taken_ts"] >= after
        if before is not None:
            m &= fl["taken_ts"] < before
        if f.min_width is not None:
            m &= fl["width"] >= f.min_width
        lat, lon = fl["lat"], fl["lon"]
        if f.has_location is not None:
            located = ~(np.isnan(lat) | np.isnan(lon))
            m &= located if f.has_location else ~located
        boxes = [] if f.bbox is None else [(f.bbox.south, f.bbox.west, f.bbox.north,
                                            f.bbox.east)]
        box = near_box(f)
        for south, west, north, east in boxes + ([box] if box is not None else []):
            m &= (lat >= south) & (lat <= north) & _in_lon_array(lon, west, east)
    if f.folder is not None:
        prefixes = [p + "/" for p in f.folder]
        coded("folder", lambda d: any((d + "/").startswith(p) for p in prefixes))
    if f.camera is not None:
        words = f.camera.split()
        coded("camera", lambda have: all(w in have for w in words))
    if f.keyword is not None:
        keywords = f.keyword
        coded("keywords", lambda have: any(w in have for w in keywords))
    if f.type is not None:
        types = f.type
        coded("file_type", lambda v: v in types)
    if f.near is not None:
        n = f.near
        inside = np.flatnonzero(m)
        far = _distance_km_array(n.lat, n.lon, lat[inside], lon[inside]) > n.radius_km
        m[inside[far]] = False
    return m


def _wanted(store: Store, f: SearchFilters) -> tuple[tuple[str, int, int], np.ndarray]:
    """(a key naming ``f`` over the store's current rows, the mask of ``f`` by id)."""
    t = table_of(store.path)
    name = f.model_dump_json()
    with t.lock:
        t.refresh()
        return (name, id(t), t.generation), t.mask(name, lambda: _mask(t, f))


def matching_mask(store: Store, f: SearchFilters) -> np.ndarray:
    """Items of ``store`` passing ``f``, as a read-only mask by id (deleted ones false)."""
    return _wanted(store, f)[1]


def matching_ids(store: Store, f: SearchFilters) -> np.ndarray:
    """Ids of the live items of ``store`` that pass ``f``, ascending."""
    return np.flatnonzero(matching_mask(store, f)).astype(np.int64)


@dataclass(frozen=True)
class Selection:
    """The items of an index's table that pass a filter: what a filtered search reads. The
    index keeps it (``VectorIndex.selections``) until its table changes."""

    count: int
    capacity: int
    bitmap: np.ndarray  # the mask by id, packed little-endian: the selector reads it
    selector: Any  # faiss.IDSelectorBitmap over ``bitmap``
    few: np.ndarray | None  # the ids, while at most EXACT_ROWS
    # Faiss's search parameters past the selector by (breadth, rerank), with the live index
    # they were made for (weakly: a swapped-out index is not kept): setting a SWIG parameter
    # object's fields costs more per search than the lists it adds.
    _params: dict[tuple[int, int], tuple[Any, ...]] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, mask: np.ndarray) -> Selection:
        count = int(np.count_nonzero(mask))
        bitmap = np.packbits(mask, bitorder="little")
        return cls(count, len(mask), bitmap,
                   faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap)),
                   np.flatnonzero(mask) if count <= EXACT_ROWS else None)

    def mask(self) -> np.ndarray:
        return np.unpackbits(self.bitmap, count=self.capacity, bitorder="little").view(bool)

    def ids(self) -> np.ndarray:
        return self.few if self.few is not None else np.flatnonzero(self.mask())

    def params(self, live: LiveIndex, breadth: int, rerank: int) -> Any:
        """Parameters of a search past the selector: Faiss's exact scan (``breadth`` 0), or
        ``breadth`` IVF lists of ``live`` re-ranked by IndexRefine when ``rerank`` > 0."""
        found = self._params.get((breadth, rerank))
        if found is not None and found[0]() is live:
            return found[1]
        inner: Any = faiss.SearchParametersIVF() if breadth else faiss.SearchParameters()
        inner.sel = self.selector
        outer = inner
        if breadth:
            inner.nprobe = breadth
            base = live.search_params(breadth)  # the cached one carries the quantizer's
            if base.quantizer_params is not None:
                inner.quantizer_params = base.quantizer_params
            if rerank > 0:
                outer = faiss.IndexRefineSearchParameters()
                outer.k_factor = float(rerank)
                outer.base_index_params = inner
        self._params[(breadth, rerank)] = (weakref.ref(live), outer, inner)  # outer -> inner
        return outer

    def without(self, exclude: Sequence[int]) -> Selection:
        skip = np.asarray(list(exclude), dtype=np.int64)
        skip = skip[(skip >= 0) & (skip < self.capacity)]
        if len(skip) == 0:
            return self
        mask = self.mask()
        mask[skip] = False
        return Selection.of(mask)


def _selection(index: VectorIndex, key: Hashable, wanted: np.ndarray) -> Selection:
    """The live items of ``index`` in ``wanted``, kept under ``key`` (caller holds the read
    lock: a write, which drops them all, waits)."""
    found = index.selections.get(key)
    if found is None:
        table = index.table
        mask = np.zeros(table.capacity, dtype=bool)
        common = min(len(wanted), table.capacity)
        mask[:common] = wanted[:common]
        mask &= table.live
        if len(index.selections) >= _SELECTIONS:
            index.selections.clear()
        found = index.selections[key] = Selection.of(mask)
    return found


def search(
    store: Store, index: VectorIndex, queries: np.ndarray, k: int, f: SearchFilters, *,
    nprobe: int | None = None, exact: bool = False, exclude: Sequence[int] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` (scores, ids) per unit query among the live items passing ``f``, excluded ids
    left out; id -1 where fewer match. The path is chosen as the module docstring says."""
    queries = np.ascontiguousarray(queries, dtype=_F32)
    key, wanted = _wanted(store, f)
    index.limit_threads(len(queries))
    with index.rw.read():
        table, live = index.table, index.live
        chosen = _selection(index, key, wanted)
        if exclude:
            chosen = chosen.without(exclude)
        count = chosen.count
        if count == 0:
            return np.full((len(queries), 0), -np.inf, _F32), np.full((len(queries), 0), -1)
        share = count / max(1, table.count)
        scan = table.scan_index
        if scan is None:  # low-memory setting: the matching rows read from the store
            return _scan_store(index, store, queries, k, chosen.ids())
        if count <= EXACT_ROWS and share <= GATHER_SHARE and table.vectors is not None:
            return _scan_rows(index, queries, k, chosen.ids())
        breadth = 0 if live.nlist is None else _breadth(index, share, nprobe)
        visited = table.count * breadth / (live.nlist or 1)
        if exact or live.ivf is None or count * CODES_PER_ROW <= visited:
            return scan.search(queries, min(k, count), params=chosen.params(live, 0, 0))
        return _ivf(index, queries, k, chosen, breadth)


def _breadth(index: VectorIndex, share: float, nprobe: int | None) -> int:
    """The IVF lists a search of ``share`` of the items visits: nprobe widened by 1 / share,
    so the matching candidates seen are about those of an unfiltered search (1 / sqrt(share)
    lost recall: 0.87 at 5 % in tests/unit/index/test_filters.py)."""
    nlist = index.live.nlist or 1
    return min(nlist, math.ceil(index.nprobe_for(index.live, nprobe) / share))


def _ivf(index: VectorIndex, queries: np.ndarray, k: int, chosen: Selection, breadth: int
         ) -> tuple[np.ndarray, np.ndarray]:
    """``breadth`` IVF lists searched past ``chosen``'s selector, re-ranked with the table's
    rows as an unfiltered search is, in the same direct Faiss call (caller holds the read
    lock)."""
    live, table = index.live, index.table
    assert live.nlist is not None and table.scan_index is not None
    rerank = index.defaults.rerank
    params = chosen.params(live, breadth, rerank)
    if rerank <= 0:
        return live.index.search(queries, k, params=params)
    refine, _ = live.refine(table.scan_index, breadth, rerank)
    n = len(queries)
    scores = np.empty((n, k), dtype=_F32)
    ids = np.empty((n, k), dtype=np.int64)
    refine.search_c(n, faiss.swig_ptr(queries), k, faiss.swig_ptr(scores), faiss.swig_ptr(ids),
                    params)
    if n and ids[:, -1].min() < 0:  # fewer hits than k: Faiss pads each row's end with -1
        scores[ids < 0] = -np.inf
    return scores, ids


def _top(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    kk = min(k, len(ids))
    part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
    order = np.take_along_axis(-scores, part, axis=1).argsort(axis=1, kind="stable")
    best = np.take_along_axis(part, order, axis=1)
    return np.take_along_axis(scores, best, axis=1).astype(_F32), ids[best]


def _scan_rows(index: VectorIndex, queries: np.ndarray, k: int, ids: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Exact scores of the rows ``ids`` of the table, gathered (caller holds the read lock):
    for a few thousand rows, faster than Faiss's scan of every row past the selector."""
    assert index.table.vectors is not None
    return _top(queries @ index.widen(index.table.vectors[ids]).T, ids, k)


def _scan_store(index: VectorIndex, store: Store, queries: np.ndarray, k: int,
                ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact scores of the matching rows read from the store (no vectors in memory)."""
    found = store.vectors_of(ids.tolist())
    if not found:  # deleted meanwhile
        return np.full((len(queries), 0), -np.inf, _F32), np.full((len(queries), 0), -1)
    have = np.asarray(sorted(found), dtype=np.int64)
    return _top(queries @ index.widen(np.stack([found[int(i)] for i in have])).T, have, k)


# -- Milvus -----------------------------------------------------------------------------------


def _m(field: str) -> str:
    return f'meta["{field}"]'


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _prefix_pattern(prefix: str) -> str:
    """A Milvus 2.3 ``like`` pattern of the strings starting with ``prefix``. It has no escape
    for '%' and '_': a prefix holding one is cut before it (a wider match; see
    :func:`milvus_is_wider`)."""
    cut = min((i for i in (prefix.find("%"), prefix.find("_")) if i >= 0), default=len(prefix))
    return _quote(prefix[:cut] + "%")


def milvus_is_wider(f: SearchFilters) -> bool:
    """Whether :func:`milvus_expr` keeps more than ``f`` does (``near``'s box, a folder
    holding a wildcard), so that :func:`matches` must check what Milvus answers."""
    return f.near is not None or any("%" in p or "_" in p for p in f.folder or ())


def _milvus_box(box: tuple[float, float, float, float], out: list[str]) -> None:
    south, west, north, east = box
    out.append(f"{_m('lat')} >= {south!r} and {_m('lat')} <= {north!r}")
    glue = "and" if west <= east else "or"
    out.append(f"({_m('lon')} >= {west!r} {glue} {_m('lon')} <= {east!r})")


def milvus_expr(f: SearchFilters) -> str:
    """A Milvus boolean expression over ``path`` and the ``meta`` JSON field: the items that
    pass ``f``, or more where :func:`milvus_is_wider` says so."""
    out: list[str] = []
    after, before = f.taken_bounds()
    if after is not None:
        out.append(f"{_m('taken_ts')} >= {after!r}")
    if before is not None:
        out.append(f"{_m('taken_ts')} < {before!r}")
    if f.folder is not None:
        out.append("(" + " or ".join(f"path like {_prefix_pattern(p + '/')}"
                                     for p in f.folder) + ")")
    if f.camera is not None:
        words = ", ".join(map(_quote, f.camera.split()))
        out.append(f"json_contains_all({_m('camera')}, [{words}])")
    if f.keyword is not None:
        out.append(f"json_contains_any({_m('keywords')}, [{', '.join(map(_quote, f.keyword))}])")
    if f.has_location is not None:
        located = f"{_m('lat')} >= -90.0"  # a missing key compares false
        out.append(located if f.has_location else f"not ({located})")
    if f.bbox is not None:
        _milvus_box((f.bbox.south, f.bbox.west, f.bbox.north, f.bbox.east), out)
    box = near_box(f)
    if box is not None:
        _milvus_box(box, out)
    if f.type is not None:
        out.append(f"{_m('file_type')} in [{', '.join(map(_quote, f.type))}]")
    if f.min_width is not None:
        out.append(f"{_m('width')} >= {f.min_width}")
    return " and ".join(out)


# -- facets -----------------------------------------------------------------------------------

# Values of each list in GET /facets (every year and month is given).
FACET_TOP = 50
# taken_ts beyond this many seconds from 1970 names no date numpy can show.
_TS_LIMIT = 1e11


def _ranked(counts: Counter[str], top: int | None = FACET_TOP) -> list[dict[str, Any]]:
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [{"value": v, "count": n} for v, n in ranked[:top] if n > 0]


def facets_of(months: Counter[str], folders: Counter[str], cameras: Counter[str],
              types: Counter[str], with_location: int, total: int) -> dict[str, Any]:
    """The Facets body from per-value counts (folders: of the items' own folders, each then
    counted in its ancestors too)."""
    nested: Counter[str] = Counter()
    for folder, n in folders.items():
        parts = folder.split("/") if folder else []
        for depth in range(1, len(parts) + 1):
            nested["/".join(parts[:depth])] += n
    years: Counter[str] = Counter()
    for month, n in months.items():
        years[month[:4]] += n
    return {
        "total": total, "with_location": with_location,
        "years": [{"value": y, "count": n} for y, n in sorted(years.items(), reverse=True)],
        "months": [{"value": m, "count": n} for m, n in sorted(months.items(), reverse=True)],
        "folders": _ranked(nested), "cameras": _ranked(cameras), "types": _ranked(types),
    }


def _month(ts: float) -> str:
    return str(np.datetime64(int(ts), "s").astype("datetime64[M]"))


def facets(store: Store) -> dict[str, Any]:
    """The Facets body of the live items of ``store`` (Faiss backend), from its columns."""
    t = table_of(store.path)
    with t.lock:
        t.refresh()
        live = t.present
        taken = t.floats["taken_ts"][live]
        taken = taken[np.abs(taken) < _TS_LIMIT]  # NaN (none) and nonsense left out
        months = Counter(dict(zip(*np.unique(
            taken.astype("datetime64[s]").astype("datetime64[M]").astype(str),
            return_counts=True), strict=True)))
        counted: dict[str, Counter[str]] = {}
        for name in ("folder", "camera", "file_type"):
            codes = t.codes[name][live]
            per_code = np.bincount(codes[codes >= 0], minlength=len(t.values[name].values))
            values = t.values[name].values
            counted[name] = Counter({(" ".join(v) if isinstance(v, tuple) else v): int(n)
                                     for v, n in zip(values, per_code.tolist(), strict=True)
                                     if n})
        located = int((~(np.isnan(t.floats["lat"][live]) | np.isnan(t.floats["lon"][live])))
                      .sum())
        return facets_of(Counter({str(m): int(n) for m, n in months.items()}),
                         counted["folder"], counted["camera"], counted["file_type"], located,
                         int(live.sum()))


def facets_of_rows(rows: Iterable[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The Facets body of (path, meta) rows (Milvus backend: one pass over every item)."""
    months: Counter[str] = Counter()
    folders: Counter[str] = Counter()
    cameras: Counter[str] = Counter()
    types: Counter[str] = Counter()
    located = total = 0
    for path, meta in rows:
        total += 1
        folders[posixpath.dirname(path)] += 1
        taken = _number(meta.get("taken_ts"))
        if taken is not None and abs(taken) < _TS_LIMIT:
            months[_month(taken)] += 1
        camera = meta.get("camera")
        if isinstance(camera, list) and any(isinstance(w, str) for w in camera):
            cameras[" ".join(dict.fromkeys(w for w in camera if isinstance(w, str)))] += 1
        if isinstance(meta.get("file_type"), str):
            types[meta["file_type"]] += 1
        located += _number(meta.get("lat")) is not None and _number(meta.get("lon")) is not None
    return facets_of(months, folders, cameras, types, located, total)
