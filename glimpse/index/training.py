"""Background (re)training of the index: the factory a training builds, its sample and
parameters, the candidates of a structure choice, catch-up with the rows written meanwhile and
the atomic swap; and ``select_structure``, which measures the candidates ``structure.py`` names.

``TrainingMixin`` is one part of ``VectorIndex`` (index.py): the state it reads is made there.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np

from glimpse.index.factory import AUTO, parse_factory
from glimpse.index.live import LiveIndex, apply_changes, build_empty, release_free_memory
from glimpse.index.rules import (
    HNSW_QUANTIZER_MIN_NLIST,
    MIN_TRAIN,
    auto_factory,
    auto_nlist,
    auto_pq,
    breadth_grid,
)
from glimpse.index.search import SearchMixin
from glimpse.index.structure import Selection, SelectionConfig, candidates, one_query_ms
from glimpse.index.tuning import tune_search

log = logging.getLogger("glimpse.index")

_F32 = np.float32


class TrainingMixin(SearchMixin):
    """The training half of ``VectorIndex``."""

    writer: threading.Lock
    train_threshold: int
    retrain_growth: float
    factory_config: str | None
    factory_override: str | None
    applied_seq: int
    training: bool
    training_error: str | None
    last_training: dict[str, Any]
    on_swap: list[Callable[[], None]]
    selection: SelectionConfig | None
    selected: dict[str, Any] | None
    _train_thread: threading.Thread | None
    _train_done: threading.Event

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
            apply_changes(new.index, changes)
            seq = changes.last_seq
        with self.writer:
            changes = self.store.changes_since(seq)
            apply_changes(new.index, changes)
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


def select_structure(index: TrainingMixin, seq: int, n: int, config: SelectionConfig
                     ) -> Selection:
    """Build each candidate that fits the memory budget on the collection's rows up to ``seq``
    minus a held-out sample, tune its nprobe (efSearch) and re-rank depth on those held-out
    queries against their exact neighbours, time its tuned setting one query at a time, and
    keep the cheapest that reaches ``config.target``. None reaching: the rule's candidate, with
    the rule's search defaults (reported ``reached: false``)."""
    started = time.perf_counter()
    per_byte = 16 if index.table.keep_vectors else 32
    rule_m, rule_nbits = auto_pq(index.dim, n, per_byte)
    every = candidates(n, index.dim, rule_nlist=auto_nlist(n), rule_m=rule_m,
                       rule_nbits=rule_nbits, hnsw_quantizer_from=HNSW_QUANTIZER_MIN_NLIST)
    budget = config.max_bytes_per_vector
    fits = [c for c in every if c.bytes_per_vector <= budget]
    report: list[dict[str, Any]] = [
        {"factory": c.factory, "family": c.family, "bytes_per_vector": round(c.bytes_per_vector, 1),
         "skipped": f"over INDEX_MAX_BYTES_PER_VECTOR ({budget:g})"}
        for c in every if c.bytes_per_vector > budget
    ]
    if not fits:
        # Nothing fits: the smallest, so that a training still happens; the report says so.
        fits = [min(every, key=lambda c: c.bytes_per_vector)]
        report = [r for r in report if r["factory"] != fits[0].factory]

    # Held-out queries: drawn from the collection, then kept out of every candidate's training
    # sample and lists, so none finds itself (a vector's own row flatters recall).
    live_ids = index.table.live_ids()
    rng = np.random.default_rng(n)
    held = np.sort(rng.choice(live_ids, size=min(config.sample, len(live_ids) // 2),
                              replace=False))
    queries = index.stored_vectors(held)
    k = config.k
    truth = index.exact_ids(queries, k, held)
    want = max(index.prepare_training(build_empty(c.factory, index.dim)) for c in fits)
    sample = index.training_vectors(want, n, exclude=held)

    centroids: dict[int, np.ndarray] = {}
    reaching: list[tuple[Any, Any, dict[str, Any]]] = []  # (search, built, record)
    fallback: Any = None
    timed = queries[: config.timed_queries]
    for candidate in fits:
        built_at = time.perf_counter()
        live, held_ids, held_vectors = index.build_candidate(candidate.factory, sample, seq,
                                                             held, centroids)
        build_s = time.perf_counter() - built_at

        def search(q: np.ndarray, kk: int, nprobe: int, rerank: int,
                   live: LiveIndex = live) -> np.ndarray:
            return index.candidate_ids(live, q, kk, nprobe, rerank)

        index.limit_threads()
        result = tune_search(search, queries, truth, k=k, target=config.target,
                             nprobes=breadth_grid(live.hnsw, live.nlist), reranks=config.reranks)
        record: dict[str, Any] = {
            "factory": candidate.factory, "family": candidate.family,
            "bytes_per_vector": round(candidate.bytes_per_vector, 1),
            "build_s": round(build_s, 2), "nprobe": result.nprobe, "rerank": result.rerank,
            "recall_at_k": round(result.recall_at_k, 4), "reached": result.reached,
            "settings_tried": len(result.trials),
        }
        if result.reached:
            reaching.append((search, (live, held_ids, held_vectors), record))
        if fallback is None:
            fallback = (live, held_ids, held_vectors, record)
        report.append(record)

    # The reaching candidates are timed in turns, three rounds, each keeping its best: a load
    # change on a shared machine then hits them all, instead of whichever was timed then.
    for _ in range(3):
        for search, _built, record in reaching:
            ms = one_query_ms(search, timed, k, record["nprobe"], record["rerank"], passes=1)
            record["one_query_ms"] = round(min(ms, record.get("one_query_ms", math.inf)), 4)
    index.limit_threads()
    best = min(reaching, key=lambda entry: entry[2]["one_query_ms"], default=None)
    for record in report:
        log.info("structure candidate: %s", record)

    if best is not None:
        _search, (live, held_ids, held_vectors), chosen = best
        reached = [r for r in report if r.get("reached")]
        why = (f"the cheapest one-query search ({chosen['one_query_ms']} ms) of the "
               f"{len(reached)} of {len(fits)} candidates within {budget:g} B/vector that "
               f"reached recall@{k} {config.target} on {len(held)} held-out vectors")
    else:
        live, held_ids, held_vectors, chosen = fallback
        why = (f"no candidate within {budget:g} B/vector reached recall@{k} {config.target} on "
               f"{len(held)} held-out vectors: the rule's structure, with the rule's defaults")
    structure = {
        "chosen": live.factory, "why": why, "target": config.target, "k": k,
        "held_out": len(held), "max_bytes_per_vector": budget,
        "took_s": round(time.perf_counter() - started, 2), "candidates": report,
    }
    summary = {
        "nprobe": chosen["nprobe"], "rerank": chosen["rerank"],
        "recall_at_k": chosen["recall_at_k"], "k": k,
        "ms_per_query": chosen.get("one_query_ms"), "target": config.target,
        "reached": best is not None, "sample": len(held), "at": time.time(),
        "structure": structure,
    }
    log.info("chose %s: %s", live.factory, why)
    return Selection(live, held_ids, held_vectors, summary)
