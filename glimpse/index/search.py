"""Search over the live index (or a training's candidate): exact scans of the fp16 table,
IVF and HNSW searches with the re-rank on the stored vectors, and the OpenMP team per call.

``SearchMixin`` is one part of ``VectorIndex`` (index.py): the state it reads is made there.
"""

from __future__ import annotations

import faiss
import numpy as np

from glimpse.index.live import GpuRunner, LiveIndex, SearchDefaults
from glimpse.index.locks import RWLock
from glimpse.index.rules import HNSW_EF_SEARCH, auto_nprobe
from glimpse.index.store import Store
from glimpse.index.vectors import VectorTable

_F32 = np.float32
# Candidates scored per re-rank block: bounds the float32 scratch to about 4 MB per 512-d query.
_RERANK_BLOCK = 1 << 21
# Searches of fewer queries run Faiss on one OpenMP thread (see SearchMixin.limit_threads).
_SMALL_SEARCH = 8
# OpenMP's default team size, read at import (in the main thread, before any override).
_OMP_DEFAULT = faiss.omp_get_max_threads()


def _top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` per row, highest first (ids -1 / scores -inf where fewer)."""
    if scores.shape[1] > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores = np.take_along_axis(scores, part, axis=1)
        ids = np.take_along_axis(ids, part, axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def _empty(nq: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((nq, 0), dtype=_F32), np.zeros((nq, 0), dtype=np.int64)


class SearchMixin:
    """The search half of ``VectorIndex``."""

    dim: int
    store: Store
    rw: RWLock
    table: VectorTable
    live: LiveIndex
    defaults: SearchDefaults
    gpu: GpuRunner | None
    _fp16: faiss.Index

    def limit_threads(self, queries: int | None = None) -> None:
        """Set the calling thread's OpenMP team size (OpenMP's count is per thread): one thread
        for a search of a few queries, where waking a team costs more than it saves and
        concurrent requests keep the cores busy anyway; else OpenMP's own count
        (OMP_NUM_THREADS, else the cores)."""
        if queries is not None and queries < _SMALL_SEARCH:
            faiss.omp_set_num_threads(1)
        else:
            faiss.omp_set_num_threads(_OMP_DEFAULT)

    def nprobe_for(self, live: LiveIndex, nprobe: int | None) -> int:
        if live.hnsw:
            return max(1, int(nprobe or self.defaults.nprobe or HNSW_EF_SEARCH))
        nlist = live.nlist or 1
        chosen = nprobe or self.defaults.nprobe or auto_nprobe(nlist)
        return max(1, min(int(chosen), nlist))

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
        arrays made here, as its Python wrapper would, less its checks (bench/bench_index.py)."""
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
        quantizer: bit-identical to numpy's astype, faster for a re-rank's rows
        (bench/bench_index.py), and without the GIL."""
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

    def candidate_ids(
        self, live: LiveIndex, queries: np.ndarray, k: int, nprobe: int, rerank: int
    ) -> np.ndarray:
        """search_ids on an index that is not live (yet): what the structure choice measures."""
        queries = np.ascontiguousarray(queries, dtype=_F32)
        with self.rw.read():
            return self._search_live(live, queries, k, nprobe, False, rerank)[1]
