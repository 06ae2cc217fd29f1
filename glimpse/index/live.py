"""The live Faiss index and what the service knows about it: building one from a factory
string, its search parameters and re-rank wrapper, the GPU owner thread, and applying the
store's changes to it."""

from __future__ import annotations

import ctypes
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from glimpse.index.factory import parse_factory
from glimpse.index.rules import quantizer_ef_search
from glimpse.index.store import Changes

log = logging.getLogger("glimpse.index")

_F32 = np.float32


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
    # index, but each asks SWIG (downcasts, attribute reads), a visible part of a one-query
    # search when recomputed per call (bench/bench_index.py), so each is worked out once.
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


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them after big transient loads)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to do


def remove_ids(index: faiss.Index, ids: np.ndarray) -> None:
    if len(ids) == 0:
        return
    try:
        index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64)))
    except RuntimeError:
        # Some index types (HNSW) cannot remove: the live mask keeps deleted ids out of results.
        log.debug("index type %s cannot remove ids; filtering them instead", type(index))


def apply_changes(index: faiss.Index, changes: Changes) -> None:
    if len(changes.added_ids):
        vectors = np.ascontiguousarray(changes.added_vectors, dtype=_F32)
        index.add_with_ids(vectors, changes.added_ids)
    remove_ids(index, changes.deleted_ids)
