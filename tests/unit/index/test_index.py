"""The Faiss wrapper: parameter rules, exact and IVF-PQ search, re-rank, training with catch-up."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest

from glimpse.index.config import Settings
from glimpse.index.live import GpuRunner, build_empty
from glimpse.index.locks import RWLock
from glimpse.index.rules import auto_factory, auto_nlist, auto_nprobe, auto_pq
from glimpse.index.service import IndexService
from glimpse.index.store import NewItem
from tests.unit.index.helpers import as_stored, clustered, recall_at

DIM = 32


def test_parameter_rules() -> None:
    assert auto_nlist(1_000_000) == 4096  # 8·√N = 8000, inside 4·√N..16·√N
    assert auto_nlist(50_000) == 1024  # capped at N/39 = 1282
    assert auto_nlist(10) == 1
    assert auto_pq(512, 1_000_000) == (32, 8)
    assert auto_pq(64, 5_000) == (16, 4)
    assert auto_pq(30, 20_000) == (6, 8)  # M divides the dimension (30/4 -> 6)
    assert auto_factory(500, 512) == "Flat"
    # From 1024 lists on, an HNSW graph finds the nearest centroids (not on a GPU copy).
    assert auto_factory(1_000_000, 512) == "IVF4096_HNSW32,PQ32x8"
    assert auto_factory(1_000_000, 512, hnsw_quantizer=False) == "IVF4096,PQ32x8"
    assert auto_factory(20_000, 64) == "IVF512,PQ16x8"
    # The low-memory setting halves the code bytes (not below min(16, dim/4) sub-quantizers).
    assert auto_pq(512, 1_000_000, 32) == (16, 8)
    assert auto_factory(1_000_000, 512, 32) == "IVF4096_HNSW32,PQ16x8"
    assert auto_pq(64, 5_000, 32) == (16, 4)
    assert auto_nprobe(4096) == 64 and auto_nprobe(8) == 8
    assert build_empty("IVF4096,PQ32x8", 512).nlist == 4096


def test_a_bad_factory_string_names_the_problem() -> None:
    with pytest.raises(ValueError, match="Nonsense is not a stage this service builds"):
        build_empty("IVF12,Nonsense", DIM)


def test_cuda_without_gpu_support_is_a_clear_error_at_start(tmp_path: Path) -> None:
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        pytest.skip("this faiss has a GPU")
    with pytest.raises(RuntimeError, match="INDEX_DEVICE=cuda.*no GPU support"):
        GpuRunner()
    with pytest.raises(RuntimeError, match="faiss-gpu"):
        IndexService(Settings(data_dir=tmp_path, dim=DIM, device="cuda"))


def test_rw_lock_lets_readers_share_and_a_writer_wait() -> None:
    lock = RWLock()
    order: list[str] = []
    with lock.read(), lock.read():  # two readers at once
        writer = threading.Thread(target=lambda: _write(lock, order))
        writer.start()
        time.sleep(0.05)
        order.append("readers done")
    writer.join(5)
    assert order == ["readers done", "writer"]


def _write(lock: RWLock, order: list[str]) -> None:
    with lock.write():
        order.append("writer")


def _open(tmp_path: Path, **overrides: object) -> IndexService:
    values: dict[str, object] = dict(
        data_dir=tmp_path, dim=DIM, snapshot_interval_s=0, snapshot_every_writes=0,
        train_threshold=10**6, autotune=False,
    )
    values.update(overrides)
    service = IndexService(Settings(**values))  # type: ignore[arg-type]
    service.open()
    return service


def _add(service: IndexService, x: np.ndarray, start: int = 0) -> np.ndarray:
    stored = as_stored(x).astype(np.float16)
    outcomes = service.add(
        [NewItem(f"k{start + i}", f"p{start + i}", {}, stored[i]) for i in range(len(x))]
    )
    return np.asarray([o.id for o in outcomes], dtype=np.int64)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[IndexService]:
    s = _open(tmp_path)
    yield s
    s.close()


def test_exact_search_equals_a_plain_index_flat_ip(service: IndexService) -> None:
    x = clustered(3000, DIM)
    ids = _add(service, x)
    plain = faiss.IndexFlatIP(DIM)
    plain.add(as_stored(x))
    q = as_stored(clustered(50, DIM, seed=9))
    want_s, want_i = plain.search(q, 10)
    assert service.index is not None
    got_s, got_i = service.index.search_raw(q, 10)
    np.testing.assert_array_equal(got_i, ids[want_i])
    np.testing.assert_allclose(got_s, want_s, rtol=1e-5, atol=1e-6)


def test_exact_mode_on_a_trained_index_equals_index_flat_ip(service: IndexService) -> None:
    # "exact": true scans the float16 table with Faiss (vectors.py): the same ids and scores
    # as IndexFlatIP over the stored values, deleted ids left out, fewer hits than k padded.
    x = clustered(3000, DIM, clusters=60)
    ids = _add(service, x)
    assert service.rebuild("IVF32,PQ16x4", wait=True)[0]
    gone = ids[::7]
    for item_id in gone:
        assert service.delete(int(item_id))
    keep = np.ones(len(ids), dtype=bool)
    keep[::7] = False
    plain = faiss.IndexFlatIP(DIM)
    plain.add(as_stored(x)[keep])
    q = as_stored(clustered(60, DIM, clusters=60, seed=5))
    want_s, want_i = plain.search(q, 20)
    assert service.index is not None
    got_s, got_i = service.index.search_raw(q, 20, exact=True)
    np.testing.assert_array_equal(got_i, ids[keep][want_i])
    np.testing.assert_allclose(got_s, want_s, rtol=1e-5, atol=1e-6)
    # k past the live count: every live id once, then -1.
    live = int(keep.sum())
    _, all_i = service.index.search_raw(q[:2], live + 5, exact=True)
    assert sorted(all_i[0, :live].tolist()) == sorted(ids[keep].tolist())
    assert (all_i[:, live:] == -1).all()


def test_ivfpq_with_rerank_recall_and_exact_mode(service: IndexService) -> None:
    x = clustered(3000, DIM, clusters=60)
    ids = _add(service, x)
    assert service.rebuild("IVF32,PQ16x4", wait=True)[0]
    index = service.index
    assert index is not None and index.live.kind == "ivfpq" and index.live.ntotal == 3000
    q = as_stored(clustered(100, DIM, clusters=60, seed=3))
    truth = ids[faiss.knn(q, as_stored(x), 10, metric=faiss.METRIC_INNER_PRODUCT)[1]]
    pq_only = recall_at(index.search_ids(q, 10, 16, 0), truth)
    reranked = recall_at(index.search_ids(q, 10, 16, 10), truth)
    assert reranked >= 0.9 and reranked > pq_only
    exact = index.search_raw(q, 10, exact=True)[1]
    assert recall_at(exact, truth) == 1.0
    assert (index.search_ids(q, 10, 1, 10) >= -1).all()


@pytest.mark.parametrize("factory", ["IVF32,PQ16x4", "IVF32,PQ16x4fs"])
def test_the_unmasked_ivf_search_never_returns_a_deleted_id(
    service: IndexService, factory: str
) -> None:
    # The common search (live IVF index, re-rank inside Faiss) skips the live mask because the
    # lists drop deleted ids themselves: deleted items searched by their own vectors must not
    # come back, the answers must be what the masked path gives, and a k past the live count
    # pads with -1 at -inf.
    x = clustered(3000, DIM, clusters=60)
    ids = _add(service, x)
    assert service.rebuild(factory, wait=True)[0]
    index = service.index
    assert index is not None
    gone = ids[::5]
    for item_id in gone:
        assert service.delete(int(item_id))
    q = as_stored(x[::5][:200])
    got_s, got_i = index.search_raw(q, 10, nprobe=32, rerank=8)
    assert not np.isin(got_i, gone).any() and (got_i >= 0).all()
    with index.rw.read():  # the masked path: the same index, searched as a candidate is
        masked_s, masked_i = index._search_live(dataclasses.replace(index.live), q, 10, 32,
                                                False, 8)
    np.testing.assert_array_equal(got_i, masked_i)
    np.testing.assert_allclose(got_s, masked_s, rtol=1e-6)
    live = len(ids) - len(gone)
    wide_s, wide_i = index.search_raw(q[:3], live + 7, nprobe=32, rerank=1)
    assert (wide_i[:, live:] == -1).all() and np.isneginf(wide_s[:, live:]).all()
    assert sorted(wide_i[0, :live].tolist()) == sorted(set(ids.tolist()) - set(gone.tolist()))


def test_an_hnsw_coarse_quantizer_searches_the_same_lists(service: IndexService) -> None:
    x = clustered(3000, DIM, clusters=60)
    ids = _add(service, x)
    assert service.rebuild("IVF32_HNSW32,PQ16x4", wait=True)[0]
    index = service.index
    assert index is not None and index.live.kind == "ivfpq"
    params = index.live.search_params(8)
    assert index.live.search_params(8) is params  # built once per nprobe
    index.live.search_params(40)
    # SWIG hands quantizer_params back as the base class: read the HNSW ones from the cache.
    efs = {nprobe: (p.nprobe, hnsw.efSearch) for nprobe, (p, hnsw) in index.live._params.items()}
    assert efs == {8: (8, 32), 40: (40, 80)}  # efSearch 2·nprobe, at least 32
    q = as_stored(clustered(100, DIM, clusters=60, seed=3))
    truth = ids[faiss.knn(q, as_stored(x), 10, metric=faiss.METRIC_INNER_PRODUCT)[1]]
    assert recall_at(index.search_ids(q, 10, 16, 10), truth) >= 0.9
    # One query at a time (one OpenMP thread) answers what the batch answers.
    one_by_one = np.vstack([index.search_ids(row[None, :], 10, 16, 10) for row in q])
    np.testing.assert_array_equal(one_by_one, index.search_ids(q, 10, 16, 10))


def test_widen_is_numpys_float16_to_float32(service: IndexService) -> None:
    assert service.index is not None
    rng = np.random.default_rng(4)
    half = rng.standard_normal((3, 7, DIM)).astype(np.float16)
    half[0, 0, :4] = [0.0, -0.0, 65504.0, 6e-8]  # zeros, the largest and a subnormal half
    widened = service.index.widen(half)
    assert widened.dtype == np.float32 and widened.shape == half.shape
    np.testing.assert_array_equal(widened, half.astype(np.float32))


def test_training_catches_up_with_writes_made_meanwhile(service: IndexService) -> None:
    x = clustered(2000, DIM)
    ids = _add(service, x)
    index = service.index
    assert index is not None
    assert index.start_training("IVF16,PQ8x4", reason="test")
    late = _add(service, clustered(300, DIM, seed=7), start=10_000)
    for item_id in ids[:50]:
        assert service.delete(int(item_id))
    assert index.wait_training(120) and index.training_error is None
    assert index.live.kind == "ivfpq"
    assert index.live.ntotal == 2000 + 300 - 50 == index.table.count
    found = index.search_ids(as_stored(clustered(300, DIM, seed=7)), 1, 32, 10)
    assert (found[:, 0] == late).mean() > 0.95
    everything = index.search_raw(as_stored(x[:50]), 50, exact=True)[1]
    assert not set(everything.ravel().tolist()) & set(ids[:50].tolist())


def test_background_training_starts_past_the_threshold(tmp_path: Path) -> None:
    service = _open(tmp_path, train_threshold=1500)
    try:
        _add(service, clustered(1000, DIM))
        assert service.index is not None and not service.index.training
        _add(service, clustered(600, DIM, seed=1), start=1000)
        assert service.index.wait_training(120)
        assert service.index.live.kind == "ivfpq"
        assert service.index.live.trained_on == 1600
        assert service.snapshot_seq == 1600  # a fresh index is snapshotted at once
    finally:
        service.close()


def test_low_memory_setting_reranks_from_the_store(tmp_path: Path) -> None:
    x = clustered(1500, DIM)
    q = as_stored(clustered(40, DIM, seed=4))
    results = []
    for in_memory in (True, False):
        # The same re-rank depth (left unset, the low-memory setting re-ranks 32 deep).
        service = _open(tmp_path / str(in_memory), vectors_in_memory=in_memory, rerank=16)
        try:
            _add(service, x)
            service.rebuild("IVF16,PQ8x4", wait=True)
            assert service.index is not None
            assert (service.index.table.vectors is None) is (not in_memory)
            results.append(service.index.search_raw(q, 10, nprobe=8))
            exact = service.index.search_raw(q, 10, exact=True)
            results.append(exact)
        finally:
            service.close()
    np.testing.assert_array_equal(results[0][1], results[2][1])
    np.testing.assert_array_equal(results[1][1], results[3][1])


def test_tune_picks_a_setting_reaching_the_target(service: IndexService) -> None:
    _add(service, clustered(2500, DIM, clusters=60))
    service.rebuild("IVF32,PQ16x4", wait=True)
    result = service.tune(0.9, 100)
    assert result["reached"] and result["recall_at_k"] >= 0.9 and result["applied"]
    assert service.index is not None
    assert service.index.defaults.nprobe == result["nprobe"]
    assert service.stats()["tuned"]["rerank"] == result["rerank"]


def test_the_tutorials_setting_is_expressible_by_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INDEX_FACTORY", "IVF4096,PQ32x8")
    monkeypatch.setenv("INDEX_NPROBE", "48")
    monkeypatch.setenv("INDEX_DIM", "512")
    monkeypatch.setenv("INDEX_DATA_DIR", str(tmp_path))
    settings = Settings()
    service = IndexService(settings)
    service.open()
    try:
        index = service.index
        assert index is not None
        assert index.wanted_factory(10) == "IVF4096,PQ32x8"
        live = index.live
        live.ivf = build_empty("IVF4096,PQ32x8", 512)  # what a trained one reports
        assert index.nprobe_for(live, None) == 48 and index.nprobe_for(live, 7) == 7
        assert index.defaults.source == "config"
    finally:
        service.close()


def test_a_tuning_that_misses_its_target_is_not_applied(service: IndexService) -> None:
    # Unclustered vectors: 2-byte codes rank them little better than chance.
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((2500, DIM)).astype(np.float32)
    _add(service, vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    service.rebuild("IVF32,PQ4x4", wait=True)  # 2-byte codes
    assert service.index is not None
    before = (service.index.defaults.nprobe, service.index.defaults.rerank)
    # Recall@10 of 1.0 on every sampled query is out of reach of 2-byte codes.
    result = service.tune(1.0, 100)
    assert not result["reached"] and not result["applied"]
    assert (service.index.defaults.nprobe, service.index.defaults.rerank) == before
