"""The Faiss side of the index service: the live index, its search with re-ranking, and its
background (re)training with catch-up and an atomic swap.

The live index is exact (``IndexIDMap(IndexFlatIP)``) while the collection is small. Past
``INDEX_TRAIN_THRESHOLD`` live items an IVF-PQ index is trained in a background thread on the
stored vectors, filled with every row up to a sequence number, caught up with the rows written
meanwhile (read back from the store), and swapped in under the write lock; searches go on
against the old index the whole time. IVF-PQ candidates are re-scored with the stored float16
vectors (``rerank`` candidates per wanted hit), because PQ scores alone lose a good part of the
true top 10 on real embeddings.

Files: ``rules.py`` (the automatic factory and search breadth), ``live.py`` (one Faiss index and
what the service knows of it), ``search.py``, ``training.py`` (with the structure choice), and
this one (the state, the writes, the report). ``structure.py`` names the candidates only.

Locking: ``rw`` is shared by searches and taken alone by add, remove and swap. ``writer`` (owned
by the service) serialises writes to the store and the index, so the index always holds exactly
the committed rows up to ``applied_seq``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any

import faiss
import numpy as np

from glimpse.index.live import (
    GpuRunner,
    LiveIndex,
    SearchDefaults,
    build_empty,
    release_free_memory,
    remove_ids,
)
from glimpse.index.locks import RWLock
from glimpse.index.store import Changes, Store
from glimpse.index.structure import SelectionConfig
from glimpse.index.training import TrainingMixin
from glimpse.index.vectors import VectorTable

_F32 = np.float32
_TABLE_CHUNK = 16_384  # rows copied per step from a vectors file


class VectorIndex(TrainingMixin):
    """The live Faiss index, the table of live vectors, search (search.py) and background
    training (training.py); this part holds the state, the writes and the report."""

    def __init__(
        self,
        dim: int,
        store: Store,
        writer: threading.Lock,
        *,
        keep_vectors: bool = True,
        train_threshold: int = 50_000,
        # Retrain when grown this many times since the last training: nlist doubles under the
        # sqrt rule, so an earlier retraining would change little.
        retrain_growth: float = 4.0,
        factory: str | None = None,
        nprobe: int | None = None,
        rerank: int = 16,
        gpu: GpuRunner | None = None,
        selection: SelectionConfig | None = None,
    ) -> None:
        self.dim = dim
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
        # Filtered searches' matching items by filter (filters.Selection), dropped whenever
        # the table changes: a filter is applied to the table once, not once per query.
        self.selections: dict[Hashable, Any] = {}

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
        self.selections.clear()
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
        self.selections.clear()

    def add(self, ids: np.ndarray, vectors_f16: np.ndarray, seq: int) -> None:
        """Index rows the store has committed (``vectors_f16`` as stored)."""
        vectors = np.ascontiguousarray(vectors_f16, dtype=_F32)
        with self.rw.write():
            if len(ids):
                self.table.put(ids, vectors_f16)
                self.selections.clear()
                self.live.index.add_with_ids(vectors, ids)
                if self.live.gpu_index is not None and self.gpu is not None:
                    self.gpu.add(self.live.gpu_index, vectors, ids)
            self.applied_seq = max(self.applied_seq, seq)

    def remove(self, ids: np.ndarray, seq: int) -> None:
        with self.rw.write():
            self.table.drop(ids)
            self.selections.clear()
            remove_ids(self.live.index, ids)
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
