"""Keyword matching fused with CLIP, through the real stack (tiny model, random weights): an
image whose IPTC keyword or file name is "Zanzibar" is found by the query "zanzibar" within
the top 3, though the vector search alone knows nothing of the word."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.stack import TINY_DIM, Stack, sample_photos, start_stack
from tests.unit.gateway.test_metadata import _app13


def noise_jpeg(seed: int, iptc_keywords: tuple[bytes, ...] = ()) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(out, format="JPEG")
    raw = out.getvalue()
    if iptc_keywords:  # IPTC-IIM 2:25, keywords
        raw = raw[:2] + _app13([(25, k) for k in iptc_keywords]) + raw[2:]
    return raw


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(tmp_path_factory.mktemp("stack")) as running:
        yield running


@pytest.fixture(scope="module")
def planted(stack: Stack) -> dict[str, int]:
    """Sample photos and 60 noise images, two of them Zanzibar's: by keyword, by name."""
    files = [(f"samples/{name}", data) for name, data in sample_photos().items()]
    files += [(f"noise/{seed:03d}.jpg", noise_jpeg(seed)) for seed in range(60)]
    files += [("noise/tagged.jpg", noise_jpeg(100, (b"Zanzibar", b"Beach"))),
              ("trips/2023/Zanzibar.jpg", noise_jpeg(101))]
    items: list[dict[str, object]] = []
    with stack.client(timeout=120.0) as client:
        for start in range(0, len(files), 32):  # the gateway takes 64 files a request
            part = files[start : start + 32]
            answer = client.post("/ingest", files=[("files", (p, d, "image/jpeg"))
                                                   for p, d in part])
            assert answer.status_code == 200, answer.text
            items += answer.json()["items"]
    assert {i["status"] for i in items} == {"added"}, items
    ids = {path: item["id"] for (path, _), item in zip(files, items, strict=True)}
    return {"keyword": ids["noise/tagged.jpg"], "name": ids["trips/2023/Zanzibar.jpg"]}


def test_zanzibar_is_in_the_top_3_by_keyword_and_by_file_name(
        stack: Stack, planted: dict[str, int]) -> None:
    with stack.client() as client:
        for query in ("zanzibar", "Zanzibar", "a photo of zanzibar"):
            answer = client.post("/search/text", json={"query": query, "k": 3})
            assert answer.status_code == 200, answer.text
            top = {r["id"]: r for r in answer.json()["results"]}
            assert set(planted.values()) <= set(top), (query, top)
            for item_id in planted.values():
                assert top[item_id]["keyword"] is True and top[item_id]["relevant"] is True
            assert answer.json()["relevant_count"] >= 2 and not answer.json()["no_good_match"]
        terms = client.post("/search", json={"terms": [{"text": "zanzibar"}], "k": 3})
        assert set(planted.values()) <= {r["id"] for r in terms.json()["results"]}
        # Only the words narrow: "zanzibar beach" is the tagged image alone.
        both = client.post("/search/text", json={"query": "zanzibar beach", "k": 3}).json()
        assert [r["id"] for r in both["results"] if r.get("keyword")] == [planted["keyword"]]
        plain = client.post("/search/text", json={"query": "zanzibar", "k": 80,
                                                  "keywords": False}).json()
        assert not any("keyword" in r for r in plain["results"])


def test_the_index_answers_keyword_searches_with_filters(
        stack: Stack, planted: dict[str, int]) -> None:
    url = stack.index.url + "/v1/search"
    query = {"vectors": [[1.0] * TINY_DIM], "words": "zanzibar", "k": 10}
    hits = httpx.post(url, json=query).json()["keywords"]
    assert sorted(h["id"] for h in hits) == sorted(planted.values())
    assert [h["rank"] for h in hits] == [1, 2]
    narrowed = httpx.post(url, json={**query, "filters": {"folder": ["trips"]}})
    assert [h["id"] for h in narrowed.json()["keywords"]] == [planted["name"]]
    bad = httpx.post(url, json={**query, "filters": {"folder": ["../x"]}})
    assert bad.status_code == 422 and "filters.folder" in bad.json()["error"]
