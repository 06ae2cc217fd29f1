"""The index service's core: the store, the Faiss index and snapshots, wired together.

Writes go store first (the acknowledgement waits for the SQLite commit), then the index, both
under one writer lock so the index holds exactly the committed rows up to ``applied_seq``.
Everything here blocks (SQLite, Faiss, fsync): the API calls it from worker threads.

Over 400 lines: this is the one place where the store, the index, snapshots and tuning meet
under the writer lock (load order, replay, after-swap hook); each part is a short method of
that one lifecycle, and apart they would reach into each other's state.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import faiss
import numpy as np

from glimpse.contracts.errors import ErrorType, GlimpseError
from glimpse.contracts.filters import SearchFilters
from glimpse.index import keywords, persistence
from glimpse.index.config import Settings
from glimpse.index.factory import AUTO, FactoryError, parse_factory
from glimpse.index.filters import facets as filters_facets
from glimpse.index.filters import search as filters_search
from glimpse.index.gather import Search, SearchGatherer
from glimpse.index.index import VectorIndex
from glimpse.index.live import GpuRunner, LiveIndex, build_empty, release_free_memory
from glimpse.index.rules import breadth_grid
from glimpse.index.spaces import (
    BUILTIN,
    ActiveSpace,
    Space,
    SpaceStore,
    check_new_space,
    load_index,
    unknown_space,
)
from glimpse.index.store import AddOutcome, NewItem, Record, Store
from glimpse.index.structure import SelectionConfig
from glimpse.index.tuning import excluding_self, tune_search

log = logging.getLogger("glimpse.index")

Hits = list[list[tuple[int, float]]]
Records = list[list[dict[str, Any]]]


LOW_MEMORY_RERANK = 32
# recall@10 the automatic tuning aims for. The tuner measures recall on stored vectors, which
# shaped the centroids; real queries do a little worse (bench_index on 1M), hence the margin
# over the 0.95 that users should get.
TUNE_TARGET = 0.96
# Held-out queries of a tuning (drawn from the stored vectors; POST /v1/index/tune may ask for
# another count).
TUNE_SAMPLE = 300


class NotTunable(Exception):
    """The live index has nothing to tune (exact, or too few items)."""


@dataclass(frozen=True)
class SnapshotResult:
    seq: int
    bytes: int
    took_ms: float


def _row_identity(store: Store, seq: int) -> dict[str, Any] | None:
    """What identifies the store's row at ``seq`` now (None for an empty store)."""
    if seq == 0:
        return None
    row = store.row_at_seq(seq)
    if row is None:
        log.warning("no row holds seq %d; the snapshot's manifest cannot name it", seq)
        return None
    return {"id": row.id, "key": row.key, "created_at": row.created_at, "deleted": row.deleted}


def _disagreement(manifest: persistence.Manifest, store: Store) -> str | None:
    """Why the store cannot be the one the snapshot was taken from; None when it can.

    The snapshot holds every write up to ``manifest.seq``. A store whose log tail was torn may
    end before that seq (caught by the first check), or, once new writes took its seq past the
    snapshot's, hold other rows under the same seqs and ids: the row the manifest names must
    still be there, the same row (key, created_at), at that seq, or deleted since.
    """
    if manifest.seq > store.last_seq:
        return f"the snapshot is at seq {manifest.seq} but the store ends at {store.last_seq}"
    named = manifest.last_row
    if not named or manifest.seq == 0:
        return None  # a format-1 manifest or an empty store: nothing more to compare
    row = store.get(int(named["id"]))
    head = f"the snapshot's last write (seq {manifest.seq}, id {named['id']})"
    if row is None:
        return f"{head} is not in the store (its tail was lost)"
    if row.key != named["key"] or row.created_at != named["created_at"]:
        return (f"{head} is another row in the store (key {row.key!r}, not {named['key']!r}): "
                "the store lost writes and reused the id")
    same = row.seq == manifest.seq and row.deleted == bool(named["deleted"])
    deleted_since = row.seq > manifest.seq and row.deleted and not named["deleted"]
    if not (same or deleted_since):
        return (f"{head} is at seq {row.seq} (deleted: {row.deleted}) in the store: the store "
                "lost writes the snapshot holds")
    return None


def _known_override(factory: str | None, dim: int) -> str | None:
    """A snapshot's forced factory, if this service still builds it (else the automatic rule)."""
    if factory is None:
        return None
    try:
        parse_factory(factory, dim)
    except FactoryError as exc:
        log.warning("the snapshot's forced factory is dropped: %s", exc)
        return None
    return factory


class IndexService:
    """Store + index + snapshots. ``open()`` loads; every method blocks."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir
        # The low-memory setting's PQ16 codes need a deeper re-rank for the same recall
        # (measured in docs/index.md): 32 unless INDEX_RERANK is set.
        explicit = "rerank" in settings.model_fields_set or settings.vectors_in_memory
        self.rerank = settings.rerank if explicit else LOW_MEMORY_RERANK
        self.writer = threading.Lock()
        self.ready = threading.Event()
        # The searches of the HTTP API: one thread per core (Faiss and the re-rank release the
        # GIL), handed work with loop.run_in_executor, which costs the event loop a fraction
        # of what anyio's worker-thread hop does (a fifth of a one-query search's loop time).
        self.search_pool = ThreadPoolExecutor(
            max(2, os.cpu_count() or 2), thread_name_prefix="index-search"
        )
        self.load_error: str | None = None
        self.waiting_for: str | None = None  # (nothing to wait for: the store is local)
        self.load_report: dict[str, Any] = {}
        self.store: Store | None = None
        self.index: VectorIndex | None = None
        self.gatherer: SearchGatherer | None = None
        self.snapshot_seq = 0
        self.snapshot_info: dict[str, Any] = {}
        self._snapshot_lock = threading.Lock()
        self._tune_lock = threading.Lock()
        self._writes_since_snapshot = 0
        self._deleted = 0  # deleted rows in the store (counted once at open, then kept)
        self._stop = threading.Event()
        self._snap_wanted = threading.Event()
        self._snapshot_thread: threading.Thread | None = None
        # Named spaces (spaces.py), by name; the built-in one is ``self.index``.
        self.spaces: dict[str, Space] = {}
        self.active: ActiveSpace | None = None
        self.gpu: GpuRunner | None = None
        if settings.device == "cuda":
            # Fail at start with a clear sentence, not at the first search.
            self.gpu = GpuRunner()

    # -- lifecycle -----------------------------------------------------------------------------

    def open(self) -> None:
        """Load the snapshot, replay what came after it, and start the background threads."""
        started = time.perf_counter()
        s = self.settings
        self.data_dir.mkdir(parents=True, exist_ok=True)
        store = Store(self.data_dir / "items.sqlite3", s.dim)
        index = VectorIndex(
            s.dim, store, self.writer,
            keep_vectors=s.vectors_in_memory,
            train_threshold=s.train_threshold,
            factory=s.factory,
            nprobe=s.nprobe,
            rerank=self.rerank,
            gpu=self.gpu,
            # The structure is chosen by measurement where the search defaults are tuned.
            selection=SelectionConfig(
                target=TUNE_TARGET, sample=TUNE_SAMPLE,
                max_bytes_per_vector=s.max_bytes_per_vector,
            ) if s.autotune and s.nprobe is None else None,
        )
        self.store, self.index = store, index
        loaded = None
        try:
            loaded = persistence.load(self.data_dir, s.dim)
            problem = _disagreement(loaded[1], store) if loaded is not None else None
            if problem:
                raise persistence.CorruptSnapshot(problem)
        except persistence.CorruptSnapshot as exc:
            log.warning("snapshot unusable (%s): rebuilding the index from the store", exc)
            self.load_report["snapshot_error"] = str(exc)
            loaded = None
            # Moved aside before anything else is written: once new writes take the store's
            # seq past the refused snapshot's, a later start must not find it and trust it.
            try:
                persistence.quarantine(self.data_dir, str(exc))
            except OSError:
                log.exception("could not move the refused snapshot manifest aside")
        self._fill_table(index, loaded[1] if loaded is not None else None)
        self._deleted = store.counts()[1]
        replayed = 0
        if loaded is not None:
            faiss_index, manifest = loaded
            live = LiveIndex(faiss_index, manifest.factory, trained_on=manifest.trained_on)
            index.factory_override = _known_override(manifest.factory_override, s.dim)
            if manifest.search_defaults:
                index.defaults.tuned = manifest.search_defaults
                # A structure choice that missed its target kept the rule's defaults.
                if s.nprobe is None and manifest.search_defaults.get("reached", True):
                    index.defaults.nprobe = manifest.search_defaults.get("nprobe")
                    index.defaults.rerank = manifest.search_defaults.get("rerank", self.rerank)
                    index.defaults.source = "tuned"
            index.install(live, manifest.seq)
            changes = store.changes_since(manifest.seq)
            replayed = len(changes.added_ids) + len(changes.deleted_ids)
            index.apply_changes(changes)
            self.snapshot_seq = manifest.seq
            self.load_report["snapshot"] = manifest.file
        else:
            # No snapshot (first start, or it was unusable): an exact index from the store.
            flat = build_empty("Flat", s.dim)
            for ids, vectors in store.iter_live():
                flat.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
            index.install(LiveIndex(flat, "Flat"), store.last_seq)
        release_free_memory()
        self.load_report.update(
            replayed=replayed, items=index.table.count,
            took_s=round(time.perf_counter() - started, 3),
        )
        log.info("index loaded: %s", self.load_report)
        index.on_swap.append(self._after_swap)
        self._open_spaces(store)
        self.gatherer = SearchGatherer(self._run_gathered)
        self._snapshot_thread = threading.Thread(
            target=self._snapshot_loop, name="index-snapshot", daemon=True
        )
        self._snapshot_thread.start()
        self.ready.set()
        if loaded is None and index.needs_training():
            # Only when there was no usable snapshot: a normal start never retrains.
            # The training's after-swap hook writes the fresh snapshot.
            index.start_training(reason="no usable snapshot at start")
        elif loaded is None:
            # Rebuilt from the store: a fresh snapshot soon, so the next start does not
            # rebuild again (the snapshot thread skips it when there is nothing to hold).
            self._snap_wanted.set()

    def _fill_table(self, index: VectorIndex, manifest: persistence.Manifest | None) -> None:
        """The live mask and re-rank vectors at the snapshot's seq: from its vectors file
        (memory-mapped, one sequential read) when it is whole, else from the store (a row at a
        time: what made a restart slow). The replay that follows brings both up to date."""
        fromfile = None
        if manifest is not None:
            try:
                fromfile = persistence.load_vectors(self.data_dir, manifest)
            except persistence.CorruptVectors as exc:
                log.warning("vectors file unusable (%s): reading the vectors from the store", exc)
                self.load_report["vectors_error"] = str(exc)
        if fromfile is not None:
            index.load_table_from(*fromfile)
            self.load_report["vectors"] = "file"
        else:
            index.load_table()
            self.load_report["vectors"] = "store"

    def close(self) -> None:
        self._stop.set()
        self._snap_wanted.set()
        if self._snapshot_thread is not None:
            self._snapshot_thread.join(30)
        if self.index is not None:
            self.index.wait_training(60)
        for space in list(self.spaces.values()):
            space.index.wait_training(60)
        if self.gatherer is not None:
            self.gatherer.close()
        self.search_pool.shutdown(wait=True)
        if self.ready.is_set() and self.store is not None and self.index is not None:
            if self.index.applied_seq > self.snapshot_seq:
                try:
                    self.snapshot()
                except Exception:
                    log.exception("snapshot at shutdown failed; the next start replays the store")
        if self.store is not None:
            self.store.close()
        if self.gpu is not None:
            self.gpu.close()

    @property
    def training(self) -> bool:
        return self.index is not None and self.index.training

    @property
    def _parts(self) -> tuple[Store, VectorIndex]:
        assert self.store is not None and self.index is not None, "service not opened"
        return self.store, self.index

    # -- writes --------------------------------------------------------------------------------

    def add(self, items: Sequence[NewItem], space: str | None = None) -> list[AddOutcome]:
        """Add items; with a named ``space``, their vectors are that space's and the items
        have none of their own (store.py)."""
        store, index = self._parts
        with self.writer:
            named = None if space in (None, BUILTIN) else self.spaces.get(str(space))
            if space not in (None, BUILTIN) and named is None:
                raise unknown_space(str(space), [BUILTIN, *self.spaces])
            target = index if named is None else named.index
            outcomes, ids, vectors = store.add(
                items, None if named is None else named.name, None if named is None else named.dim)
            target.add(ids, vectors, store.last_seq)
            self._wrote(len(ids))
        if target.needs_training():
            target.start_training(reason=f"{target.table.count} live items")
        return outcomes

    def delete(self, item_id: int) -> bool:
        store, index = self._parts
        with self.writer:
            if not store.delete(item_id):
                return False
            index.remove(np.asarray([item_id], dtype=np.int64), store.last_seq)
            for space in self.spaces.values():
                space.index.remove(np.asarray([item_id], dtype=np.int64), store.last_seq)
            self._deleted += 1
            self._wrote(1)
        return True

    def update(self, item_id: int, path: str | None, meta: dict[str, Any] | None
               ) -> Record | None:
        """Set a live item's path and/or meta; its record after, or None when not live."""
        store, _ = self._parts
        with self.writer:  # ordered with deletes: a deleted item is never updated back
            if not store.update(item_id, path, meta):
                return None
        return store.get(item_id)

    def _wrote(self, n: int) -> None:
        if n == 0:
            return
        self._writes_since_snapshot += n
        every = self.settings.snapshot_every_writes
        if every and self._writes_since_snapshot >= every:
            self._snap_wanted.set()

    # -- search --------------------------------------------------------------------------------

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        nprobe: int | None = None,
        exact: bool = False,
        exclude: Sequence[int] = (),
    ) -> Hits:
        """Top ``k`` live (id, score) per unit query, excluded ids left out (blocks)."""
        return self._run(queries, k, nprobe, exact, exclude, self._hits_finisher(k, exclude))

    def search_records(
        self,
        queries: np.ndarray,
        k: int,
        *,
        nprobe: int | None = None,
        exact: bool = False,
        exclude: Sequence[int] = (),
        detail: int | None = None,
    ) -> Records:
        """Like :meth:`search`, with each hit's path and meta from the store (blocks); past
        ``detail`` hits, id and score alone."""
        return self._run(queries, k, nprobe, exact, exclude,
                         self._records_finisher(k, exclude, detail))

    def submit_search_records(
        self,
        queries: np.ndarray,
        k: int,
        *,
        nprobe: int | None = None,
        exact: bool = False,
        exclude: Sequence[int] = (),
        filters: SearchFilters | None = None,
        detail: int | None = None,
    ) -> Future[Records]:
        """:meth:`search_records` as a future (does not block): on the gathering thread when
        searches are gathered, else on the search threads. ``filters``: filters.py."""
        if filters is not None:  # never gathered: each search has its own selector
            store, index = self._parts
            finish = self._records_finisher(k, exclude, detail)
            return self.search_pool.submit(lambda: finish(*filters_search(
                store, index, queries, k, filters, nprobe=nprobe, exact=exact, exclude=exclude)))
        if self.gathering:
            assert self.gatherer is not None
            return self.gatherer.submit(Search(queries, k + len(exclude), nprobe, exact,
                                               finish=self._records_finisher(k, exclude, detail)))
        return self.search_pool.submit(self.search_records, queries, k, nprobe=nprobe,
                                       exact=exact, exclude=exclude, detail=detail)

    @property
    def gathering(self) -> bool:
        # Only on a GPU, whose calls go through one owner thread anyway; on a CPU one thread
        # for every search was measured slower (docs/index.md).
        return self.gatherer is not None and self.settings.device == "cuda"

    def _run(
        self, queries: np.ndarray, k: int, nprobe: int | None, exact: bool,
        exclude: Sequence[int], finish: Callable[[np.ndarray, np.ndarray], Any],
    ) -> Any:
        _, index = self._parts
        fetch = k + len(exclude)
        if self.gathering:
            assert self.gatherer is not None
            return self.gatherer.submit(Search(queries, fetch, nprobe, exact,
                                               finish=finish)).result()
        scores, ids = index.search_raw(queries, fetch, nprobe=nprobe, exact=exact)
        return finish(scores, ids)

    def _run_gathered(self, searches: Sequence[Search]) -> list[Any]:
        """One Faiss call for a group of gathered searches (same nprobe and exactness), then
        each search's rows, cut to its k, through its finisher."""
        _, index = self._parts
        first = searches[0]
        scores, ids = index.search_raw(np.vstack([s.queries for s in searches]),
                                       max(s.k for s in searches), nprobe=first.nprobe,
                                       exact=first.exact)
        answers: list[Any] = []
        start = 0
        for search in searches:
            rows = slice(start, start + len(search.queries))
            start = rows.stop
            assert search.finish is not None
            try:
                answers.append(search.finish(scores[rows, : search.k], ids[rows, : search.k]))
            except Exception as exc:  # that search's failure only
                answers.append(exc)
        return answers

    @staticmethod
    def _hits_finisher(
        k: int, exclude: Sequence[int]
    ) -> Callable[[np.ndarray, np.ndarray], Hits]:
        skip = set(exclude)

        def finish(scores: np.ndarray, ids: np.ndarray) -> Hits:
            out: Hits = []
            for row_ids, row_scores in zip(ids.tolist(), scores.tolist(), strict=True):
                hits = [(i, s) for i, s in zip(row_ids, row_scores, strict=True)
                        if i >= 0 and i not in skip]
                out.append(hits[:k])
            return out

        return finish

    def _records_finisher(
        self, k: int, exclude: Sequence[int], detail: int | None = None
    ) -> Callable[[np.ndarray, np.ndarray], Records]:
        to_hits = self._hits_finisher(k, exclude)
        shown = k if detail is None else min(detail, k)

        def finish(scores: np.ndarray, ids: np.ndarray) -> Records:
            hits = to_hits(scores, ids)
            store, _ = self._parts
            # Reading and parsing the meta is most of a wide search's cost: only for the
            # hits the caller shows (bench/compare_old_new.py search).
            records = store.paths_and_meta([i for row in hits for i, _ in row[:shown]])
            # An id deleted between the search and this read is dropped, not answered.
            return [
                [{"id": i, "score": s, "path": records[i][0], "meta": records[i][1]}
                 for i, s in row[:shown] if i in records]
                + [{"id": i, "score": s} for i, s in row[shown:]]
                for row in hits
            ]

        return finish

    # -- named spaces (spaces.py) ---------------------------------------------------------------

    def _space_index(self, name: str, dim: int) -> Space:
        store, _ = self._parts
        view = SpaceStore(store, name, dim)
        s = self.settings
        # The automatic structure rule, not INDEX_FACTORY: that string names the built-in
        # dimension's sub-quantizers, which another dimension may not divide.
        index = VectorIndex(
            dim, cast(Store, view), self.writer, keep_vectors=s.vectors_in_memory,
            train_threshold=s.train_threshold, rerank=self.rerank,
        )
        return Space(name, dim, view, index)

    def _open_spaces(self, store: Store) -> None:
        for name, dim in store.spaces().items():
            space = self._space_index(name, dim)
            load_index(space.index, space.view, store.last_seq)
            self.spaces[name] = space
            if space.index.needs_training():
                space.index.start_training(reason=f"space {name!r} loaded")
        self.active = ActiveSpace(store, [BUILTIN, *self.spaces])

    def space_of(self, name: str | None) -> tuple[str, int]:
        """The space a request names (the active one for None) and its dimension."""
        assert self.active is not None, "service not opened"
        chosen = self.active.name if name is None else name
        if chosen == BUILTIN:
            return chosen, self.settings.dim
        space = self.spaces.get(chosen)
        if space is None:
            raise unknown_space(chosen, [BUILTIN, *self.spaces])
        return chosen, space.dim

    def list_spaces(self) -> list[dict[str, Any]]:
        store, index = self._parts
        active = self.space_of(None)[0]
        out = [{"name": BUILTIN, "dim": self.settings.dim, "count": index.table.count,
                "active": active == BUILTIN, "kind": index.live.kind, "built_in": True,
                "optional": True}]
        for space in list(self.spaces.values()):
            out.append({"name": space.name, "dim": space.dim, "count": space.index.table.count,
                        "active": active == space.name, "kind": space.index.live.kind,
                        "built_in": False})
        return out

    def create_space(self, name: str, dim: int) -> None:
        store, _ = self._parts
        with self.writer:
            check_new_space(name, dim, {n: sp.dim for n, sp in self.spaces.items()})
            store.create_space(name, dim)
            space = self._space_index(name, dim)
            load_index(space.index, space.view, store.last_seq)
            self.spaces[name] = space

    def add_space_vectors(self, name: str, ids: Sequence[int], vectors: np.ndarray
                          ) -> dict[str, list[int]]:
        """Store and index ``name``'s unit float16 vectors of existing items; the ids by
        outcome (added, exists, missing)."""
        store, _ = self._parts
        with self.writer:
            space = self.spaces.get(name)
            if space is None:
                raise unknown_space(name, [BUILTIN, *self.spaces])
            outcome, added, stored = store.add_space_vectors(name, space.dim, ids, vectors)
            space.index.add(added, stored, store.last_seq)
            self._wrote(len(added))
        if space.index.needs_training():
            space.index.start_training(reason=f"{space.index.table.count} items in {name!r}")
        return outcome

    def space_pending(self, name: str, after: int, limit: int) -> dict[str, Any]:
        """The live items with no vector in ``name`` yet (a page past id ``after``), how many
        have one and how many there are."""
        store, index = self._parts
        self.space_of(name)
        total = index.table.count + store.no_vector_count()
        if name == BUILTIN:  # nothing can re-encode into it: its model is the items' own
            return {"items": [], "done": index.table.count, "total": total}
        page = store.space_pending(name, after, limit)
        return {"items": [{"id": i, "key": k, "path": p} for i, k, p in page],
                "done": self.spaces[name].index.table.count, "total": total}

    def space_vector(self, name: str | None, item_id: int) -> tuple[str, np.ndarray | None]:
        store, _ = self._parts
        chosen, _ = self.space_of(name)
        if chosen == BUILTIN:
            return chosen, store.get_vector(item_id)
        return chosen, self.spaces[chosen].view.get_vector(item_id)

    def space_vectors(self, name: str | None, ids: Sequence[int]
                      ) -> tuple[str, dict[int, np.ndarray]]:
        store, _ = self._parts
        chosen, _ = self.space_of(name)
        if chosen == BUILTIN:
            return chosen, store.vectors_of(ids)
        return chosen, store.space_vectors_of(chosen, ids)

    def activate_space(self, name: str) -> None:
        store, _ = self._parts
        with self.writer:  # ordered with a drop of the same space
            self.space_of(name)
            assert self.active is not None
            self.active.set(store, name)

    def drop_space(self, name: str) -> None:
        store, _ = self._parts
        with self.writer:
            self.space_of(name)
            if name == BUILTIN:
                raise GlimpseError(ErrorType.conflict, f"Space {name!r} is the items' own "
                                   "vectors; it cannot be dropped.")
            if self.space_of(None)[0] == name:
                raise GlimpseError(ErrorType.conflict, f"Space {name!r} is active; activate "
                                   "another space before dropping it.")
            store.drop_space(name)
            space = self.spaces.pop(name)
        space.index.wait_training(60)

    def submit_space_search(
        self, name: str, queries: np.ndarray, k: int, *, nprobe: int | None = None,
        exact: bool = False, exclude: Sequence[int] = (), filters: SearchFilters | None = None,
        detail: int | None = None,
    ) -> Future[Records]:
        """:meth:`submit_search_records` in the space ``name`` (resolved by :meth:`space_of`)."""
        if name == BUILTIN:
            return self.submit_search_records(queries, k, nprobe=nprobe, exact=exact,
                                              exclude=exclude, filters=filters, detail=detail)
        self._space(name)  # an unknown one is refused before the job is queued
        return self.search_pool.submit(self.space_records, name, queries, k, nprobe=nprobe,
                                       exact=exact, exclude=exclude, filters=filters,
                                       detail=detail)

    def submit_words_search(
        self, name: str, queries: np.ndarray, k: int, words: str, words_k: int, *,
        nprobe: int | None = None, exact: bool = False, exclude: Sequence[int] = (),
        filters: SearchFilters | None = None, detail: int | None = None,
    ) -> Future[tuple[Records, list[dict[str, Any]]]]:
        """:meth:`submit_space_search` and the top ``words_k`` keyword hits of ``words``
        (keywords.py) as one job: the keyword search follows the vector search on its search
        thread, which costs less than handing it to a second thread."""
        if name != BUILTIN:
            self._space(name)
        store, _ = self._parts

        def both() -> tuple[Records, list[dict[str, Any]]]:
            return (self.space_records(name, queries, k, nprobe=nprobe, exact=exact,
                                       exclude=exclude, filters=filters, detail=detail),
                    keywords.search_store(store, words, words_k, filters, set(exclude)))

        return self.search_pool.submit(both)

    def space_records(
        self, name: str, queries: np.ndarray, k: int, *, nprobe: int | None = None,
        exact: bool = False, exclude: Sequence[int] = (), filters: SearchFilters | None = None,
        detail: int | None = None,
    ) -> Records:
        """:meth:`search_records` in the space ``name``, among the items passing ``filters``
        (blocks; a gathered search waits for its group)."""
        finish = self._records_finisher(k, exclude, detail)
        if name == BUILTIN:
            store, index = self._parts
            if filters is None:
                return self._run(queries, k, nprobe, exact, exclude, finish)
        else:
            space = self._space(name)
            store, index = cast(Store, space.view), space.index
        if filters is not None:
            return finish(*filters_search(store, index, queries, k, filters, nprobe=nprobe,
                                          exact=exact, exclude=exclude))
        return finish(*index.search_raw(queries, k + len(exclude), nprobe=nprobe, exact=exact))

    def _space(self, name: str) -> Space:
        """A named space; 404 for one that is not there."""
        space = self.spaces.get(name)
        if space is None:
            raise unknown_space(name, [BUILTIN, *self.spaces])
        return space

    # -- snapshots and training ----------------------------------------------------------------

    def snapshot(self) -> SnapshotResult:
        """Write a snapshot of the live index now (OSError when the disk refuses it)."""
        store, index = self._parts
        with self._snapshot_lock:
            started = time.perf_counter()
            # The writer lock too, so the store's row at ``seq`` is the one the index last
            # applied (a delete committed meanwhile would move that row to a later seq).
            vectors = None
            with self.writer, index.rw.read():
                live = index.live
                seq = index.applied_seq
                payload = faiss.serialize_index(live.index)
                manifest = persistence.Manifest(
                    seq=seq, file="", bytes=0, sha256="", dim=index.dim, factory=live.factory,
                    trained_on=live.trained_on, factory_override=index.factory_override,
                    search_defaults=dict(index.defaults.tuned),
                    last_row=_row_identity(store, seq),
                )
                writes = self._writes_since_snapshot
                if index.table.vectors is not None:
                    # Under the locks, so the file holds exactly the rows up to ``seq``; written
                    # in chunks to the page cache (fsync and rename follow, outside the locks).
                    vectors = persistence.write_vectors(
                        self.data_dir, seq, index.dim,
                        persistence.table_chunks(index.table.live_ids(), index.table.vectors),
                    )
            if vectors is None:
                # Low-memory setting: the vectors stream from the store, outside the locks.
                # Rows live at ``seq`` and deleted since are left out, which is harmless: the
                # replay at start drops them anyway.
                vectors = persistence.write_vectors(
                    self.data_dir, seq, index.dim, store.iter_live(max_seq=seq)
                )
            manifest = persistence.save(self.data_dir, payload, manifest, vectors)
            self._writes_since_snapshot = max(0, self._writes_since_snapshot - writes)
            self.snapshot_seq = seq
            took = (time.perf_counter() - started) * 1000
            self.snapshot_info = {"file": manifest.file, "bytes": manifest.bytes,
                                  "took_ms": round(took, 1), "at": manifest.created_at}
            log.info("snapshot at seq %d: %d bytes in %.0f ms", seq, manifest.bytes, took)
            return SnapshotResult(seq, manifest.bytes, took)

    def _snapshot_loop(self) -> None:
        interval = self.settings.snapshot_interval_s
        last = time.monotonic()
        while not self._stop.is_set():
            self._snap_wanted.wait(timeout=min(interval, 5.0) if interval else 5.0)
            if self._stop.is_set():
                return
            _, index = self._parts
            due = bool(interval) and time.monotonic() - last >= interval
            if not (self._snap_wanted.is_set() or due):
                continue
            self._snap_wanted.clear()
            last = time.monotonic()
            if index.applied_seq <= self.snapshot_seq or index.training:
                continue
            try:
                self.snapshot()
            except Exception:
                log.exception("periodic snapshot failed; will retry")

    def _after_swap(self) -> None:
        """A fresh index is live: tune its search defaults, then persist it so no start has to
        train it again."""
        s = self.settings
        _, index = self._parts
        index.defaults.nprobe = s.nprobe
        index.defaults.rerank = self.rerank
        index.defaults.source = "config" if s.nprobe else "rule"
        index.defaults.tuned = {}
        selected, index.selected = index.selected, None
        if selected is not None:
            # The training chose the structure by measuring it: its tuned setting is applied
            # (a setting that missed the target is not, as in tune()).
            if selected["reached"]:
                index.defaults.nprobe = selected["nprobe"]
                index.defaults.rerank = selected["rerank"]
                index.defaults.source = "tuned"
            index.defaults.tuned = selected
        elif s.autotune and s.nprobe is None and index.live.tunable:
            try:
                self.tune(TUNE_TARGET, TUNE_SAMPLE)
            except Exception:
                log.exception("tuning after training failed; the rule's defaults stay")
        try:
            self.snapshot()
        except Exception:
            log.exception("snapshot after training failed")

    def tune(
        self, target: float, sample: int, k: int = 10, apply: bool = True
    ) -> dict[str, Any]:
        """Measure recall@k on ``sample`` stored vectors (their exact neighbours, themselves
        excluded) and pick the cheapest nprobe / re-rank depth reaching ``target``."""
        store, index = self._parts
        with self._tune_lock:
            live = index.live
            if not live.tunable:
                raise NotTunable(
                    f"The live index is {live.kind!r}: it has no nprobe or re-rank depth to tune."
                )
            ids = index.table.live_ids()
            if len(ids) < 2 * (k + 1):
                raise NotTunable(f"The index holds {len(ids)} items, too few to tune recall@{k}.")
            rng = np.random.default_rng(len(ids))
            pick = np.sort(rng.choice(ids, size=min(sample, len(ids) // 2), replace=False))
            if index.table.vectors is not None:
                with index.rw.read():  # an add may grow (and move) the table meanwhile
                    queries = index.table.vectors[pick].astype(np.float32)
            else:
                found = store.vectors_of(pick.tolist())
                queries = np.stack([found[int(i)] for i in pick]).astype(np.float32)

            def exact(q: np.ndarray, kk: int, nprobe: int, rerank: int) -> np.ndarray:
                return index.search_raw(q, kk, exact=True)[1]

            def approximate(q: np.ndarray, kk: int, nprobe: int, rerank: int) -> np.ndarray:
                return index.search_ids(q, kk, nprobe, rerank)

            truth = excluding_self(exact, pick)(queries, k, 1, 0)
            result = tune_search(
                excluding_self(approximate, pick), queries, truth, k=k, target=target,
                nprobes=breadth_grid(live.hnsw, live.nlist), reranks=(0, 2, 4, 8, 16, 24, 32, 48),
            )
            # A setting that misses the target is not applied: the rule's defaults (nprobe
            # nlist/64 and at least 16, re-rank 16) measured above 0.95 recall@10 in
            # docs/index.md, while the best missed setting can be far below it (seen: 0.62).
            applied = apply and index.live is live and result.reached
            summary = {
                "nprobe": result.nprobe, "rerank": result.rerank,
                "recall_at_k": round(result.recall_at_k, 4), "k": k,
                "ms_per_query": round(result.ms_per_query, 4), "target": target,
                "reached": result.reached, "sample": len(pick), "at": time.time(),
            }
            if applied:
                index.defaults.nprobe = result.nprobe
                index.defaults.rerank = result.rerank
                index.defaults.source = "tuned"
                structure = index.defaults.tuned.get("structure")
                index.defaults.tuned = summary
                if structure is not None:
                    index.defaults.tuned["structure"] = structure
            if result.reached:
                log.info("tuned search defaults: %s (applied: %s)", summary, applied)
            else:
                log.warning(
                    "tuning missed recall@%d %.2f (best %.3f); search defaults unchanged: %s",
                    k, target, result.recall_at_k, summary,
                )
            return {**summary, "applied": applied, "trials": result.trials}

    def rebuild(self, factory: str | None, wait: bool) -> tuple[bool, str]:
        """Start (or run) a training; (started, factory). ``factory``: a Faiss factory string
        to force from now on, None for the one in force, ``"auto"`` to forget a forced one and
        go back to INDEX_FACTORY or the automatic rule. Raises ValueError (naming the problem)
        for a string the service does not build, or one the collection is too small for."""
        _, index = self._parts
        n = index.table.count
        if factory == AUTO:
            chosen = index.wanted_factory(n, override=False)
        else:
            chosen = index.wanted_factory(n) if factory is None else factory
        # Parsed here, before any work: Faiss crashes on some strings it accepts (factory.py).
        parse_factory(chosen, index.dim, items=n)
        if not index.start_training(factory, reason="rebuild requested"):
            return False, chosen
        if wait:
            index.wait_training()
            if index.training_error:
                raise RuntimeError(index.training_error)
        return True, chosen

    # -- reporting -----------------------------------------------------------------------------

    def facets(self) -> dict[str, Any]:
        """The values and counts the filter controls offer (filters.py; blocks)."""
        store, _ = self._parts
        return filters_facets(store)

    def stats(self) -> dict[str, Any]:
        store, index = self._parts
        info = index.describe()
        info.update(
            count=index.table.count + store.no_vector_count(),
            deleted=self._deleted,
            dim=index.dim,
            seq=store.last_seq,
            snapshot_seq=self.snapshot_seq,
            snapshot=self.snapshot_info or None,
            load=self.load_report,
            gathered_calls=self.gatherer.calls if self.gatherer else 0,
            gathered_requests=self.gatherer.requests if self.gatherer else 0,
        )
        return info
