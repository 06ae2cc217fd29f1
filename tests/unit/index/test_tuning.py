"""The auto-tuner: recall@k on hand-made cases, exact ground truth, and the search it runs."""

from __future__ import annotations

import time
from collections.abc import Callable

import faiss
import numpy as np
import pytest

from glimpse.index.tuning import (
    exact_top_k,
    excluding_self,
    recall_at_k,
    sample_holdout,
    tune_search,
)


def clustered_unit_vectors(n: int, d: int, *, clusters: int = 32, seed: int = 0) -> np.ndarray:
    """Points around random centres on the sphere, like embeddings of a photo collection."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# --- recall_at_k ---------------------------------------------------------------------------


def test_recall_is_one_when_the_same_ids_come_back_in_any_order() -> None:
    truth = np.array([[1, 2, 3], [4, 5, 6]])
    found = np.array([[3, 1, 2], [4, 6, 5]])
    assert recall_at_k(found, truth, 3) == 1.0


def test_recall_counts_the_share_of_true_neighbours_found() -> None:
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[1, 9, 9, 2], [0, 0, 0, 8]])
    # Query 0 finds 2 of 4, query 1 finds 1 of 4.
    assert recall_at_k(found, truth, 4) == pytest.approx((2 / 4 + 1 / 4) / 2)


def test_recall_at_1_looks_only_at_the_first_column_of_each() -> None:
    truth = np.array([[1, 2], [3, 4], [5, 6]])
    found = np.array([[1, 9], [4, 3], [5, 5]])
    assert recall_at_k(found, truth, 1) == pytest.approx(2 / 3)
    assert recall_at_k(found, truth, 2) == pytest.approx((1 / 2 + 2 / 2 + 1 / 2) / 3)


def test_missing_hits_marked_minus_one_never_count() -> None:
    truth = np.array([[1, 2, 3]])
    assert recall_at_k(np.array([[-1, -1, 1]]), truth, 3) == pytest.approx(1 / 3)


def test_a_truth_row_shorter_than_k_is_judged_on_its_real_neighbours() -> None:
    # A collection of 2 items asked for k=3: exact search pads with -1 too.
    truth = np.array([[7, 8, -1]])
    assert recall_at_k(np.array([[8, 7, -1]]), truth, 3) == 1.0
    assert recall_at_k(np.array([[8, -1, -1]]), truth, 3) == 0.5


def test_recall_rejects_shapes_that_do_not_match() -> None:
    with pytest.raises(ValueError, match="one row per query"):
        recall_at_k(np.zeros((2, 3)), np.zeros((3, 3)), 3)
    with pytest.raises(ValueError, match="fewer than k"):
        recall_at_k(np.zeros((2, 3)), np.zeros((2, 2)), 3)
    with pytest.raises(ValueError, match="at least 1"):
        recall_at_k(np.zeros((2, 3)), np.zeros((2, 3)), 0)


# --- exact ground truth --------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_exact_top_k_agrees_with_faiss_flat_search(metric: str) -> None:
    rng = np.random.default_rng(1)
    base = rng.standard_normal((700, 16)).astype(np.float32)
    queries = rng.standard_normal((20, 16)).astype(np.float32)
    flat = faiss.IndexFlatIP(16) if metric == "ip" else faiss.IndexFlatL2(16)
    flat.add(base)
    _, expected = flat.search(queries, 5)
    # A chunk smaller than the base checks the merge across chunks.
    got = exact_top_k(base, queries, 5, metric=metric, chunk=128)  # type: ignore[arg-type]
    assert np.array_equal(got, expected)


def test_exact_top_k_maps_rows_to_ids_excludes_and_pads() -> None:
    base = np.eye(3, dtype=np.float32)
    ids = np.array([10, 20, 30])
    got = exact_top_k(base, base[:2], 4, ids=ids, exclude=np.array([10, -1]))
    assert got[0, 0] != 10 and 10 not in got[0]
    assert got[1, 0] == 20
    assert (got[:, 3] == -1).all() and (got[0, 2] == -1)


def test_holdout_truth_leaves_each_query_out_of_its_own_neighbours() -> None:
    x = clustered_unit_vectors(500, 16)
    ids = np.arange(1000, 1500)
    holdout = sample_holdout(x, ids, n=40, k=5, seed=3)
    assert holdout.queries.shape == (40, 16) and holdout.truth.shape == (40, 5)
    assert len(set(holdout.ids.tolist())) == 40
    assert np.array_equal(holdout.queries, x[holdout.ids - 1000])
    assert not (holdout.truth == holdout.ids[:, None]).any()
    flat = faiss.IndexFlatIP(16)
    flat.add(x)
    _, with_self = flat.search(holdout.queries, 6)
    # Without itself, each query's true neighbours are the next five of the full ranking.
    assert np.array_equal(holdout.truth, with_self[:, 1:] + 1000)


def test_excluding_self_drops_the_query_id_and_keeps_k_hits() -> None:
    def search(queries: np.ndarray, k: int, nprobe: int, rerank: int) -> np.ndarray:
        assert k == 3
        return np.array([[5, 1, 2], [3, 4, 6]])

    wrapped = excluding_self(search, np.array([5, 9]))
    assert wrapped(np.zeros((2, 4), np.float32), 2, 1, 0).tolist() == [[1, 2], [3, 4]]


# --- tune_search with a scripted search ----------------------------------------------------


def scripted_search(
    recall_of: dict[tuple[int, int], float], calls: list[tuple[int, int]], cost: float = 0.0
):
    """A search whose recall@10 per (nprobe, rerank) is given; with a ``cost`` (seconds) its time
    grows with both."""
    truth = np.arange(100 * 10).reshape(100, 10)

    def search(queries: np.ndarray, k: int, nprobe: int, rerank: int) -> np.ndarray:
        if len(queries) == len(truth):
            calls.append((nprobe, rerank))
        # Costs far apart, so that a loaded CI machine cannot swap their order.
        time.sleep(cost * nprobe * (1 + rerank) ** 2)
        hits = round(recall_of[(nprobe, rerank)] * len(truth))
        found = np.full((len(queries), k), -1, dtype=np.int64)
        found[:hits] = truth[:hits, :k]
        return found

    return search, truth


NPROBES = (1, 2, 4, 8, 16, 32)
RERANKS = (0, 2, 4)


def grid(recall: Callable[[int, int], float]) -> dict[tuple[int, int], float]:
    return {(p, r): recall(p, r) for p in NPROBES for r in RERANKS}


def test_tuner_picks_the_cheapest_reaching_setting_without_trying_the_whole_grid() -> None:
    # PQ alone caps at 0.8; re-ranking lifts the cap; more lists raise recall up to the cap.
    def recall(nprobe: int, rerank: int) -> float:
        cap = {0: 0.8, 2: 0.97, 4: 0.99}[rerank]
        return min(cap, 0.3 + 0.1 * nprobe)

    calls: list[tuple[int, int]] = []
    search, truth = scripted_search(grid(recall), calls, cost=0.002)
    result = tune_search(
        search,
        np.zeros((100, 8), np.float32),
        truth,
        k=10,
        target=0.95,
        nprobes=NPROBES,
        reranks=RERANKS,
    )
    # rerank 2 reaches 0.95 first at nprobe 8 (0.3 + 0.8 capped at 0.97); rerank 4 needs the
    # same nprobe and costs more.
    assert (result.nprobe, result.rerank, result.reached) == (8, 2, True)
    assert result.recall_at_k == pytest.approx(0.97)
    assert result.target == 0.95
    assert len(set(calls)) < len(NPROBES) * len(RERANKS)
    assert all(t["reached"] == (t["recall_at_k"] >= 0.95) for t in result.trials)
    # The deeper re-rank was never walked past the bound found by the shallower one.
    assert not any(r == 4 and p > 8 for p, r in calls)


def test_walk_up_nprobe_stops_once_recall_has_flattened_out() -> None:
    # PQ caps recall at 0.5 whatever the lists visited; the dear nprobe 8..32 are never tried.
    calls: list[tuple[int, int]] = []
    search, truth = scripted_search(grid(lambda p, r: 0.5 if r == 0 else 1.0), calls, 0.002)
    result = tune_search(
        search,
        np.zeros((100, 8), np.float32),
        truth,
        nprobes=NPROBES,
        reranks=RERANKS,
    )
    assert (result.nprobe, result.rerank) == (1, 2)
    assert {p for p, r in calls if r == 0} == {1, 2, 4}


def test_tuner_says_when_the_target_is_out_of_reach() -> None:
    calls: list[tuple[int, int]] = []
    search, truth = scripted_search(grid(lambda p, r: min(0.9, 0.1 * p + 0.05 * r)), calls)
    result = tune_search(
        search,
        np.zeros((100, 8), np.float32),
        truth,
        target=0.99,
        nprobes=NPROBES,
        reranks=RERANKS,
    )
    assert result.reached is False
    assert result.recall_at_k == pytest.approx(0.9)


def test_tuner_rejects_bad_arguments() -> None:
    search, truth = scripted_search(grid(lambda p, r: 1.0), [])
    queries = np.zeros((100, 8), np.float32)
    with pytest.raises(ValueError, match="target"):
        tune_search(search, queries, truth, target=1.5)
    with pytest.raises(ValueError, match="at least one"):
        tune_search(search, queries, truth, nprobes=())
    with pytest.raises(ValueError, match="row count"):
        tune_search(search, queries[:5], truth)


# --- tune_search on a real Faiss IVF-PQ index ----------------------------------------------


def test_tuner_reaches_its_target_on_a_real_ivfpq_index() -> None:
    d, n = 32, 6000
    x = clustered_unit_vectors(n, d, clusters=40)
    ivfpq = faiss.index_factory(d, "IVF64,PQ8x4fs", faiss.METRIC_INNER_PRODUCT)
    ivfpq.train(x)
    refined = faiss.IndexRefineFlat(ivfpq)
    refined.add(x)
    holdout = sample_holdout(x, n=150, k=10, seed=7)

    def search(queries: np.ndarray, k: int, nprobe: int, rerank: int) -> np.ndarray:
        ivf_params = faiss.SearchParametersIVF(nprobe=nprobe)
        if rerank == 0:
            _, found = ivfpq.search(queries, k, params=ivf_params)
        else:
            params = faiss.IndexRefineSearchParameters(
                k_factor=float(rerank), base_index_params=ivf_params
            )
            _, found = refined.search(queries, k, params=params)
        return found

    tuned_search = excluding_self(search, holdout.ids)
    result = tune_search(tuned_search, holdout.queries, holdout.truth, k=10, target=0.9)
    assert result.reached, result.trials
    assert result.recall_at_k >= 0.9
    # The chosen setting, searched again, measures what the tuner says.
    again = recall_at_k(
        tuned_search(holdout.queries, 10, result.nprobe, result.rerank), holdout.truth, 10
    )
    assert again == pytest.approx(result.recall_at_k)
    # 4-bit PQ alone cannot reach 0.9 here, so the tuner had to re-rank.
    assert result.rerank > 0
    assert result.ms_per_query > 0
