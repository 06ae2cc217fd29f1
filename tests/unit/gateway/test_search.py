"""Weighted terms, the paging window and the public result shape."""

from __future__ import annotations

import numpy as np
import pytest

from glimpse.contracts.errors import GlimpseError
from glimpse.contracts.gateway import SearchResponse
from glimpse.gateway.search import by_date, check_window, combine_terms, search_answer


def unit(v: list[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float32)
    return a / np.linalg.norm(a)


def test_single_term_is_its_unit_vector() -> None:
    v = np.array([3.0, 4.0], dtype=np.float32)
    assert np.allclose(combine_terms([v], [2.5]), [0.6, 0.8])


def test_terms_are_normalised_before_weighting() -> None:
    # A long vector must not outweigh a short one: only weights count.
    q = combine_terms([np.array([10.0, 0.0]), np.array([0.0, 0.1])], [1.0, 1.0])
    assert np.allclose(q, unit([1, 1]), atol=1e-6)


def test_negative_weight_steers_away() -> None:
    a, b = unit([1, 0.2]), unit([0.2, 1])
    q = combine_terms([a, b], [1.0, -0.5])
    assert float(q @ b) < float(a @ b)
    assert abs(float(np.linalg.norm(q)) - 1) < 1e-6


def test_cancelling_terms_are_a_422() -> None:
    a = unit([1, 2])
    with pytest.raises(GlimpseError) as info:
        combine_terms([a, a], [1.0, -1.0])
    assert info.value.status == 422
    assert info.value.message.startswith("terms: The weighted terms cancel out")


def test_window() -> None:
    check_window(20, 980, 1000)
    with pytest.raises(GlimpseError):
        check_window(20, 981, 1000)


def test_answer_pages_and_matches_the_public_shape() -> None:
    hits = [
        {"id": i, "score": 1 - i / 10, "path": f"p/{i}.jpg", "meta": {"width": 4, "height": 3}}
        for i in range(5)
    ]
    body = search_answer(
        hits, asked=5, relevance="all", k=2, offset=1, encode_ms=1.0, search_ms=2.0,
        total_ms=3.5, model="m",
    )
    parsed = SearchResponse.model_validate(body)
    assert [r.id for r in parsed.results] == [1, 2]
    assert parsed.results[0].image_url == "/images/1"
    assert parsed.results[0].thumbnail_url == "/images/1/thumbnail"
    assert (parsed.results[0].width, parsed.results[0].height) == (4, 3)
    assert set(body) == {
        "results", "relevance", "sort", "relevant_count", "no_good_match", "cutoff_score",
        "total_ms", "timings", "model",
    }
    assert set(body["results"][0]) == {
        "id", "score", "relevant", "path", "image_url", "thumbnail_url", "width", "height",
        "taken",
    }


def test_by_date_orders_dated_hits_and_keeps_undated_ones_after_in_score_order() -> None:
    hits = [
        {"id": 0, "meta": {"taken_ts": 300.0}},
        {"id": 1, "meta": {}},
        {"id": 2, "meta": {"taken_ts": 100}},
        {"id": 3, "meta": {"taken_ts": "not a date"}},
        {"id": 4, "meta": {"taken_ts": 300.0}},
    ]
    assert [h["id"] for h in by_date(hits, newest=True)] == [0, 4, 2, 1, 3]
    assert [h["id"] for h in by_date(hits, newest=False)] == [2, 0, 4, 1, 3]
