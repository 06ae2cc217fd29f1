"""The Faiss side of the index service: the live index, its search with re-ranking, and its
background (re)training with catch-up and an atomic swap.

The live index is exact (``IndexIDMap(IndexFlatIP)``) while the collection is small. Past
``INDEX_TRAIN_THRESHOLD`` live items an IVF-PQ index is trained in a background thread on the
stored vectors, filled with every row up to a sequence number, caught up with the rows written
meanwhile (read back from the store), and swapped in under the write lock; searches go on
against the old index the whole time. IVF-PQ candidates are re-scored with the stored float16
vectors (``rerank`` candidates per wanted hit), because PQ scores alone lose a good part of the
true top 10 on real embeddings.

Locking: ``rw`` is shared by searches and taken alone by add, remove and swap. ``writer`` (owned
by the service) serialises writes to the store and the index, so the index always holds exactly
the committed rows up to ``applied_seq``.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from glimpse.index.factory import AUTO, parse_factory
from glimpse.index.locks import RWLock
from glimpse.index.store import Changes, Store
from glimpse.index.structure import SelectionConfig, select_structure
from glimpse.index.vectors import VectorTable

log = logging.getLogger("glimpse.index")

_F32 = np.float32
# Below this many items an IVF-PQ index is not worth training (the automatic rule stays flat).
MIN_TRAIN = 1000
# Candidates scored per re-rank block: bounds the float32 scratch to about 4 MB per 512-d query.
_RERANK_BLOCK = 1 << 21
# Searches of fewer queries run Faiss on one OpenMP thread (see VectorIndex.limit_threads).
_SMALL_SEARCH = 8
# OpenMP's default team size, read at import (in the main thread, before any override).
_OMP_DEFAULT = faiss.omp_get_max_threads()
_TABLE_CHUNK = 16_384  # rows copied per step from a vectors file


# -- parameter rules (see docs/index.md for the measurements behind them) -----------------------


def auto_nlist(n: int) -> int:
    """IVF lists: the largest power of two ≤ min(8·√n, n/39).

    8·√n sits inside the usual 4·√n..16·√n range; n/39 keeps k-means at ≥ 39 points per
    centroid, below which Faiss warns that the centroids are poorly trained.
    """
    cap = min(8.0 * math.sqrt(max(n, 1)), n / 39.0)
    return 1 << max(0, int(math.floor(math.log2(max(cap, 1.0)))))


def auto_pq(dim: int, n: int, dims_per_byte: int = 16) -> tuple[int, int]:
    """PQ sub-quantizers M and bits per code: about 16 dimensions per byte (32 bytes at 512-d,
    the tutorial's PQ32; 32 per byte, PQ16, in the low-memory setting), at least
    min(16, dim/4) sub-quantizers for small dimensions, M must divide dim; 8 bits when there
    are enough points to train 256 centroids per sub-space."""
    target = max(dim // dims_per_byte, min(dim // 4, 16), 1)
    m = max(d for d in range(1, target + 1) if dim % d == 0)
    nbits = 8 if n >= 256 * 39 else 4
    return m, nbits


# From this many lists on, the coarse quantizer is an HNSW graph over the centroids instead of
# a flat scan of all of them: at 4096 lists × 512-d the flat scan alone took 389 µs of a
# one-query search, HNSW32 (efSearch 32) 61 µs with 0.998 of the same 8 lists (docs/index.md).
HNSW_QUANTIZER_MIN_NLIST = 1024


def auto_factory(n: int, dim: int, dims_per_byte: int = 16, hnsw_quantizer: bool = True) -> str:
    """The factory string of the automatic rule (``hnsw_quantizer`` False: a flat coarse
    quantizer, which a GPU copy of the index needs and scans as fast)."""
    if n < MIN_TRAIN:
        return "Flat"
    m, nbits = auto_pq(dim, n, dims_per_byte)
    nlist = auto_nlist(n)
    quantizer = "_HNSW32" if hnsw_quantizer and nlist >= HNSW_QUANTIZER_MIN_NLIST else ""
    return f"IVF{nlist}{quantizer},PQ{m}x{nbits}"


def quantizer_ef_search(nprobe: int) -> int:
    """efSearch of an HNSW coarse quantizer for ``nprobe`` lists: 2·nprobe, at least 32."""
    return max(32, 2 * nprobe)


def auto_nprobe(nlist: int) -> int:
    """Lists visited by default: nlist/64, at least 16 (measured in docs/index.md)."""
    return max(1, min(nlist, max(16, nlist // 64)))


# efSearch of an HNSW index when neither a request nor tuning gives one (Faiss's default is 16;
# the re-rank fetches k·rerank candidates, and Faiss searches with max(efSearch, that) anyway).
HNSW_EF_SEARCH = 64


def breadth_grid(live: LiveIndex) -> list[int]:
    """The nprobe values a tuning tries: doublings up to nlist (1024 at most), or efSearch
    values for an HNSW index."""
    if live.hnsw:
        return [16, 32, 64, 128, 256, 512]
    nlist = live.nlist or 1
    return [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if p <= nlist]


# -- building ------------------------------------------------------------------------------------


def build_empty(factory: str, dim: int) -> faiss.Index:
    """An untrained inner-product index from a factory string, able to take our ids.

    Raises ValueError (factory.FactoryError) naming the problem when the string is not one the
    service builds: it is parsed first, since Faiss accepts strings it then crashes on.
    """
    parse_factory(factory, dim)
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown"
        message = f"{factory!r} is not a Faiss factory string Faiss accepts: {reason}"
        raise ValueError(message) from None
    if faiss.try_extract_index_ivf(index) is None and not isinstance(
        index, (faiss.IndexIDMap, faiss.IndexIDMap2)
    ):
        index = faiss.IndexIDMap(index)
    return index


@dataclass
class LiveIndex:
    """A Faiss index and what the service knows about it."""

    index: faiss.Index
    factory: str
    trained_on: int = 0
    ivf: Any = None  # faiss.IndexIVF inside ``index`` when it has one
    gpu_index: Any = None
    gpu_removed: int = 0  # deletes not applied on the GPU copy (filtered by the live mask)
    # nprobe -> (IVF parameters, the quantizer's parameters they point to: kept referenced
    # here, since the SWIG object does not keep it alive)
    _params: dict[int, tuple[Any, Any]] = field(default_factory=dict, repr=False)
    # The re-rank as a Faiss IndexRefine over the table's fp16 rows, and its parameters per
    # (nprobe, rerank): see refine().
    _refine: Any = field(default=None, repr=False)
    _refine_params: dict[tuple[int, int], Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.ivf = faiss.try_extract_index_ivf(self.index)

    # kind, hnsw, exact and nlist are read on every search and never change for one Faiss
    # index, but each asks SWIG (downcasts, attribute reads): ~25 µs of a 0.1 ms search when
    # recomputed per call, so each is worked out once.
    @functools.cached_property
    def hnsw(self) -> bool:
        """A graph (no lists): its ``nprobe`` is HNSW's efSearch."""
        inner = self.index
        if isinstance(inner, (faiss.IndexIDMap, faiss.IndexIDMap2)):
            inner = faiss.downcast_index(inner.index)
        return isinstance(inner, faiss.IndexHNSW)

    def search_params(self, nprobe: int) -> Any:
        """IVF search parameters for ``nprobe`` lists (HNSW: efSearch ``nprobe``), built once
        per value."""
        cached = self._params.get(nprobe)
        if cached is not None:
            return cached[0]
        if self.hnsw:
            # (missing from the stubs faiss-cpu ships)
            graph = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
            graph.efSearch = nprobe
            self._params[nprobe] = (graph, None)
            return graph
        params = faiss.SearchParametersIVF()
        params.nprobe = nprobe
        quantizer_params = None
        if self.ivf is not None and isinstance(
            faiss.downcast_index(self.ivf.quantizer), faiss.IndexHNSW
        ):
            # (missing from the stubs faiss-cpu ships)
            quantizer_params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
            quantizer_params.efSearch = quantizer_ef_search(nprobe)
            params.quantizer_params = quantizer_params
        # At most nlist entries: nprobe_for() clamps every request's nprobe to nlist.
        self._params[nprobe] = (params, quantizer_params)
        return params

    def refine(self, table: faiss.Index, nprobe: int, rerank: int) -> tuple[Any, Any]:
        """(index, params) that search the IVF lists for ``k·rerank`` candidates and re-score
        them with ``table`` (the VectorTable's fp16 rows, row = id), all inside Faiss: the same
        answers as the numpy re-rank, at a quarter of its cost for one query (0.11 against
        0.41 ms at 37k × 384, IVF256,PQ48x4fs, re-rank 16). Only for IVF indexes: they remove
        deleted ids, so no deleted candidate takes a slot of the k."""
        if self._refine is None:
            refine = faiss.IndexRefine(self.index, self.index)  # (equal ntotal, then replaced)
            refine.own_fields = False
            refine.own_refine_index = False
            refine.refine_index = table
            # IndexRefine checks candidate labels against its ntotal; ours are item ids (rows of
            # the table, which always has room for every indexed id), not 0..ntotal-1.
            refine.ntotal = 1 << 62
            self._refine = (refine, table)  # the table index kept referenced with it
        params = self._refine_params.get((nprobe, rerank))
        if params is None:
            params = faiss.IndexRefineSearchParameters()
            params.k_factor = float(rerank)
            params.base_index_params = self.search_params(nprobe)
            self._refine_params[(nprobe, rerank)] = params
        return self._refine[0], params

    @functools.cached_property
    def kind(self) -> str:
        if self.ivf is None:
            inner = self.index
            if isinstance(inner, (faiss.IndexIDMap, faiss.IndexIDMap2)):
                inner = faiss.downcast_index(inner.index)
            if isinstance(inner, faiss.IndexHNSW):
                return "hnsw"
            return "flat" if isinstance(inner, faiss.IndexFlat) else type(inner).__name__.lower()
        inner = faiss.downcast_index(self.ivf)
        return {"IndexIVFPQ": "ivfpq", "IndexIVFFlat": "ivfflat",
                "IndexIVFPQFastScan": "ivfpq-fastscan"}.get(
            type(inner).__name__, type(inner).__name__.lower()
        )

    @functools.cached_property
    def exact(self) -> bool:
        return self.kind == "flat"

    @property
    def tunable(self) -> bool:
        """Has a search breadth (lists or efSearch) and a re-rank depth to tune."""
        return self.ivf is not None or self.hnsw

    @functools.cached_property
    def nlist(self) -> int | None:
        return int(self.ivf.nlist) if self.ivf is not None else None

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)


@dataclass
class SearchDefaults:
    """Search parameters applied when a request gives none (rule, config or tuning)."""

    nprobe: int | None = None
    rerank: int = 16
    source: str = "rule"
    tuned: dict[str, Any] = field(default_factory=dict)


class GpuRunner:
    """One owner thread for every Faiss GPU call: Faiss GPU indexes are not thread-safe."""

    def __init__(self) -> None:
        if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
            raise RuntimeError(
                "INDEX_DEVICE=cuda, but the installed faiss has no GPU support or sees no GPU "
                f"(faiss {faiss.__version__}, GPUs visible: "
                f"{faiss.get_num_gpus() if hasattr(faiss, 'get_num_gpus') else 0}). Install "
                "faiss-gpu (the GPU image does) or set INDEX_DEVICE=cpu."
            )
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="faiss-gpu")
        self._resources = self._pool.submit(faiss.StandardGpuResources).result()

    def upload(self, cpu_index: faiss.Index) -> Any:
        return self._pool.submit(faiss.index_cpu_to_gpu, self._resources, 0, cpu_index).result()

    def add(self, gpu_index: Any, vectors: np.ndarray, ids: np.ndarray) -> None:
        self._pool.submit(gpu_index.add_with_ids, vectors, ids).result()

    def search(
        self, gpu_index: Any, queries: np.ndarray, k: int, nprobe: int
    ) -> tuple[np.ndarray, np.ndarray]:
        def run() -> tuple[np.ndarray, np.ndarray]:
            # Safe: only this thread ever touches the GPU index.
            faiss.GpuParameterSpace().set_index_parameter(gpu_index, "nprobe", nprobe)
            return gpu_index.search(queries, k)

        return self._pool.submit(run).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` per row, highest first (ids -1 / scores -inf where fewer)."""
    if scores.shape[1] > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores = np.take_along_axis(scores, part, axis=1)
        ids = np.take_along_axis(ids, part, axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


class VectorIndex:
    """The live Faiss index, the table of live vectors, search and background training."""

    def __init__(
        self,
        dim: int,
        store: Store,
        writer: threading.Lock,
        *,
        keep_vectors: bool = True,
        train_threshold: int = 50_000,
        retrain_growth: float = 4.0,
        factory: str | None = None,
        nprobe: int | None = None,
        rerank: int = 16,
        gpu: GpuRunner | None = None,
        omp_threads: int = 0,
        selection: SelectionConfig | None = None,
    ) -> None:
        self.dim = dim
        self.omp_threads = omp_threads
        self._fp16 = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16)
        self.store = store
        self.writer = writer
        self.rw = RWLock()
        self.table = VectorTable(dim, keep_vectors)
        self.train_threshold = train_threshold
        self.retrain_growth = retrain_growth
        self.factory_config = factory
        self.factory_override: str | None = None  # from a rebuild request; kept in snapshots
        self.defaults = SearchDefaults(nprobe=nprobe, rerank=rerank, source="config" if nprobe
                                       else "rule")
        self.gpu = gpu
        self.live = LiveIndex(build_empty("Flat", dim), "Flat")
        self.applied_seq = 0
        self.training = False
        self.training_error: str | None = None
        self.last_training: dict[str, Any] = {}
        self._train_thread: threading.Thread | None = None
        self._train_done = threading.Event()
        self._train_done.set()
        self.on_swap: list[Callable[[], None]] = []
        # Set: trainings of the automatic rule try several structures (structure.py).
        self.selection = selection
        # The search defaults the last selection measured, for the after-swap hook to apply.
        self.selected: dict[str, Any] | None = None

    # -- state ---------------------------------------------------------------------------------

    def install(self, live: LiveIndex, applied_seq: int) -> None:
        """Make ``live`` the live index (at start, from a snapshot or a rebuild from the store)."""
        if self.gpu is not None and live.ivf is not None:
            live.gpu_index = self.gpu.upload(live.index)
        with self.rw.write():
            self.live = live
            self.applied_seq = applied_seq

    def load_table(self) -> None:
        """Fill the live mask (and vectors) from the store: the table is never snapshotted."""
        self.table.reserve(self.store.max_id())
        # Small chunks: each row is a Python bytes object, and a big chunk's worth of them
        # leaves the heap fragmented (measured: +800 B resident per vector with 64k rows).
        if self.table.vectors is None:
            for ids in self.store.iter_live_ids():
                self.table.put(ids, np.empty((0, self.dim), dtype=np.float16))
        else:
            for ids, vectors in self.store.iter_live(chunk=4096):
                self.table.put(ids, vectors)
        release_free_memory()

    def load_table_from(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Fill the live mask (and vectors) from a snapshot's vectors file (``vectors`` may be
        memory-mapped: it is copied in chunks, so the file is read once, sequentially)."""
        top = int(ids.max()) if len(ids) else 0
        self.table.reserve(max(self.store.max_id(), top))
        none = np.empty((0, self.dim), dtype=np.float16)
        for start in range(0, len(ids), _TABLE_CHUNK):
            part = np.asarray(ids[start : start + _TABLE_CHUNK], dtype=np.int64)
            self.table.put(part, vectors[start : start + _TABLE_CHUNK]
                           if self.table.vectors is not None else none)

    def nprobe_for(self, live: LiveIndex, nprobe: int | None) -> int:
        if live.hnsw:
            return max(1, int(nprobe or self.defaults.nprobe or HNSW_EF_SEARCH))
        nlist = live.nlist or 1
        chosen = nprobe or self.defaults.nprobe or auto_nprobe(nlist)
        return max(1, min(int(chosen), nlist))

    # -- writes (caller holds ``writer``) -------------------------------------------------------

    def add(self, ids: np.ndarray, vectors_f16: np.ndarray, seq: int) -> None:
        """Index rows the store has committed (``vectors_f16`` as stored)."""
        vectors = np.ascontiguousarray(vectors_f16, dtype=_F32)
        with self.rw.write():
            if len(ids):
                self.table.put(ids, vectors_f16)
                self.live.index.add_with_ids(vectors, ids)
                if self.live.gpu_index is not None and self.gpu is not None:
                    self.gpu.add(self.live.gpu_index, vectors, ids)
            self.applied_seq = max(self.applied_seq, seq)

    def remove(self, ids: np.ndarray, seq: int) -> None:
        with self.rw.write():
            self.table.drop(ids)
            _remove_ids(self.live.index, ids)
            if self.live.gpu_index is not None:
                # GPU IVF indexes cannot remove; the live mask filters these out of results.
                self.live.gpu_removed += len(ids)
            self.applied_seq = max(self.applied_seq, seq)

    def apply_changes(self, changes: Changes) -> None:
        """Replay committed changes (at start, after a snapshot)."""
        if len(changes.added_ids):
            self.add(changes.added_ids, changes.added_vectors, changes.last_seq)
        if len(changes.deleted_ids):
            self.remove(changes.deleted_ids, changes.last_seq)
        self.applied_seq = max(self.applied_seq, changes.last_seq)

    # -- search --------------------------------------------------------------------------------

    def search_raw(
        self,
        queries: np.ndarray,
        k: int,
        *,
        nprobe: int | None = None,
        exact: bool = False,
        rerank: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (scores, ids) per unit query, highest first; id -1 where there are fewer
        live hits. Deleted ids never appear."""
        queries = np.ascontiguousarray(queries, dtype=_F32)
        self.limit_threads(len(queries))
        rw = self.rw
        rw.acquire_read()  # (what ``with rw.read()`` does, less a layer of calls)
        try:
            return self._search_live(self.live, queries, k, nprobe, exact, rerank)
        finally:
            rw.release_read()

    def _search_live(
        self, live: LiveIndex, queries: np.ndarray, k: int, nprobe: int | None, exact: bool,
        rerank: int | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """search_raw on ``live`` (the live index or a candidate); caller holds ``rw.read``."""
        if not (exact or live.exact):
            depth = self.defaults.rerank if rerank is None else rerank
            breadth = self.nprobe_for(live, nprobe)
            scan = self.table.scan_index
            if (depth > 0 and live.ivf is not None and live.gpu_index is None
                    and scan is not None and live is self.live):
                return self._refined(live, scan, queries, k, breadth, depth)
            scores, ids = self._approximate(live, queries, k, breadth, depth)
        elif exact and not live.exact:
            scores, ids = self._exact_scan(queries, k)
        else:  # the flat index
            # The table's fp16 scan answers as the flat index does (same stored values) and
            # reads half the bytes: ×0.6–1.1 of IndexFlatIP where the flat index measured
            # ×1.06–1.63 (docs/index.md, Real embeddings).
            if self.table.scan_index is not None:
                scores, ids = self._exact_scan(queries, k)
            else:
                scores, ids = self._flat(live, queries, k)
        valid = self.table.is_live(ids)
        if valid.all() and scores.shape[1] <= k:
            return scores, ids  # Faiss sorted them already; nothing to drop (the common case)
        ids = np.where(valid, ids, -1)
        scores = np.where(valid, scores, -np.inf).astype(_F32)
        return _top_k(scores, ids, min(k, scores.shape[1])) if scores.shape[1] else (scores, ids)

    def _refined(
        self, live: LiveIndex, scan: faiss.Index, queries: np.ndarray, k: int, nprobe: int,
        rerank: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """An IVF index's ``k·rerank`` candidates re-scored with the table's float16 rows, in
        one Faiss call (``LiveIndex.refine``); -inf where fewer than k were found.

        For the live index this is the whole search (``_search_live``): every hit is live
        without the live mask, since an IVF index drops deleted ids from its lists in
        :meth:`remove`, under the write lock this search's read lock excludes (HNSW cannot, a
        GPU copy does not, and a training candidate is behind on deletes: those go through
        ``_approximate`` and get the mask). Faiss's ``search_c`` is called with the result
        arrays made here, as its Python wrapper would, less its checks. Together ~10 µs less
        of a ~0.1 ms search."""
        kk = min(k, live.ntotal)
        n = len(queries)
        if kk == 0:
            return _empty(n)
        refine, params = live.refine(scan, nprobe, rerank)
        scores = np.empty((n, kk), dtype=_F32)
        ids = np.empty((n, kk), dtype=np.int64)
        refine.search_c(n, faiss.swig_ptr(queries), kk, faiss.swig_ptr(scores),
                        faiss.swig_ptr(ids), params)
        if n and ids[:, -1].min() < 0:  # fewer hits than k: Faiss pads each row's end with -1
            scores[ids < 0] = -np.inf
        return scores, ids

    def search_ids(self, queries: np.ndarray, k: int, nprobe: int, rerank: int) -> np.ndarray:
        """Ids only, with explicit nprobe and re-rank depth: what a tuner calls."""
        return self.search_raw(queries, k, nprobe=nprobe, rerank=rerank)[1]

    def _flat(self, live: LiveIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        kk = min(k, live.ntotal)
        if kk == 0:
            return _empty(len(queries))
        scores, ids = live.index.search(queries, kk)
        return scores, ids

    def _approximate(
        self, live: LiveIndex, queries: np.ndarray, k: int, nprobe: int, rerank: int
    ) -> tuple[np.ndarray, np.ndarray]:
        fetch = k * rerank if rerank > 0 else k
        if live.gpu_index is not None:
            fetch += min(live.gpu_removed, 1024)
        fetch = min(fetch, live.ntotal)
        if fetch == 0:
            return _empty(len(queries))
        if live.gpu_index is not None and self.gpu is not None:
            scores, ids = self.gpu.search(live.gpu_index, queries, min(fetch, 2048), nprobe)
        elif rerank > 0 and live.ivf is not None and self.table.scan_index is not None:
            return self._refined(live, self.table.scan_index, queries, k, nprobe, rerank)
        else:
            scores, ids = live.index.search(queries, fetch, params=live.search_params(nprobe))
        if rerank <= 0:
            return scores, ids
        return self._rerank(queries, ids)

    def _rerank(self, queries: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of the candidates from the stored float16 vectors (-inf for none)."""
        valid = self.table.is_live(ids)
        safe = np.where(valid, ids, 0)
        scores = np.empty(ids.shape, dtype=_F32)
        block = max(1, _RERANK_BLOCK // max(1, ids.shape[1] * self.dim))
        table = self.table.vectors
        lookup: dict[int, np.ndarray] | None = None
        if table is None:  # low-memory setting: one read of the candidates from the store
            lookup = self.store.vectors_of(safe[valid].ravel().tolist())
        zero = np.zeros(self.dim, dtype=np.float16)
        for start in range(0, len(ids), block):
            part = safe[start : start + block]
            if table is not None:
                cand = table[part]
            else:
                assert lookup is not None
                cand = np.stack([lookup.get(int(i), zero) for i in part.ravel()]).reshape(
                    *part.shape, self.dim
                )
            scores[start : start + block] = np.einsum(
                "qkd,qd->qk", self.widen(cand), queries[start : start + block]
            )
        scores[~valid] = -np.inf
        return scores, np.where(valid, ids, -1)

    def widen(self, half: np.ndarray) -> np.ndarray:
        """float16 vectors (any leading shape) as float32, decoded by Faiss's fp16 scalar
        quantizer: bit-identical to numpy's astype, 2.5 times as fast (86 against 215 µs for
        a 240 × 512 re-rank), and without the GIL."""
        rows = np.ascontiguousarray(half, dtype=np.float16).reshape(-1, self.dim)
        out = np.empty(rows.shape, dtype=_F32)
        self._fp16.sa_decode(rows.view(np.uint8), out)
        return out.reshape(half.shape)

    def _exact_scan(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact inner products with every live stored vector: Faiss's fp16 scan of the table
        (vectors.py), or, in the low-memory setting, numpy over chunks read from the store."""
        if self.table.vectors is not None:
            return self.table.search(queries, k)
        best_s = np.full((len(queries), 0), -np.inf, dtype=_F32)
        best_i = np.full((len(queries), 0), -1, dtype=np.int64)
        for ids, vectors in self.store.iter_live():
            scores = queries @ self.widen(vectors).T
            best_s, best_i = _top_k(
                np.hstack([best_s, scores]),
                np.hstack([best_i, np.broadcast_to(ids, scores.shape)]),
                k,
            )
        return best_s, best_i

    # -- training ------------------------------------------------------------------------------

    def wanted_factory(self, n: int, *, override: bool = True) -> str:
        """The factory a training of ``n`` vectors builds: a rebuild's forced one (unless
        ``override`` is False), else INDEX_FACTORY, else the automatic rule."""
        # Low-memory setting: half the code bytes (PQ16 at 512-d); the re-rank from the stored
        # vectors recovers what the coarser codes lose.
        per_byte = 16 if self.table.keep_vectors else 32
        forced = self.factory_override if override else None
        return (forced or self.factory_config
                or auto_factory(n, self.dim, per_byte, hnsw_quantizer=self.gpu is None))

    def needs_training(self) -> bool:
        """Past the threshold while exact, or grown ``retrain_growth`` times since training."""
        if self.training:
            return False
        n = self.table.count
        if self.live.exact:
            if n < max(self.train_threshold, MIN_TRAIN):
                return False
            return self.wanted_factory(n) != "Flat"
        return n >= self.retrain_growth * max(self.live.trained_on, 1)

    def start_training(self, factory: str | None = None, *, reason: str) -> bool:
        """Train in the background; False when a training is running already."""
        with self.rw.read():
            if self.training:
                return False
            self.training = True
        self._train_done.clear()
        self._train_thread = threading.Thread(
            target=self._train_job, args=(factory, reason), name="index-train", daemon=True
        )
        self._train_thread.start()
        return True

    def wait_training(self, timeout: float | None = None) -> bool:
        return self._train_done.wait(timeout)

    def limit_threads(self, queries: int | None = None) -> None:
        """Set the calling thread's OpenMP team size (OpenMP's count is per thread): one thread
        for a search of a few queries, where waking a team costs more than it saves and
        concurrent requests keep the cores busy anyway; else INDEX_OMP_THREADS (0: Faiss's
        default)."""
        if queries is not None and queries < _SMALL_SEARCH:
            faiss.omp_set_num_threads(1)
        else:
            faiss.omp_set_num_threads(self.omp_threads or _OMP_DEFAULT)

    def _train_job(self, factory: str | None, reason: str) -> None:
        self.limit_threads()
        try:
            self._train(factory, reason)
            self.training_error = None
        except Exception as exc:  # a bad forced factory or too few points: keep the old index
            log.exception("index training failed (%s)", reason)
            self.training_error = str(exc)
        finally:
            self.training = False
            self._train_done.set()

    def _selects(self, factory: str | None, n: int) -> bool:
        """Whether this training chooses its structure by measuring candidates: only for the
        automatic rule (no forced factory), on the CPU (a GPU copy wants the rule's flat-
        quantizer IVF-PQ), with tuning on."""
        return (self.selection is not None and factory is None and self.gpu is None
                and self.factory_override is None and self.factory_config is None
                and self.wanted_factory(n) != "Flat")

    def _train(self, factory: str | None, reason: str) -> None:
        started = time.perf_counter()
        if factory == AUTO:
            # Back to the automatic choice: the forced factory is forgotten (and so is it in
            # the snapshot the after-swap hook writes).
            self.factory_override = None
            factory = None
        seq = self.applied_seq
        n = self.table.count
        self.selected = None
        if self._selects(factory, n):
            assert self.selection is not None
            log.info("choosing a structure for %d vectors (%s)", n, reason)
            selection = select_structure(self, seq, n, self.selection)
            new, chosen = selection.live, selection.live.factory
            if len(selection.held_ids):
                # The held-out queries were kept out of the candidates; they belong in the index.
                new.index.add_with_ids(np.ascontiguousarray(selection.held_vectors, dtype=_F32),
                                       selection.held_ids)
            self.selected = selection.summary
            trained_s = time.perf_counter() - started
            index = new.index
        else:
            chosen = factory or self.wanted_factory(n)
            parse_factory(chosen, self.dim, items=n)  # enough items for its lists and codebooks
            log.info("training %s on %d vectors (%s)", chosen, n, reason)
            index = build_empty(chosen, self.dim)
            if not index.is_trained:
                index.train(self.training_vectors(self.prepare_training(index), n))
            trained_s = time.perf_counter() - started
            for ids, vectors in self.store.iter_live(max_seq=seq):
                index.add_with_ids(np.ascontiguousarray(vectors, dtype=_F32), ids)
            new = LiveIndex(index, chosen, trained_on=n)
        # Catch up with what was written meanwhile, outside the writer lock while there is a lot.
        for _ in range(5):
            changes = self.store.changes_since(seq)
            if len(changes.added_ids) + len(changes.deleted_ids) < 2048:
                break
            _apply(new.index, changes)
            seq = changes.last_seq
        with self.writer:
            changes = self.store.changes_since(seq)
            _apply(new.index, changes)
            if self.gpu is not None and new.ivf is not None:
                new.gpu_index = self.gpu.upload(new.index)
            with self.rw.write():
                self.live = new
        del index
        release_free_memory()  # the old index and the training sample are gone
        if factory is not None:
            self.factory_override = factory
        took = time.perf_counter() - started
        self.last_training = {
            "factory": chosen, "vectors": n, "train_s": round(trained_s, 3),
            "total_s": round(took, 3), "reason": reason, "at": time.time(),
        }
        log.info("swapped in %s (%d vectors) after %.1fs", chosen, new.ntotal, took)
        for callback in self.on_swap:
            try:
                callback()
            except Exception:
                log.exception("after-swap hook failed")

    def prepare_training(self, index: faiss.Index) -> int:
        """Set the training parameters of an untrained ``index``; the sample size it needs
        (enough for k-means on the lists and the PQ codebooks)."""
        ivf = faiss.try_extract_index_ivf(index)
        want = 256 * 39
        if ivf is not None:
            want = max(want, 50 * int(ivf.nlist))
            # 10 k-means iterations instead of 25: on real embeddings the recall after re-rank
            # does not move, and training is the one step that can take minutes.
            ivf.cp.niter = 10
            inner = faiss.downcast_index(ivf)
            if isinstance(inner, faiss.IndexIVFPQ):
                # Polysemous training (on by default for 8-bit codes) serves Hamming-distance
                # filtering we never use, and was 90% of the training time in measurements.
                inner.do_polysemous_training = False  # type: ignore[attr-defined]
            if isinstance(inner, (faiss.IndexIVFPQ, faiss.IndexIVFPQFastScan)):
                inner.pq.cp.niter = 10
                inner.pq.cp.max_points_per_centroid = 128
        return want

    def training_vectors(
        self, want: int, n: int, exclude: np.ndarray | None = None
    ) -> np.ndarray:
        """A random sample of ``want`` stored vectors (``exclude`` ids left out)."""
        want = min(want, n)
        rng = np.random.default_rng(12345)
        if self.table.vectors is not None:
            with self.rw.read():  # an add may grow (and move) the table meanwhile
                ids = self.table.live_ids()
                if exclude is not None:
                    ids = ids[~np.isin(ids, exclude)]
                pick = np.sort(rng.choice(ids, size=min(want, len(ids)), replace=False))
                return np.ascontiguousarray(self.table.vectors[pick], dtype=_F32)
        keep = want / max(n, 1)
        parts = []
        for ids, v in self.store.iter_live():
            chosen = rng.random(len(v)) < keep
            if exclude is not None:
                chosen &= ~np.isin(ids, exclude)
            parts.append(v[chosen])
        return np.ascontiguousarray(np.vstack(parts), dtype=_F32)

    def stored_vectors(self, ids: np.ndarray) -> np.ndarray:
        """float32 copies of the stored vectors of live ``ids``."""
        if self.table.vectors is not None:
            with self.rw.read():
                return self.table.vectors[ids].astype(_F32)
        found = self.store.vectors_of(ids.tolist())
        return np.stack([found[int(i)] for i in ids]).astype(_F32)

    def exact_ids(self, queries: np.ndarray, k: int, exclude: np.ndarray) -> np.ndarray:
        """Exact top-``k`` ids over the live rows, ``exclude`` ids left out (ground truth)."""
        queries = np.ascontiguousarray(queries, dtype=_F32)
        if self.table.vectors is not None:
            with self.rw.read():
                return self.table.search(queries, k, exclude)[1]
        best_s = np.full((len(queries), 0), -np.inf, dtype=_F32)
        best_i = np.full((len(queries), 0), -1, dtype=np.int64)
        for ids, vectors in self.store.iter_live():
            keep = ~np.isin(ids, exclude)
            scores = queries @ self.widen(vectors[keep]).T
            best_s, best_i = _top_k(np.hstack([best_s, scores]),
                                    np.hstack([best_i, np.broadcast_to(ids[keep], scores.shape)]),
                                    k)
        return best_i

    def build_candidate(
        self, factory: str, sample: np.ndarray, seq: int, held: np.ndarray,
        centroids: dict[int, np.ndarray],
    ) -> tuple[LiveIndex, np.ndarray, np.ndarray]:
        """Train ``factory`` on ``sample`` and add the live rows up to ``seq`` except ``held``;
        (the index, the held ids it left out, their stored vectors). ``centroids`` caches the
        coarse centroids per list count: k-means runs once per nlist, not once per candidate
        (IndexIVF.train skips it when its quantizer already holds nlist centroids)."""
        index = build_empty(factory, self.dim)
        self.prepare_training(index)
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None and int(ivf.nlist) in centroids:
            ivf.quantizer.add(centroids[int(ivf.nlist)])
        if not index.is_trained:
            index.train(sample)
        if ivf is not None and int(ivf.nlist) not in centroids:
            centroids[int(ivf.nlist)] = ivf.quantizer.reconstruct_n(0, int(ivf.nlist))
        left_ids, left_vectors = [], []
        for ids, vectors in self.store.iter_live(max_seq=seq):
            out = np.isin(ids, held)
            if out.any():
                left_ids.append(ids[out])
                left_vectors.append(vectors[out])
            index.add_with_ids(np.ascontiguousarray(vectors[~out], dtype=_F32), ids[~out])
        none_f16 = np.zeros((0, self.dim), dtype=np.float16)
        return (LiveIndex(index, factory, trained_on=self.table.count),
                np.concatenate(left_ids) if left_ids else np.zeros(0, dtype=np.int64),
                np.vstack(left_vectors) if left_vectors else none_f16)

    def candidate_ids(
        self, live: LiveIndex, queries: np.ndarray, k: int, nprobe: int, rerank: int
    ) -> np.ndarray:
        """search_ids on an index that is not live (yet): what the structure choice measures."""
        queries = np.ascontiguousarray(queries, dtype=_F32)
        with self.rw.read():
            return self._search_live(live, queries, k, nprobe, False, rerank)[1]

    # -- reporting -----------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        live = self.live
        info: dict[str, Any] = {
            "kind": live.kind,
            "factory": live.factory,
            "factory_override": self.factory_override,
            "nlist": live.nlist,
            "ntotal": live.ntotal,
            "trained_on": live.trained_on,
            "nprobe": self.nprobe_for(live, None) if live.tunable else None,
            "rerank": None if live.exact else self.defaults.rerank,
            "search_defaults_source": self.defaults.source,
            "training": self.training,
            "training_error": self.training_error,
            "last_training": self.last_training or None,
            "vectors_in_memory": self.table.vectors is not None,
            "table_bytes": self.table.nbytes(),
            "device": "cuda" if live.gpu_index is not None else "cpu",
        }
        if self.defaults.tuned:
            # What the last training tried and why it chose (structure.py), apart from the
            # search setting it tuned.
            tuned = dict(self.defaults.tuned)
            info["structure"] = tuned.pop("structure", None)
            info["tuned"] = tuned
        return info


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them after big transient loads)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to do


def _empty(nq: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((nq, 0), dtype=_F32), np.zeros((nq, 0), dtype=np.int64)


def _remove_ids(index: faiss.Index, ids: np.ndarray) -> None:
    if len(ids) == 0:
        return
    try:
        index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64)))
    except RuntimeError:
        # Some index types (HNSW) cannot remove: the live mask keeps deleted ids out of results.
        log.debug("index type %s cannot remove ids; filtering them instead", type(index))


def _apply(index: faiss.Index, changes: Changes) -> None:
    if len(changes.added_ids):
        vectors = np.ascontiguousarray(changes.added_vectors, dtype=_F32)
        index.add_with_ids(vectors, changes.added_ids)
    _remove_ids(index, changes.deleted_ids)
