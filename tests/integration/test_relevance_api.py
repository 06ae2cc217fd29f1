"""The relevance fields of every search route, through the gateway app (the encoder and the
index faked: the index answers a background of unrelated items, with or without one copy of the
query at the top)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.unit.gateway import test_search_routes as routes


class BackgroundIndex(routes.FakeIndex):
    planted = True
    asked: list[int] = []

    async def search(
        self, vector: np.ndarray, k: int, *, exclude_ids: Sequence[int] = (),
        nprobe: int | None = None, filters: dict[str, Any] | None = None,
        detail: int | None = None,
    ) -> list[dict[str, Any]]:
        self.asked.append(k)
        # Background distances grow as a power of their rank, as a real neighbourhood's do.
        distances = [0.05 * (i + 1) ** 0.4 for i in range(k)]
        if self.planted:
            distances[0] = 0.0005
        return [
            {"id": i, "score": 1.0 - d, "path": f"p/{i}.jpg", "meta": {"width": 3, "height": 2}}
            for i, d in enumerate(distances)
        ]

    async def vector(self, item_id: int, space: Any = None) -> np.ndarray:
        return np.ones(routes.DIM, dtype=np.float32)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with routes.gateway(tmp_path) as (client, _):
        state = client.app.state.gateway  # type: ignore[attr-defined]
        state.index = BackgroundIndex(state.index.real)
        BackgroundIndex.planted, BackgroundIndex.asked = True, []
        yield client


def _searches(client: TestClient, relevance: str | None, **more: str) -> list[Any]:
    extra = {**({} if relevance is None else {"relevance": relevance}), **more}
    return [
        client.post("/search/text", json={"query": "a cat", "k": 5, **extra}),
        client.post("/search/image", **routes.image_form(k="5", **extra)),
        client.post("/search", json={"terms": [{"text": "a cat"}], "k": 5, **extra}),
        client.get("/images/7/similar", params={"k": 5, **extra}),
    ]


def test_all_is_the_default_and_marks_each_hit(client: TestClient) -> None:
    for response in _searches(client, None):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["relevance"] == "all"
        assert [r["relevant"] for r in body["results"]] == [True, False, False, False, False]
        assert body["relevant_count"] == 1 and body["no_good_match"] is False
        assert 1 - 0.0005 > body["cutoff_score"] > body["results"][1]["score"]
    # The index was asked for enough candidates to judge relevance, not just the page.
    assert min(BackgroundIndex.asked) >= 200


def test_auto_gives_only_the_relevant_hits(client: TestClient) -> None:
    for response in _searches(client, "auto"):
        assert response.status_code == 200, response.text
        body = response.json()
        assert [r["id"] for r in body["results"]] == [0]
        assert body["results"][0]["relevant"] is True and body["relevant_count"] == 1


def test_no_good_match_is_said_and_all_still_gives_the_closest(client: TestClient) -> None:
    BackgroundIndex.planted = False
    for auto, everything in zip(_searches(client, "auto"), _searches(client, "all"), strict=True):
        assert auto.json()["results"] == [] and auto.json()["no_good_match"] is True
        assert auto.json()["relevant_count"] == 0
        closest = everything.json()
        assert len(closest["results"]) == 5 and closest["no_good_match"] is True
        assert not any(r["relevant"] for r in closest["results"])


def test_a_bad_relevance_is_a_422_naming_the_field(client: TestClient) -> None:
    for response in _searches(client, "some"):
        assert response.status_code == 422, response.text
        body = response.json()
        assert set(body) >= {"error", "error_type", "details"}
        assert "relevance" in body["error"], body


class DatedIndex(BackgroundIndex):
    """Three copies of the query at the top, taken in 2021, undated and 2023; then background
    items, one of them dated 2030 (not relevant, so never sorted ahead)."""

    async def search(self, vector: np.ndarray, k: int, **kw: Any) -> list[dict[str, Any]]:
        hits = await super().search(vector, k, **kw)
        for hit, score in zip(hits[:3], (0.9999, 0.9998, 0.9997), strict=True):
            hit["score"] = score
        hits[0]["meta"] |= {"taken": "2021-05-01T10:00:00", "taken_ts": 1619863200}
        hits[2]["meta"] |= {"taken": "2023-07-04T09:30:00", "taken_ts": 1688463000}
        hits[5]["meta"] |= {"taken": "2030-01-01T00:00:00", "taken_ts": 1893456000}
        return hits


def test_sort_orders_the_relevant_hits_by_date_on_every_route(client: TestClient) -> None:
    state = client.app.state.gateway  # type: ignore[attr-defined]
    state.index = DatedIndex(state.index.real)
    orders = {}
    for sort in ("score", "newest", "oldest"):
        for response in _searches(client, "all", sort=sort):
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["sort"] == sort and body["relevant_count"] == 3
            ids = [r["id"] for r in body["results"]]
            orders.setdefault(sort, set()).add(tuple(ids[:3]))
            assert ids[3:] == [3, 4]  # the rest stay in score order
    assert orders == {"score": {(0, 1, 2)}, "newest": {(2, 0, 1)}, "oldest": {(0, 2, 1)}}


def test_a_bad_sort_is_a_422_naming_the_field(client: TestClient) -> None:
    for response in _searches(client, None, sort="date"):
        assert response.status_code == 422, response.text
        assert "sort" in response.json()["error"]
