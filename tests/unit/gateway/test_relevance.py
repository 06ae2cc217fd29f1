"""The adaptive relevance cutoff on vectors whose relevance is known."""

from __future__ import annotations

import numpy as np

from glimpse.gateway.relevance import CANDIDATES, cutoff


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _top(query: np.ndarray, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = base @ query
    order = np.argsort(-scores)[:CANDIDATES]
    return order, scores[order]


def test_planted_copies_clear_the_cutoff_and_nothing_else_does() -> None:
    rng = np.random.default_rng(0)
    base = _unit(rng.normal(size=(3000, 16)))
    found = wrong = 0
    for _ in range(40):
        query = _unit(rng.normal(size=16))
        copies = _unit(query + 0.05 * rng.normal(size=(2, 16)))
        order, scores = _top(query, np.vstack([base, copies]))
        cut = cutoff(scores.tolist(), complete=False)
        chosen = set(order[: cut.relevant_count].tolist())
        found += len(chosen & {3000, 3001})
        wrong += len(chosen - {3000, 3001})
    assert found >= 0.9 * 80
    assert wrong <= 4


def test_a_query_with_nothing_like_it_gets_no_good_match() -> None:
    rng = np.random.default_rng(1)
    base = _unit(rng.normal(size=(3000, 16)))
    quiet = sum(
        cutoff(_top(_unit(rng.normal(size=16)), base)[1].tolist(), complete=False).no_good_match
        for _ in range(50)
    )
    assert quiet >= 45


def test_the_cutoff_follows_any_scale_of_the_distances() -> None:
    rng = np.random.default_rng(2)
    base = _unit(rng.normal(size=(2000, 8)))
    query = _unit(rng.normal(size=8))
    base[0] = _unit(query + 0.02 * rng.normal(size=8))
    _, scores = _top(query, base)
    cut = cutoff(scores.tolist(), complete=False)
    # A model whose scores sit ten times nearer 1 ranks the same and must cut the same.
    squeezed = cutoff((1 - (1 - scores) / 10).tolist(), complete=False)
    assert cut.relevant_count == squeezed.relevant_count == 1
    assert cut.score is not None and squeezed.score is not None
    assert np.isclose(1 - squeezed.score, (1 - cut.score) / 10)


def test_too_few_candidates_judge_nothing_and_equal_scores_match_nothing() -> None:
    few = cutoff([0.9, 0.8, 0.7], complete=True)
    assert few.score is None and few.relevant_count == 3 and not few.no_good_match
    flat = cutoff([0.5] * 100, complete=False)
    assert flat.relevant_count == 0 and flat.no_good_match


def test_a_whole_small_collection_is_fitted_on_its_nearer_half() -> None:
    rng = np.random.default_rng(3)
    base = _unit(rng.normal(size=(60, 16)))
    query = _unit(rng.normal(size=16))
    base[0] = _unit(query + 0.03 * rng.normal(size=16))
    _, scores = _top(query, base)
    assert cutoff(scores.tolist(), complete=True).relevant_count == 1


def test_a_group_of_copies_counts_whole_even_when_its_members_are_close() -> None:
    # A burst of 30 near-identical photos: each is as near the next as to the query, so only the
    # test at the group's last member sees the gap; every member must still count.
    rng = np.random.default_rng(4)
    base = _unit(rng.normal(size=(3000, 16)))
    query = _unit(rng.normal(size=16))
    burst = _unit(query + 0.02 * rng.normal(size=(30, 16)))
    order, scores = _top(query, np.vstack([base, burst]))
    cut = cutoff(scores.tolist(), complete=False)
    assert set(order[: cut.relevant_count].tolist()) == set(range(3000, 3030))


def test_the_cutoff_score_separates_the_counted_hits_from_the_rest() -> None:
    rng = np.random.default_rng(5)
    base = _unit(rng.normal(size=(3000, 16)))
    for copies in (0, 1, 3):
        query = _unit(rng.normal(size=16))
        planted = _unit(query + 0.03 * rng.normal(size=(copies, 16))) if copies else base[:0]
        _, scores = _top(query, np.vstack([base, planted]))
        cut = cutoff(scores.tolist(), complete=False)
        assert cut.score is not None
        assert cut.relevant_count == int(np.count_nonzero(scores > cut.score)) == copies
