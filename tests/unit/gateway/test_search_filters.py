"""``filters`` on /search/text, /search/image (a JSON text field) and /search: passed to the
index as one normalised object, and every bad filter a 422 naming its field."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.unit.gateway.test_search_routes import FakeIndex, gateway, image_form


class RecordingIndex(FakeIndex):
    def __init__(self, real: Any) -> None:
        super().__init__(real)
        self.filters: list[dict[str, Any] | None] = []
        self.asked: list[tuple[str, str]] = []

    async def search(
        self, vector: np.ndarray, k: int, *, exclude_ids: Sequence[int] = (),
        nprobe: int | None = None, filters: dict[str, Any] | None = None,
        detail: int | None = None,
    ) -> list[dict[str, Any]]:
        self.filters.append(filters)
        return await super().search(vector, k, exclude_ids=exclude_ids, nprobe=nprobe)

    async def vector(self, image_id: int, space: Any = None) -> np.ndarray:
        return np.ones(4, dtype=np.float32)

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        self.asked.append((method, path))
        return FACETS


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[TestClient, RecordingIndex]]:
    with gateway(tmp_path) as (client, _encoder):
        state = client.app.state.gateway  # type: ignore[attr-defined]
        index = RecordingIndex(state.index.real)
        state.index = index
        yield client, index


FILTERS = {"taken_after": "2023-06", "taken_before": "2023-09", "folder": ["Holidays/2023/"],
           "camera": "Pixel", "near": {"lat": 48.85, "lon": 2.35, "radius_km": 30}}
SENT = {"taken_after": "2023-06", "taken_before": "2023-09", "folder": ["Holidays/2023"],
        "camera": "pixel", "near": {"lat": 48.85, "lon": 2.35, "radius_km": 30.0}}


def test_each_search_passes_its_filters_to_the_index(
        running: tuple[TestClient, RecordingIndex]) -> None:
    client, index = running
    text = client.post("/search/text", json={"query": "a cat", "filters": FILTERS})
    assert text.status_code == 200, text.text
    image = client.post("/search/image", **image_form(filters=json.dumps(FILTERS)))
    assert image.status_code == 200, image.text
    terms = client.post("/search", json={"terms": [{"text": "dog"}], "filters": FILTERS})
    assert terms.status_code == 200, terms.text
    similar = client.get("/images/7/similar", params={"filters": json.dumps(FILTERS)})
    assert similar.status_code == 200, similar.text
    plain = client.post("/search/text", json={"query": "a cat"})
    assert plain.status_code == 200
    unfiltered = client.get("/images/7/similar")
    assert unfiltered.status_code == 200, unfiltered.text
    assert index.filters == [SENT, SENT, SENT, SENT, None, None]


BAD = [
    ({"colour": "red"}, "filters.colour"),
    ({"taken_after": "last June"}, "filters.taken_after"),
    ({"taken_after": "2023-13"}, "filters.taken_after"),
    ({"near": {"lat": 1.0, "lon": 2.0}}, "filters.near.radius_km"),
    ({"near": {"lat": 1.0, "lon": 2.0, "radius_km": -1}}, "filters.near.radius_km"),
    ({"near": {"lat": 1.0, "lon": 2.0, "radius_km": 20_001}}, "filters.near.radius_km"),
    ({"near": {"lat": 91.0, "lon": 2.0, "radius_km": 1}}, "filters.near.lat"),
    ({"folder": ["Holidays/../secret"]}, "filters.folder"),
    ({"folder": ["/etc"]}, "filters.folder"),
    ({"bbox": {"south": 10, "north": 0, "west": 0, "east": 1}}, "filters.bbox"),
    ({"type": ["JPEG!"]}, "filters.type"),
    ({"min_width": 0}, "filters.min_width"),
]


@pytest.mark.parametrize(("filters", "field"), BAD)
def test_a_bad_filter_is_a_422_naming_its_field(
        running: tuple[TestClient, RecordingIndex], filters: dict[str, Any], field: str) -> None:
    client, index = running
    answers = [
        client.post("/search/text", json={"query": "a", "filters": filters}),
        client.post("/search/image", **image_form(filters=json.dumps(filters))),
        client.post("/search", json={"terms": [{"text": "a"}], "filters": filters}),
        client.get("/images/7/similar", params={"filters": json.dumps(filters)}),
    ]
    for answer in answers:
        assert answer.status_code == 422, answer.text
        body = answer.json()
        assert body["error_type"] == "validation_error"
        assert field in body["error"], body["error"]
    assert index.filters == []


def test_filters_that_are_not_json_are_named(running: tuple[TestClient, RecordingIndex]) -> None:
    client, _ = running
    for answer in (client.post("/search/image", **image_form(filters="{taken_after")),
                   client.get("/images/7/similar", params={"filters": "{taken_after"})):
        assert answer.status_code == 422, answer.text
        body = answer.json()
        assert body["error_type"] == "validation_error" and "filters" in body["error"], body


def test_the_openapi_document_shows_the_filters(running: tuple[TestClient, RecordingIndex]
                                                ) -> None:
    client, _ = running
    doc = client.get("/openapi.json").json()
    text = doc["paths"]["/search/text"]["post"]["requestBody"]["content"]["application/json"]
    fields = text["schema"]["properties"]["filters"]["anyOf"][0]["properties"]
    assert {"taken_after", "folder", "camera", "near", "bbox", "type", "min_width"} <= set(fields)
    assert "radius_km" in fields["near"]["anyOf"][0]["properties"]



def test_facets_are_the_indexs(running: tuple[TestClient, RecordingIndex]) -> None:
    client, index = running
    answer = client.get("/facets")
    assert answer.status_code == 200, answer.text
    assert answer.json() == FACETS and index.asked == [("GET", "/v1/facets")]


FACETS = {"total": 3, "with_location": 1, "years": [{"value": "2023", "count": 2}],
          "months": [{"value": "2023-06", "count": 2}], "folders": [{"value": "A", "count": 3}],
          "cameras": [{"value": "google pixel 7", "count": 1}], "types": []}
