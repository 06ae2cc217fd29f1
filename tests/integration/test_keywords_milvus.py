"""The keyword hits of POST /v1/search (``words``) on both backends, Faiss and a real Milvus
server: what each matches (glimpse/index/keywords.py), after adds, an update and a delete, with
filters."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.integration.test_index_milvus_contract import backend, client, make_client
from tests.unit.index.helpers import b64, clustered

QUERY = b64(clustered(1, 32, seed=1)[0])

pytestmark = pytest.mark.milvus
__all__ = ["backend", "client", "make_client"]  # the fixtures, parametrised over both backends

ITEMS = [
    ("trips/Zanzibar.jpg", {}),
    ("trips/beach.jpg", {"keywords": ["zanzibar", "beach"]}),
    ("home/cat.jpg", {"keywords": ["cat"], "title": "Zanzibar cat"}),
    ("home/dog.jpg", {"keywords": ["zanzibar"], "width": 4000}),
]


def _found(client: TestClient, query: str, **extra: Any) -> list[str]:
    answer = client.post("/v1/search", json={"vectors": [QUERY], "words": query, "k": 10,
                                             **extra})
    assert answer.status_code == 200, answer.text
    return [h["path"] for h in answer.json()["keywords"]]


def test_keyword_search_on_both_backends(client: TestClient, backend: str) -> None:
    vectors = clustered(len(ITEMS), 32)
    body = {"items": [{"vector": b64(v), "path": p, "key": f"k{n}", "meta": m}
                      for n, (v, (p, m)) in enumerate(zip(vectors, ITEMS, strict=True))]}
    ids = [i["id"] for i in client.post("/v1/items", json=body).json()["items"]]
    if backend == "faiss":  # file names and titles too, ranked by BM25
        assert set(_found(client, "Zanzibar")) == {p for p, _ in ITEMS}
        assert _found(client, "zanz beach") == ["trips/beach.jpg"]
    else:  # whole keywords only, in id order (Milvus's ids hash the keys)
        assert sorted(_found(client, "Zanzibar")) == ["home/dog.jpg", "trips/beach.jpg"]
        assert _found(client, "zanz") == []
    assert _found(client, "zanzibar beach") == ["trips/beach.jpg"]
    # With detail, the vector hits past it are id and score alone, beside the keyword hits.
    cut = client.post("/v1/search", json={"vectors": [QUERY], "words": "zanzibar beach",
                                          "k": 10, "detail": 1}).json()
    assert [len(h) for h in cut["results"][0]] == [4, 2, 2, 2]
    assert [h["path"] for h in cut["keywords"]] == ["trips/beach.jpg"]
    assert _found(client, "zanzibar", filters={"min_width": 3000}) == ["home/dog.jpg"]
    assert _found(client, "zanzibar", filters={"folder": ["trips"]}) == ["trips/beach.jpg"] \
        if backend == "milvus" else ["trips/Zanzibar.jpg", "trips/beach.jpg"]

    assert client.patch(f"/v1/items/{ids[3]}", json={"meta": {"keywords": ["dog"]}}
                        ).status_code == 200
    assert client.delete(f"/v1/items/{ids[1]}").status_code == 204
    left = _found(client, "zanzibar")
    assert "trips/beach.jpg" not in left and "home/dog.jpg" not in left
    assert _found(client, "dog") == ["home/dog.jpg"]
