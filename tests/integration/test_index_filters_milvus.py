"""Filtered search on both backends, Faiss and a real Milvus server: every hit passes the
filter, and the answer is the exact filtered top k (``exact``) or nearly (the default search);
folders holding Milvus's ``like`` wildcards and values holding quotes match only themselves."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from glimpse.contracts.filters import SearchFilters
from glimpse.index.filters import facets_of_rows, matches
from tests.integration.test_index_milvus_contract import backend, client, make_client
from tests.unit.index.helpers import as_stored, b64, clustered
from tests.unit.index.test_filters import path_of, random_filter, random_meta

pytestmark = pytest.mark.milvus
__all__ = ["backend", "client", "make_client"]  # the fixtures, parametrised over both backends

DIM = 32


def _add(client: TestClient, vectors: np.ndarray, paths: list[str],
         metas: list[dict[str, Any]]) -> list[int]:
    body = {"items": [{"vector": b64(v), "path": p, "key": f"key-{n}", "meta": m}
                      for n, (v, p, m) in enumerate(zip(vectors, paths, metas, strict=True))]}
    answer = client.post("/v1/items", json=body)
    assert answer.status_code == 200, answer.text
    return [item["id"] for item in answer.json()["items"]]


def _search(client: TestClient, queries: np.ndarray, k: int, **extra: Any
            ) -> list[list[dict[str, Any]]]:
    answer = client.post("/v1/search", json={"vectors": [b64(q) for q in queries], "k": k,
                                             **extra})
    assert answer.status_code == 200, answer.text
    return list(answer.json()["results"])


def test_filtered_search_on_both_backends(client: TestClient) -> None:
    rng = random.Random(11)
    metas = [random_meta(rng) for _ in range(800)]
    paths = [path_of(n, m) for n, m in enumerate(metas)]
    vectors = clustered(len(metas), DIM, seed=12)
    ids = _add(client, vectors, paths, metas)
    position = {item_id: n for n, item_id in enumerate(ids)}
    stored = as_stored(vectors)
    queries = clustered(5, DIM, seed=13)
    checked = 0
    for _ in range(30):
        f = random_filter(rng)
        allowed = np.asarray([n for n, (p, m) in enumerate(zip(paths, metas, strict=True))
                              if matches(f, p, m)], dtype=np.int64)
        body = f.model_dump(exclude_none=True)
        exact = _search(client, queries, 10, exact=True, filters=body)
        approx = _search(client, queries, 10, filters=body)
        for q, row, near_row in zip(queries, exact, approx, strict=True):
            assert all(matches(f, h["path"], h["meta"]) for h in row + near_row)
            assert len(row) == min(10, len(allowed)), (f, len(allowed))
            if len(allowed):
                best = allowed[np.argsort(-(stored[allowed] @ q))[:10]]
                got = {position[h["id"]] for h in row}
                assert len(got & set(best.tolist())) >= len(best) - 1  # a float tie may swap
                assert len({position[h["id"]] for h in near_row} & set(best.tolist())) >= \
                    0.8 * len(best)
                checked += 1
    assert checked > 40


@pytest.mark.parametrize(
    ("filters", "kept"),
    [({"folder": ["50%_off"]}, {"50%_off/a.jpg", "50%_off/sub/b.jpg"}),
     ({"folder": ["a\\b"]}, {"a\\b/c.jpg"}),
     ({"camera": "x_1%"}, {"50%_off/a.jpg"}),
     ({"camera": 'Say "Hi"'}, {"plain/d.jpg"}),
     ({"keyword": ["Sand & Sea"]}, {"50X_off/e.jpg"})],
)
def test_wildcards_and_quotes_match_only_themselves(
        client: TestClient, filters: dict[str, Any], kept: set[str]) -> None:
    rows = [("50%_off/a.jpg", {"camera": ["brand", "x_1%", "pro"]}),
            ("50%_off/sub/b.jpg", {"camera": ["brand", "xa1b", "pro"]}),
            ("50X_off/e.jpg", {"camera": ["x_1"], "keywords": ["sand & sea"]}),
            ("50%Xoff/f.jpg", {"camera": ["x_12%"]}),
            ("a\\b/c.jpg", {}),
            ("aXb/g.jpg", {}),
            ("plain/d.jpg", {"camera": ["say", "hi", "cam"]})]
    vectors = clustered(len(rows), DIM, seed=14)
    _add(client, vectors, [p for p, _ in rows], [m for _, m in rows])
    f = SearchFilters.model_validate(filters)
    assert {p for p, m in rows if matches(f, p, m)} == kept  # the reference agrees
    for exact in (True, False):
        found = _search(client, vectors[:1], 20, exact=exact, filters=filters)[0]
        assert {h["path"] for h in found} == kept, (exact, found)


def test_facets_on_both_backends(client: TestClient) -> None:
    rng = random.Random(15)
    metas = [random_meta(rng) for _ in range(300)]
    paths = [path_of(n, m) for n, m in enumerate(metas)]
    ids = _add(client, clustered(len(metas), DIM, seed=16), paths, metas)
    assert client.delete(f"/v1/items/{ids[5]}").status_code == 204
    got = client.get("/v1/facets")
    assert got.status_code == 200, got.text
    keep = [n for n in range(len(metas)) if n != 5]
    assert got.json() == facets_of_rows([(paths[n], metas[n]) for n in keep])
