"""Which Faiss structures the index service tries when it trains, and what each costs in memory.

The automatic rule (``index.auto_factory``) was shaped on synthetic vectors; on real sentence
embeddings (37k × 384) it chose ``IVF512,PQ24x8`` and needed half the lists visited for recall@10
0.95, where ``IVF256,PQ48x4fs`` with a deep re-rank got there at a tenth of the cost. So the
service does not trust one rule: it builds a few candidates on the collection itself, tunes each
on held-out vectors, and keeps the cheapest that reaches the recall target
(``training.select_structure``). This module only names the candidates and prices their memory.

Memory is the Faiss index alone (codes, ids, coarse centroids, graph links), per vector: the
float16 re-rank table costs every candidate the same ``2·dim`` bytes (none in the low-memory
setting), so it cannot decide between them. ``INDEX_MAX_BYTES_PER_VECTOR`` bounds it.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from glimpse.index.live import LiveIndex

log = logging.getLogger("glimpse.index")

# 4-bit fast-scan codes: twice the sub-quantizers of the 8-bit rule for the same bytes; their
# lists are scanned 32 codes at a time in SIMD registers (Faiss's "fs" variants).
_FASTSCAN_BITS = 4
# Links per node of the HNSW candidate (HNSW32: 64 at level 0, 4 bytes each).
HNSW_M = 32
# Below this many vectors per list on average, fewer lists: k-means is poor under 39 points per
# centroid, and the rule's nlist/4 alternative is only worth trying while it keeps 16 lists.
_MIN_NLIST = 16


@dataclass(frozen=True)
class Candidate:
    """One structure to try: its factory string and its estimated Faiss bytes per vector."""

    factory: str
    bytes_per_vector: float
    family: str  # "ivfpq", "ivfpq-fastscan" or "hnsw"
    nlist: int | None = None


def _divisor_at_most(dim: int, target: int) -> int:
    return max(d for d in range(1, max(1, target) + 1) if dim % d == 0)


def ivf_bytes(n: int, dim: int, nlist: int, code_bytes: float, hnsw_quantizer: bool) -> float:
    """Codes + 8-byte id per vector, plus the float32 centroids (and their graph) shared out."""
    shared = nlist * dim * 4 + (nlist * 2 * HNSW_M * 4 if hnsw_quantizer else 0)
    return code_bytes + 8 + shared / max(n, 1)


def hnsw_bytes(dim: int, code_bytes: float) -> float:
    """Codes + links (2·M at level 0, and on average M/(M-1)·M more above) + the id map."""
    links = (2 * HNSW_M + HNSW_M / (HNSW_M - 1)) * 4
    return code_bytes + links + 8 + 8  # the id map's 8 bytes, and HNSW's level/offset entries


def candidates(
    n: int,
    dim: int,
    *,
    rule_nlist: int,
    rule_m: int,
    rule_nbits: int,
    hnsw_quantizer_from: int,
    fastscan: bool = True,
    hnsw: bool = True,
) -> list[Candidate]:
    """The structures worth trying for ``n`` vectors of ``dim`` (budget not applied yet).

    * the rule's ``IVF{nlist},PQ{m}x{nbits}``, and the same codes on a quarter of the lists
      (shorter k-means, longer lists: on the 37k × 384 set a quarter of the rule's lists did
      better at the same recall);
    * 4-bit fast-scan codes with twice the sub-quantizers (same bytes), on both list counts:
      fast-scan codes alone are poor, but scanned several times faster, and the re-rank from
      the stored vectors recovers the order;
    * ``HNSW32`` over 8-bit scalar-quantized vectors, re-ranked the same way: no lists at all,
      ``dim`` bytes of codes plus ~270 bytes of links per vector, so only where the budget
      allows it.
    """
    nlists = [rule_nlist]
    if rule_nlist // 4 >= _MIN_NLIST:
        nlists.append(rule_nlist // 4)
    out: list[Candidate] = []

    def ivf(nlist: int, codes: str, code_bytes: float, family: str) -> Candidate:
        hq = nlist >= hnsw_quantizer_from
        quantizer = f"_HNSW{HNSW_M}" if hq else ""
        return Candidate(f"IVF{nlist}{quantizer},{codes}",
                         ivf_bytes(n, dim, nlist, code_bytes, hq), family, nlist)

    for nlist in nlists:
        out.append(ivf(nlist, f"PQ{rule_m}x{rule_nbits}", rule_m * rule_nbits / 8, "ivfpq"))
    if fastscan:
        m4 = _divisor_at_most(dim, 2 * rule_m)
        for nlist in nlists:
            out.append(ivf(nlist, f"PQ{m4}x{_FASTSCAN_BITS}fs", math.ceil(m4 / 2),
                           "ivfpq-fastscan"))
    if hnsw:
        out.append(Candidate(f"HNSW{HNSW_M}_SQ8", hnsw_bytes(dim, dim), "hnsw"))
    return out


@dataclass(frozen=True)
class SelectionConfig:
    """How a training chooses its structure (from the service's settings)."""

    target: float = 0.96
    sample: int = 300
    max_bytes_per_vector: float = 128.0
    k: int = 10
    # 4-bit fast-scan codes need a deeper re-rank than 8-bit ones (docs/index.md, "Why re-rank").
    reranks: tuple[int, ...] = (0, 2, 4, 8, 16, 24, 32, 48)
    # Queries timed one at a time per candidate: a one-query search is what users send.
    timed_queries: int = 100


@dataclass
class Selection:
    """The chosen candidate, the held-out rows it still lacks, and the report."""

    live: LiveIndex
    held_ids: np.ndarray
    held_vectors: np.ndarray
    summary: dict[str, Any] = field(default_factory=dict)


def one_query_ms(search: Any, queries: np.ndarray, k: int, nprobe: int, rerank: int,
                 passes: int = 2) -> float:
    """Mean CPU milliseconds of a one-query search, the best of ``passes`` (one OpenMP thread,
    as the service runs a one-query search). CPU time of this thread, not wall time: the
    service's own searches on other threads and other processes' load do not count in it, so
    which candidate wins moves less with the load of the minute it is timed in."""
    import faiss

    faiss.omp_set_num_threads(1)
    best = math.inf
    for _ in range(passes):
        start = time.thread_time()
        for row in queries:
            search(row[None, :], k, nprobe, rerank)
        best = min(best, (time.thread_time() - start) * 1000.0 / max(1, len(queries)))
    return best
