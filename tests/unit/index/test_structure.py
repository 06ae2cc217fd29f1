"""The structure choice: candidates, their memory, held-out queries, the budget, the report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from glimpse.index import service as index_service
from glimpse.index.config import Settings
from glimpse.index.index import VectorIndex
from glimpse.index.live import build_empty
from glimpse.index.service import IndexService
from glimpse.index.store import NewItem
from glimpse.index.structure import candidates
from tests.unit.index.helpers import as_stored, clustered

DIM = 32
N = 3000


@pytest.fixture(autouse=True)
def _lower_target(monkeypatch: pytest.MonkeyPatch) -> None:
    # These checks are sized for a 0.9 target, 100 held out of 3000 clustered vectors.
    monkeypatch.setattr(index_service, "TUNE_TARGET", 0.9)
    monkeypatch.setattr(index_service, "TUNE_SAMPLE", 100)


def _open(tmp_path: Path, **overrides: Any) -> IndexService:
    values: dict[str, Any] = dict(
        data_dir=tmp_path, dim=DIM, snapshot_interval_s=0, snapshot_every_writes=0,
        train_threshold=N,
    )
    values.update(overrides)
    service = IndexService(Settings(**values))
    service.open()
    return service


def _fill(service: IndexService, n: int = N) -> np.ndarray:
    x = as_stored(clustered(n, DIM, clusters=60)).astype(np.float16)
    outcomes = service.add([NewItem(f"k{i}", f"p{i}", {}, x[i]) for i in range(n)])
    assert service.index is not None
    assert service.index.wait_training(300) and service.index.training_error is None
    return np.asarray([o.id for o in outcomes], dtype=np.int64)


def test_the_candidates_and_their_memory_estimates() -> None:
    n = 8000
    found = candidates(n, DIM, rule_nlist=128, rule_m=8, rule_nbits=4,
                       hnsw_quantizer_from=1024)
    assert [c.factory for c in found] == [
        "IVF128,PQ8x4", "IVF32,PQ8x4", "IVF128,PQ16x4fs", "IVF32,PQ16x4fs", "HNSW32_SQ8",
    ]
    x = clustered(n, DIM, clusters=80)
    for c in found:
        index = build_empty(c.factory, DIM)
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.cp.niter = 2
        index.train(x[:5000])
        index.add_with_ids(x, np.arange(1, n + 1))
        measured = len(faiss.serialize_index(index)) / n
        # The budget is checked against the estimate: it must be close to what is stored.
        assert abs(measured - c.bytes_per_vector) <= 0.15 * measured, (c, measured)


def test_training_keeps_the_cheapest_candidate_reaching_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    built: list[tuple[int, set[int]]] = []
    real_build = VectorIndex.build_candidate

    def spy(self: VectorIndex, factory: str, sample: np.ndarray, seq: int, held: np.ndarray,
            centroids: dict[int, np.ndarray]) -> Any:
        live, held_ids, held_vectors = real_build(self, factory, sample, seq, held, centroids)
        # Does the candidate hold a held-out row? Search it widely for their own vectors.
        found = self.candidate_ids(live, held_vectors.astype(np.float32), 1, 4096, 0)
        built.append((live.ntotal, set(held.tolist()) & set(found.ravel().tolist())))
        return live, held_ids, held_vectors

    monkeypatch.setattr(VectorIndex, "build_candidate", spy)
    caplog.set_level(logging.INFO, logger="glimpse.index")
    service = _open(tmp_path, max_bytes_per_vector=10_000)
    try:
        ids = _fill(service)
        stats = service.stats()
        structure = stats["structure"]
        report = structure["candidates"]
        assert {r["family"] for r in report} == {"ivfpq", "ivfpq-fastscan", "hnsw"}
        assert structure["held_out"] == 100 and structure["target"] == 0.9
        # Every candidate was built without the held-out rows, and none of them found one.
        assert len(built) == len(report)
        assert all(ntotal == N - 100 and not leaked for ntotal, leaked in built)
        reached = [r for r in report if r["reached"]]
        assert reached and all(r["recall_at_k"] >= 0.9 for r in reached)
        cheapest = min(reached, key=lambda r: r["one_query_ms"])
        assert stats["factory"] == structure["chosen"] == cheapest["factory"]
        assert "cheapest one-query search" in structure["why"]
        # Its tuned setting is applied; the held-out rows are back in the index.
        assert stats["search_defaults_source"] == "tuned"
        assert (stats["rerank"], stats["tuned"]["rerank"]) == (cheapest["rerank"],) * 2
        assert stats["ntotal"] == N == stats["count"]
        q = as_stored(clustered(N, DIM, clusters=60))[:50]
        assert service.index is not None
        top10 = service.index.search_raw(q, 10)[1]
        assert np.mean([i in row for i, row in zip(ids[:50], top10, strict=True)]) >= 0.9
        assert any("chose " + cheapest["factory"] in r.getMessage() for r in caplog.records)
    finally:
        service.close()
    # The report survives a restart (it is in the snapshot's manifest).
    again = _open(tmp_path, max_bytes_per_vector=10_000)
    try:
        assert again.stats()["structure"]["chosen"] == cheapest["factory"]
        assert again.stats()["rerank"] == cheapest["rerank"]
    finally:
        again.close()


def test_the_memory_budget_is_respected(tmp_path: Path) -> None:
    # At 3000 x 32: IVF64,PQ8x4 ~14.7 B, IVF16,PQ8x4 ~12.7 B, the fast-scan ones 16.7-18.7 B,
    # HNSW ~310 B per vector.
    service = _open(tmp_path, max_bytes_per_vector=16)
    try:
        _fill(service)
        structure = service.stats()["structure"]
        skipped = [r for r in structure["candidates"] if "skipped" in r]
        tried = [r for r in structure["candidates"] if "skipped" not in r]
        assert {r["family"] for r in skipped} == {"ivfpq-fastscan", "hnsw"}
        assert all(r["bytes_per_vector"] > 16 for r in skipped)
        assert tried and all(r["bytes_per_vector"] <= 16 for r in tried)
        chosen = next(r for r in tried if r["factory"] == structure["chosen"])
        assert chosen["bytes_per_vector"] <= 16
    finally:
        service.close()


def test_a_forced_factory_is_trained_as_given(tmp_path: Path) -> None:
    service = _open(tmp_path, factory="IVF16,PQ8x4")
    try:
        _fill(service)
        stats = service.stats()
        assert stats["factory"] == "IVF16,PQ8x4" and stats.get("structure") is None
    finally:
        service.close()


@pytest.mark.parametrize("factory", ["IVF16,PQ16x4fs", "HNSW32_SQ8"])
def test_fast_scan_and_hnsw_indexes_survive_a_restart(tmp_path: Path, factory: str) -> None:
    service = _open(tmp_path, autotune=False, train_threshold=10**6)
    try:
        x = as_stored(clustered(2000, DIM, clusters=40)).astype(np.float16)
        ids = [o.id for o in service.add([NewItem(f"k{i}", f"p{i}", {}, x[i])
                                          for i in range(2000)])]
        service.rebuild(factory, wait=True)
        assert service.delete(ids[0])
        q = as_stored(clustered(30, DIM, clusters=40, seed=3))
        assert service.index is not None
        before = service.index.search_raw(q, 10, nprobe=8)
        kind = service.index.live.kind
        assert kind in ("ivfpq-fastscan", "hnsw")
    finally:
        service.close()
    again = _open(tmp_path, autotune=False, train_threshold=10**6)
    try:
        assert again.index is not None and again.index.live.kind == kind
        assert again.stats()["last_training"] is None  # loaded, not retrained
        after = again.index.search_raw(q, 10, nprobe=8)
        np.testing.assert_array_equal(after[1], before[1])
        assert ids[0] not in after[1]
    finally:
        again.close()
