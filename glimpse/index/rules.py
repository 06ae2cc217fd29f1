"""The index's parameter rules: which structure the automatic choice builds for n vectors, and
its default search breadth (docs/index.md has the measurements behind each)."""

from __future__ import annotations

import math

# Below this many items an IVF-PQ index is not worth training (the automatic rule stays flat).
MIN_TRAIN = 1000


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
# a flat scan of all of them: at 4096 lists the flat scan alone was most of a one-query search,
# and HNSW32 found nearly all of the same lists in a sixth of its time (bench/bench_index.py).
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


def breadth_grid(hnsw: bool, nlist: int | None) -> list[int]:
    """The nprobe values a tuning tries: doublings up to nlist (1024 at most), or efSearch
    values for an HNSW index."""
    if hnsw:
        return [16, 32, 64, 128, 256, 512]
    return [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if p <= (nlist or 1)]
