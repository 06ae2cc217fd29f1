"""INDEX_BACKEND=milvus: the index service's API over a Milvus collection (no local state).

It is an :class:`glimpse.index.backend.IndexBackend`, as the Faiss backend is, so the HTTP
contract is the same; milvus_store.py says how ids, dedup, deletes and consistency work.
The default index, HNSW, scores
with the exact vectors, so Milvus's order is the answer's. On IVF_PQ (codes alone recall about
0.7 on real embeddings) searches ask Milvus for ``k × INDEX_RERANK`` candidates, fetch their
exact vectors from Milvus and re-rank them, as the Faiss backend re-ranks its IVF-PQ candidates
with the stored vectors. Snapshots, rebuilds and tuning belong
to Milvus here and answer 409 with a sentence saying so. Rows not yet served by a sealed
segment's index are also scored exactly, and a thread seals them on idle (milvus_store.py says
why: Milvus's interim index of growing segments recalls 0.90).

One file, over 400 lines: every search path of the backend (gathered, filtered, in a space,
with words) shares the service's pool and the futures it answers through.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NoReturn, TypeVar

import numpy as np

from glimpse.contracts.errors import ErrorType, GlimpseError
from glimpse.contracts.filters import SearchFilters
from glimpse.index import keywords
from glimpse.index.config import MilvusSettings, Settings
from glimpse.index.filters import (
    facets_of_rows,
    matches,
    milvus_expr,
    milvus_is_wider,
)
from glimpse.index.gather import Search, SearchGatherer, by_everything
from glimpse.index.milvus_spaces import MilvusSpacesMixin
from glimpse.index.milvus_store import (
    SEAL_IDLE_S,
    CollectionMismatch,
    FreshRows,
    MilvusStore,
    default_nprobe,
)
from glimpse.index.service import NotTunable
from glimpse.index.spaces import BUILTIN
from glimpse.index.store import AddOutcome, NewItem, Record

log = logging.getLogger("glimpse.index")

Records = list[list[dict[str, Any]]]
T = TypeVar("T")

MAX_TOPK = 16_384  # Milvus's limit on one search's topk
_RETRY_S = 2.0
# Exact search and ghost rows (a tombstoned id still in the collection): a few spare hits.
_SPARE = 16
# HNSW's ef when no nprobe is given: the real sets' recall was measured with it (docs/index.md).
HNSW_EF = 128
_MASKS = 16  # filter masks kept per set of fresh rows (a few distinct filters are in use)
# Up to this many matches are read and scored here; past it Milvus searches with the expression
# (reading a vector costs about what a filtered search of Milvus's index costs for all of them).
READ_ROWS = 200


def _scored(fresh: FreshRows, queries: np.ndarray, want: int, exclude: Sequence[int],
            filters: SearchFilters | None) -> list[list[tuple[int, float]]]:
    """The top ``want`` (id, score) per query among the fresh rows passing ``filters``."""
    keep = ~np.isin(fresh.ids, np.asarray(list(exclude), dtype=np.int64))
    if filters is not None:
        key = filters.model_dump_json()
        mask = fresh.masks.get(key)
        if mask is None:
            mask = np.fromiter((matches(filters, p, m) for p, m in zip(fresh.paths, fresh.metas,
                                                                         strict=True)),
                               dtype=bool, count=len(fresh.ids))
            if len(fresh.masks) >= _MASKS:
                fresh.masks.clear()
            fresh.masks[key] = mask
        keep &= mask
    ids = fresh.ids[keep]
    if not len(ids):
        return [[] for _ in queries]
    scores = np.asarray(queries, dtype=np.float32) @ fresh.vectors[keep].T
    top = np.argsort(-scores, axis=1)[:, :want]
    return [list(zip(ids[t].tolist(), s[t].tolist(), strict=True))
            for t, s in zip(top, scores, strict=True)]


def _merged(ann: list[tuple[int, float]], exact: list[tuple[int, float]]
            ) -> list[tuple[int, float]]:
    """One query's candidates from both searches, each id once, score descending; Milvus's
    score where it found the id, so a replica without fresh rows answers the same floats."""
    best = dict(exact)
    best.update(ann)
    return sorted(best.items(), key=lambda hit: (-hit[1], hit[0]))


def combined(make: Callable[..., T], *futures: Future[Any]) -> Future[T]:
    """``make`` of the ``futures``' results, as a future that no thread waits on: it settles
    from their done-callbacks, with the first exception among them, cancelled if one of them
    is, and cancelling it cancels those that have not started."""
    out: Future[T] = Future()
    lock = threading.Lock()
    settled = False

    def settle(_: Future[Any]) -> None:
        nonlocal settled
        with lock:  # callbacks run on the threads that finish the futures
            failed = next((f for f in futures if f.done()
                           and (f.cancelled() or f.exception() is not None)), None)
            if settled or (failed is None and not all(f.done() for f in futures)):
                return
            settled = True
        if failed is not None and failed.cancelled():
            out.cancel()
        elif out.set_running_or_notify_cancel():  # False: the caller cancelled it
            try:
                if failed is not None:
                    out.set_exception(failed.exception())
                else:
                    out.set_result(make(*(f.result() for f in futures)))
            except BaseException as exc:  # noqa: BLE001 - make's error is the caller's
                out.set_exception(exc)

    def forward(_: Future[T]) -> None:
        if out.cancelled():
            for future in futures:
                future.cancel()

    out.add_done_callback(forward)
    for future in futures:
        future.add_done_callback(settle)
    return out


def _trimmed(detail: int) -> Callable[[Records], Records]:
    """Past a row's first ``detail`` hits, each hit's id and score alone: Milvus reads every
    hit's record anyway, but the answer is the Faiss backend's, which reads only those."""
    return lambda records: [row[:detail] + [{"id": h["id"], "score": h["score"]}
                                            for h in row[detail:]] for row in records]


class MilvusIndexService(MilvusSpacesMixin):
    """The index over Milvus; ``open()`` connects (retrying); every method blocks."""

    def __init__(self, settings: Settings, milvus: MilvusSettings) -> None:
        self.settings = settings
        self.milvus = milvus
        self.store = MilvusStore(settings, milvus)
        self.ready = threading.Event()
        self.load_error: str | None = None
        self.waiting_for: str | None = None
        self._stop = threading.Event()
        self._sealer: threading.Thread | None = None
        # Milvus calls wait on the network, not the CPU: more threads than cores.
        self.search_pool = ThreadPoolExecutor(
            max(16, 4 * (os.cpu_count() or 2)), thread_name_prefix="index-milvus"
        )
        self.gatherer = (SearchGatherer(self._run_gathered, key=by_everything,
                                        threads=milvus.search_calls, max_rows=256,
                                        name="index-milvus")
                         if milvus.search_calls > 0 else None)

    @property
    def training(self) -> bool:
        return False  # Milvus builds its indexes itself

    @property
    def rerank(self) -> int:
        return self.settings.rerank if self.store.plan.quantized else 0

    # -- lifecycle -------------------------------------------------------------------------------

    def try_connect(self) -> bool:
        """One attempt. Raises CollectionMismatch (the start must fail); False when Milvus is
        unreachable (``waiting_for`` says why)."""
        try:
            self.store.connect()
        except CollectionMismatch:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to reach Milvus: retry later
            text = (getattr(exc, "message", None) or str(exc) or type(exc).__name__)
            self.waiting_for = (
                f"Milvus at {self.milvus.uri} is unreachable "
                f"({str(text).splitlines()[0][:200]}); the index service retries every "
                f"{_RETRY_S:.0f} s."
            )
            return False
        self.waiting_for = None
        self.ready.set()
        if self._sealer is None:
            self._sealer = threading.Thread(target=self._seal_on_idle, daemon=True,
                                            name="index-milvus-seal")
            self._sealer.start()
        log.info("milvus backend ready: collection %r at %s, index %s %s",
                 self.milvus.collection, self.milvus.uri,
                 self.store.plan.index_type, self.store.plan.params)
        return True

    def open(self) -> None:
        """Connect, retrying until Milvus answers or the service closes."""
        while not self._stop.is_set() and not self.ready.is_set():
            if self.try_connect():
                return
            log.warning("%s", self.waiting_for)
            self._stop.wait(_RETRY_S)

    def _seal_on_idle(self) -> None:
        while not self._stop.wait(SEAL_IDLE_S / 4):
            try:
                if self.store.seal_due():
                    self.store.seal(self._stop)
            except Exception:  # noqa: BLE001 - the window stays open; the next burst retries
                log.exception("milvus backend: sealing fresh rows failed")

    def close(self) -> None:
        self._stop.set()
        if self._sealer is not None:
            self._sealer.join(timeout=10)
        if self.gatherer is not None:
            self.gatherer.close()
        self.search_pool.shutdown(wait=True)
        self.store.close()

    # -- writes ----------------------------------------------------------------------------------

    def add(self, items: Sequence[NewItem], space: str | None = None) -> list[AddOutcome]:
        """Add items; with a named ``space``, their vectors are that space's and the items'
        rows hold a placeholder (milvus_store.py). Each item's space vector is written after
        its row, the existing ones' too: a retry after a failure between the two completes it."""
        if space in (None, BUILTIN):
            return self.store.add(items)
        self.store.spaces.dim_of(space)  # an unknown space: 404 before anything is written
        outcomes = self.store.add(items, space_only=True)
        self.store.spaces.add_vectors(space, [o.id for o in outcomes],
                                      np.vstack([item.vector for item in items]))
        return outcomes

    def delete(self, item_id: int) -> bool:
        return self.store.delete(item_id) is True

    def update(self, item_id: int, path: str | None, meta: dict[str, Any] | None
               ) -> Record | None:
        return self.store.update(item_id, path, meta)

    # -- search ----------------------------------------------------------------------------------

    def submit_search_records(
        self, queries: np.ndarray, k: int, *, nprobe: int | None = None, exact: bool = False,
        exclude: Sequence[int] = (), filters: SearchFilters | None = None,
    ) -> Future[Records]:
        if self.gatherer is not None and filters is None:
            return self.gatherer.submit(Search(queries, k, nprobe, exact, tuple(exclude)))
        return self.search_pool.submit(self.search_records, queries, k, nprobe=nprobe,
                                       exact=exact, exclude=exclude, filters=filters)

    def submit_space_search(
        self, name: str, queries: np.ndarray, k: int, *, nprobe: int | None = None,
        exact: bool = False, exclude: Sequence[int] = (), filters: SearchFilters | None = None,
        detail: int | None = None,
    ) -> Future[Records]:
        """:meth:`submit_search_records` in the space ``name``, past ``detail`` hits trimmed."""
        records = (self.submit_search_records(queries, k, nprobe=nprobe, exact=exact,
                                              exclude=exclude, filters=filters)
                   if name == BUILTIN else
                   self.search_pool.submit(self.store.spaces.search, name, queries, k,
                                           nprobe=nprobe, exact=exact, exclude=exclude,
                                           filters=filters))
        return records if detail is None else combined(_trimmed(detail), records)

    def submit_words_search(
        self, name: str, queries: np.ndarray, k: int, words: str, words_k: int, *,
        nprobe: int | None = None, exact: bool = False, exclude: Sequence[int] = (),
        filters: SearchFilters | None = None, detail: int | None = None,
    ) -> Future[tuple[Records, list[dict[str, Any]]]]:
        """:meth:`submit_space_search` and the top ``words_k`` keyword hits of ``words``
        (keywords.py): two network waits side by side, both on the search pool, where neither
        job waits for the other (the pair is joined by their done-callbacks)."""
        return combined(
            lambda records, hits: (records, hits),
            self.submit_space_search(name, queries, k, nprobe=nprobe, exact=exact,
                                     exclude=exclude, filters=filters, detail=detail),
            self.search_pool.submit(keywords.search_milvus, self.store, words, words_k, filters,
                                    set(exclude)))

    def _run_gathered(self, searches: Sequence[Search]) -> list[Records]:
        """One Milvus search call (and one read of rows) for a group of gathered searches
        (same k, nprobe, exactness and excluded ids); each search's rows of the answer."""
        first = searches[0]
        records = self.search_records(np.vstack([s.queries for s in searches]), first.k,
                                      nprobe=first.nprobe, exact=first.exact,
                                      exclude=first.exclude)
        answers: list[Records] = []
        start = 0
        for search in searches:
            answers.append(records[start : start + len(search.queries)])
            start += len(search.queries)
        return answers

    def search_params(self, limit: int, nprobe: int | None) -> dict[str, Any]:
        plan = self.store.plan
        if plan.index_type == "HNSW":
            # As on Faiss, nprobe (per search, else INDEX_NPROBE) is HNSW's ef; Milvus refuses
            # an ef below the topk asked for.
            return {"ef": max(nprobe or self.settings.nprobe or HNSW_EF, limit)}
        chosen = nprobe or default_nprobe(plan, self.settings)
        return {"nprobe": max(1, min(int(chosen), plan.nlist or int(chosen)))}

    def search_records(
        self, queries: np.ndarray, k: int, *, nprobe: int | None = None, exact: bool = False,
        exclude: Sequence[int] = (), filters: SearchFilters | None = None,
    ) -> Records:
        """Top ``k`` live hits per unit query with path and meta, score descending, among
        those passing ``filters`` (a Milvus expression, filters.py)."""
        where = milvus_expr(filters) if filters is not None else ""
        few = bool(where) and not exact and self.store.count_where(where) <= READ_ROWS
        if few:
            # Few matches: scored exactly, whatever segment holds them. More are Milvus's: its
            # HNSW falls back to brute force under a selective expression, and the fresh window
            # below covers the growing rows whose interim index misses most matches.
            exact = True
        # Read matches are scored here already: only their path and meta are still needed.
        rescore = (exact and not few) or self.rerank > 0
        # A wider expression (near's box, say): twice the candidates, the filter checked below.
        spread = 2 if filters is not None and milvus_is_wider(filters) else 1
        if exact:
            candidates = self._exact_candidates(queries, spread * k + _SPARE, exclude, where,
                                                few)
        else:
            limit = min(MAX_TOPK, spread * k * max(1, self.rerank) + _SPARE)
            candidates = self.store.search_candidates(
                queries, limit, self.search_params(limit, nprobe), exclude, where
            )
            fresh = self.store.fresh_rows()
            if fresh is not None:
                # Unserved rows (milvus_store.py): scored exactly, merged by id.
                exact_rows = _scored(fresh, queries, spread * k + _SPARE, exclude, filters)
                candidates = [_merged(a, b) for a, b in zip(candidates, exact_rows,
                                                             strict=True)]
        if spread > 1:
            assert filters is not None
            rows = self.store.rows_of_ids([i for row in candidates for i, _ in row],
                                          ("id", "path", "meta"), "search")
            candidates = [[(i, s) for i, s in row if i in rows
                           and matches(filters, rows[i]["path"], rows[i]["meta"] or {})]
                          for row in candidates]
        if rescore:
            # Every candidate's exact vector, in one query: the re-rank needs them all.
            ids = [i for row in candidates for i, _ in row]
            rows = self.store.rows_of_ids(ids, ("id", "path", "meta", "vector"), "search")
        else:
            rows = self._rows_of_best(candidates, k)
        out: Records = []
        for q, row in zip(queries, candidates, strict=True):
            # A candidate without its row was deleted meanwhile; one with a tombstone is a ghost
            # (deleted, its row left behind): neither is answered.
            live = [(i, s) for i, s in row if i in rows and -i not in rows]
            if rescore and live:
                vectors = np.asarray([rows[i]["vector"] for i, _ in live], dtype=np.float32)
                scores = vectors @ np.asarray(q, dtype=np.float32)
                live = [(i, float(s)) for (i, _), s in zip(live, scores.tolist(), strict=True)]
            # Score descending, then id: replicas and repeated searches answer identically.
            live.sort(key=lambda hit: (-hit[1], hit[0]))
            out.append([
                {"id": i, "score": s, "path": rows[i]["path"], "meta": rows[i]["meta"] or {}}
                for i, s in live[:k]
            ])
        return out

    def _rows_of_best(self, candidates: list[list[tuple[int, float]]], k: int
                      ) -> dict[int, dict[str, Any]]:
        """Path, meta and tombstone of each query's best ``k`` candidates, reading further down
        only where some of those were deleted or ghosts. Milvus's scores are exact here (HNSW
        keeps the vectors), so its order is the answer's: one query of ``2k`` ids instead of
        every candidate's row (the query's cost grows with its ids)."""
        rows: dict[int, dict[str, Any]] = {}
        taken = [0] * len(candidates)
        while True:
            wanted: list[int] = []
            for n, row in enumerate(candidates):
                live = sum(1 for i, _ in row[: taken[n]] if i in rows and -i not in rows)
                more = row[taken[n] : taken[n] + k - live] if live < k else []
                wanted.extend(i for i, _ in more)
                taken[n] += len(more)
            if not wanted:
                return rows
            rows.update(self.store.rows_of_ids(wanted, ("id", "path", "meta"), "search"))

    def _exact_candidates(self, queries: np.ndarray, want: int, exclude: Sequence[int],
                          where: str = "", few: bool = False) -> list[list[tuple[int, float]]]:
        """Every vector ``where`` holds for scored: a full scan of the collection (tests and
        recall checks), or one query when the expression is known to hold for ``few`` rows
        (the iterator decodes each vector element by element)."""
        skip = np.asarray(sorted(set(exclude)), dtype=np.int64)
        best_ids = np.zeros((len(queries), 0), dtype=np.int64)
        best_scores = np.zeros((len(queries), 0), dtype=np.float32)
        batches = [self.store.vectors_where(where)] if few else self.store.scan(where=where)
        for ids, vectors in batches:
            keep = ~np.isin(ids, skip)
            ids, vectors = ids[keep], vectors[keep]
            scores = queries.astype(np.float32) @ vectors.T
            all_ids = np.hstack([best_ids, np.broadcast_to(ids, scores.shape)])
            all_scores = np.hstack([best_scores, scores])
            if all_scores.shape[1] > want:
                top = np.argpartition(-all_scores, want - 1, axis=1)[:, :want]
                all_ids = np.take_along_axis(all_ids, top, axis=1)
                all_scores = np.take_along_axis(all_scores, top, axis=1)
            best_ids, best_scores = all_ids, all_scores
        # Score descending: _rows_of_best reads the head of each row.
        return [sorted(zip(i.tolist(), s.tolist(), strict=True), key=lambda hit: (-hit[1], hit[0]))
                for i, s in zip(best_ids, best_scores, strict=True)]

    # -- operations that Milvus owns ---------------------------------------------------------------

    def _milvus_owns(self, what: str) -> NoReturn:
        raise GlimpseError(
            ErrorType.conflict,
            f"{what} With INDEX_BACKEND=milvus, Milvus persists every acknowledged write and "
            "builds its index per segment itself (docs/index.md).",
        )

    def rebuild(self, factory: str | None, wait: bool) -> tuple[bool, str]:
        self._milvus_owns(
            "There is no Faiss index to rebuild: to change the Milvus index, drop and create it "
            "with pymilvus or Attu, then restart the index service."
        )

    def snapshot(self) -> Any:
        self._milvus_owns("There is no snapshot to write.")

    def tune(self, target: float, sample: int, k: int = 10, apply: bool = True
             ) -> dict[str, Any]:
        raise NotTunable(
            "The Milvus backend has no automatic tuning: set INDEX_NPROBE (IVF lists, or "
            "HNSW's ef), or pass nprobe per search."
        )

    # -- reporting -------------------------------------------------------------------------------

    def facets(self) -> dict[str, Any]:
        """The values and counts the filter controls offer: one pass over every item's path
        and meta (Milvus 2.3 cannot group by a JSON key)."""
        return facets_of_rows((str(r["path"]), r["meta"] or {})
                              for r in self.store.scan_rows(("path", "meta")))

    def stats(self) -> dict[str, Any]:
        count, deleted = self.store.counts()
        plan = self.store.plan
        params = ", ".join(f"{k}={v}" for k, v in sorted(plan.params.items()))
        search = self.search_params(10 * max(1, self.rerank), None)
        return {
            "backend": "milvus",
            "count": count,
            "deleted": deleted,
            "dim": self.settings.dim,
            "kind": f"milvus_{plan.index_type.lower()}",
            "factory": f"{plan.index_type}({params})",
            "nlist": plan.nlist,
            "nprobe": search.get("nprobe"),
            "ef": search.get("ef"),
            "rerank": self.rerank,
            "training": False,
            "snapshot_seq": 0,
            "seq": 0,
            "milvus_uri": self.milvus.uri,
            "collection": self.milvus.collection,
            "consistency": "writes acknowledged after a Strong read; reads Eventually",
            "search_calls": self.milvus.search_calls,
            "gathered_calls": self.gatherer.calls if self.gatherer else 0,
            "gathered_requests": self.gatherer.requests if self.gatherer else 0,
        }
