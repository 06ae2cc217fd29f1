"""Fusion of the vector and keyword searches (glimpse/gateway/fusion.py): the order, what is
relevant, the scores of keyword hits, and the text searches that ask for it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from glimpse.gateway.fusion import RRF_K, fuse
from glimpse.gateway.relevance import MAX_RELEVANT, cutoff
from tests.unit.gateway.test_search_routes import FakeIndex, gateway

ASKED = 200


def vector_hits(planted: bool) -> list[dict[str, Any]]:
    """200 candidates whose distances grow as a power of their rank (a background); with
    ``planted``, id 0 is a near copy of the query, the one hit above the cutoff."""
    distances = [0.05 * (i + 1) ** 0.4 for i in range(ASKED)]
    if planted:
        distances[0] = 0.0005
    return [{"id": i, "score": 1.0 - d, "path": f"p/{i}.jpg", "meta": {}}
            for i, d in enumerate(distances)]


def keyword(item_id: int, rank: int) -> dict[str, Any]:
    return {"id": item_id, "path": f"k/{item_id}.jpg", "meta": {"keywords": ["x"]}, "rank": rank}


def test_the_background_alone_has_one_relevant_hit() -> None:
    scores = [h["score"] for h in vector_hits(True)]
    assert cutoff(scores, complete=False).relevant_count == 1
    assert cutoff([h["score"] for h in vector_hits(False)], complete=False).relevant_count == 0


def test_an_item_matching_both_ranks_above_items_matching_one() -> None:
    # Id 5 is the keyword search's best and near the top of the vectors: plain RRF would put
    # it above id 0 (vector rank 1, keyword rank 40), which matches both searches.
    hits, cut = fuse(vector_hits(True), [keyword(5, 1), keyword(0, 40), keyword(999, 2)],
                     asked=ASKED)
    ids = [h["id"] for h in hits]
    assert 1 / (RRF_K + 1) + 1 / (RRF_K + 6) > 1 / (RRF_K + 1) + 1 / (RRF_K + 40)
    assert ids[:3] == [0, 5, 999]
    assert ids[3:6] == [1, 2, 3]  # then the vector ranking
    assert len(hits) == ASKED + 1 and cut.relevant_count == 3
    assert cut.score == cutoff([h["score"] for h in vector_hits(True)], complete=False).score
    assert [bool(h.get("keyword")) for h in hits[:4]] == [True, True, True, False]


def test_a_keyword_hit_beyond_the_candidates_gets_the_last_candidates_score() -> None:
    hits, cut = fuse(vector_hits(False), [keyword(999, 1)], asked=ASKED)
    assert hits[0]["id"] == 999 and hits[0]["path"] == "k/999.jpg"
    assert hits[0]["score"] == vector_hits(False)[-1]["score"]
    assert hits[0]["meta"] == {"keywords": ["x"]}
    assert cut.relevant_count == 1 and not cut.no_good_match


def test_no_match_on_either_side_is_no_good_match() -> None:
    hits, cut = fuse(vector_hits(False), [], asked=ASKED)
    assert [h["id"] for h in hits] == list(range(ASKED))
    assert cut.no_good_match and not any(h.get("keyword") for h in hits)
    empty, cut = fuse([], [], asked=ASKED)
    assert empty == [] and cut.no_good_match


class KeywordIndex(FakeIndex):
    """30 vector hits of falling score; the words match id 29 (the last) and id 500. Both lists
    leave the excluded ids out, as the index does."""

    keyword_asks: list[tuple[str | None, int | None, int | None]] = []

    async def search_words(
        self, vector: np.ndarray, k: int, words: str | None, *, words_k: int | None = None,
        exclude_ids: Sequence[int] = (), detail: int | None = None, **kw: Any,
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        self.keyword_asks.append((words, words_k, detail))
        hits = await super().search(vector, k)
        found = [keyword(29, 1), keyword(500, 2)] if words else []
        return ([h for h in hits if h["id"] not in exclude_ids],
                [h for h in found if h["id"] not in exclude_ids])

    async def vector(self, item_id: int, *args: Any, **kwargs: Any) -> np.ndarray:
        return np.ones(4, dtype=np.float32)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[tuple[TestClient, KeywordIndex]]:
    with gateway(tmp_path) as (test_client, _encoder):
        state = test_client.app.state.gateway  # type: ignore[attr-defined]
        index = state.index = KeywordIndex(state.index.real)
        index.keyword_asks = []
        yield test_client, index


def test_text_searches_are_fused_unless_asked_not_to(
        client: tuple[TestClient, KeywordIndex]) -> None:
    test_client, index = client
    fused = test_client.post("/search/text", json={"query": "zanzibar", "k": 3,
                                                   "relevance": "all"}).json()
    # The cutoff keeps id 0 alone, so each of 29 (keyword rank 1, vector rank 30), 0 and 500
    # (keyword rank 2) matches one search; 29 is in both lists, so its fused score is highest.
    assert [r["id"] for r in fused["results"]] == [29, 0, 500]
    assert [r.get("keyword") for r in fused["results"]] == [True, None, True]
    assert fused["relevant_count"] == 3
    # Keyword hits as deep as the relevant ones go; records for the page alone.
    assert index.keyword_asks == [("zanzibar", MAX_RELEVANT, 3)]
    plain = test_client.post("/search/text", json={"query": "zanzibar", "k": 3,
                                                   "keywords": False}).json()
    assert [r["id"] for r in plain["results"]] == [0, 1, 2]
    assert len(index.keyword_asks) == 1
    # /search: the words of the texts that pull towards, not of those that steer away; an
    # image term is left out of the keyword hits too.
    terms = test_client.post("/search", json={"terms": [
        {"text": "zanzibar"}, {"text": "beach", "weight": 0.5}, {"text": "night", "weight": -1},
        {"image_id": 29}]})
    assert terms.status_code == 200, terms.text
    assert index.keyword_asks[-1][0] == "zanzibar beach"
    ids = [r["id"] for r in terms.json()["results"]]
    assert ids[:2] == [0, 500] and 29 not in ids


def test_a_vector_hit_past_the_detail_takes_its_record_from_the_keyword_hit() -> None:
    vector_hits = [{"id": i, "score": 1.0 - i / 100, "path": f"p/{i}", "meta": {}}
                   for i in range(3)] + [{"id": 9, "score": 0.5}]  # past the detail: no record
    keyword_hits = [{"id": 9, "rank": 1, "path": "p/zanzibar.jpg", "meta": {"width": 2}}]
    ranked, _ = fuse(vector_hits, keyword_hits, asked=200)
    nine = next(h for h in ranked if h["id"] == 9)
    assert nine == {"id": 9, "score": 0.5, "path": "p/zanzibar.jpg", "meta": {"width": 2},
                    "keyword": True}


def _reference(vector: list[dict[str, Any]], words: list[dict[str, Any]]) -> list[int]:
    """The ranking by its definition: matches first, then the fused score, then the id."""
    above = cutoff([h["score"] for h in vector], complete=len(vector) < ASKED).relevant_count
    fused: dict[int, float] = {}
    matches: dict[int, int] = {}
    for rank, hit in enumerate(vector, start=1):
        fused[hit["id"]] = 1 / (RRF_K + rank)
        matches[hit["id"]] = int(rank <= above)
    for hit in words:
        fused[hit["id"]] = fused.get(hit["id"], 0.0) + 1 / (RRF_K + hit["rank"])
        matches[hit["id"]] = matches.get(hit["id"], 0) + 1
    return sorted(fused, key=lambda i: (-matches[i], -fused[i], i))


def test_the_ranking_is_its_definition_on_random_lists() -> None:
    rng = np.random.default_rng(7)
    for trial in range(200):
        vector = vector_hits(planted=bool(trial % 2))[: int(rng.integers(0, ASKED + 1))]
        for hit, noise in zip(vector[:5], rng.uniform(0, 0.01, 5), strict=False):
            hit["score"] = 1.0 - noise / 10  # a few near copies: a varying cutoff
        vector.sort(key=lambda h: -h["score"])
        ids = rng.choice(400, size=int(rng.integers(0, 30)), replace=False)
        words = [keyword(int(i), rank) for rank, i in enumerate(ids, start=1)]
        ranked, cut = fuse(vector, words, asked=ASKED)
        expected = _reference(vector, words)
        assert [h["id"] for h in ranked] == expected
        above = cutoff([h["score"] for h in vector], complete=len(vector) < ASKED).relevant_count
        assert cut.relevant_count == len({h["id"] for h in vector[:above]} | set(ids.tolist()))
