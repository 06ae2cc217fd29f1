"""The in-memory table of live ids and their float16 vectors, indexed by item id.

Item ids are SQLite row ids (dense, from 1), so a flat array indexed by id is the cheapest map:
1 byte per id for the live mask, plus ``2·dim`` bytes for the vector when re-ranking reads
vectors from memory (the default). In the low-memory setting only the mask is kept.
"""

from __future__ import annotations

import numpy as np

_F16 = np.dtype("<f2")
_GROWTH = 1.25  # not 2: at a million 512-d vectors each spare slot is a kilobyte


class VectorTable:
    """Live mask and (optionally) float16 vectors by id. Callers serialise writes."""

    def __init__(self, dim: int, keep_vectors: bool, capacity: int = 1024) -> None:
        self.dim = dim
        self.keep_vectors = keep_vectors
        self.live = np.zeros(capacity, dtype=bool)
        self.vectors: np.ndarray | None = (
            np.zeros((capacity, dim), dtype=_F16) if keep_vectors else None
        )
        self.count = 0

    @property
    def capacity(self) -> int:
        return int(self.live.shape[0])

    def reserve(self, max_id: int) -> None:
        """Make room for ids up to ``max_id`` (exactly, when loading a known collection)."""
        if max_id < self.capacity:
            return
        new_cap = max(max_id + 1, int(self.capacity * _GROWTH) + 1)
        live = np.zeros(new_cap, dtype=bool)
        live[: self.capacity] = self.live
        if self.vectors is not None:
            vectors = np.zeros((new_cap, self.dim), dtype=_F16)
            vectors[: self.capacity] = self.vectors
            self.vectors = vectors
        self.live = live

    def put(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        self.reserve(int(ids.max()))
        fresh = ~self.live[ids]
        self.count += int(fresh.sum())
        self.live[ids] = True
        if self.vectors is not None:
            self.vectors[ids] = vectors

    def drop(self, ids: np.ndarray) -> None:
        ids = ids[(ids >= 0) & (ids < self.capacity)]
        if len(ids) == 0:
            return
        self.count -= int(self.live[ids].sum())
        self.live[ids] = False

    def is_live(self, ids: np.ndarray) -> np.ndarray:
        """Mask of ``ids`` (any shape, -1 allowed) that name a live item."""
        inside = (ids >= 0) & (ids < self.capacity)
        out = np.zeros(ids.shape, dtype=bool)
        out[inside] = self.live[ids[inside]]
        return out

    def live_ids(self) -> np.ndarray:
        return np.flatnonzero(self.live).astype(np.int64)

    def nbytes(self) -> int:
        return int(self.live.nbytes + (self.vectors.nbytes if self.vectors is not None else 0))
