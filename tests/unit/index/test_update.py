"""PATCH /v1/items/{id}: a live item's new path and/or meta (a library file moved or renamed).

The backend-agnostic tests run again on Milvus in tests/integration/test_index_update_milvus.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.unit.index.helpers import b64, clustered, items_body

DIM = 32


def _add(client: TestClient, n: int = 20) -> tuple[np.ndarray, list[int]]:
    x = clustered(n, DIM)
    answer = client.post("/v1/items", json=items_body(x))
    assert answer.status_code == 200, answer.text
    return x, [i["id"] for i in answer.json()["items"]]


def _top(client: TestClient, vector: np.ndarray) -> dict[str, object]:
    r = client.post("/v1/search", json={"vectors": [b64(vector)], "k": 1})
    assert r.status_code == 200, r.text
    hit: dict[str, object] = r.json()["results"][0][0]
    return hit


def test_a_new_path_is_what_search_and_get_answer(client: TestClient) -> None:
    x, ids = _add(client)
    before = client.get(f"/v1/items/{ids[4]}").json()
    vector = client.get(f"/v1/items/{ids[4]}/vector").json()["vector"]

    r = client.patch(f"/v1/items/{ids[4]}", json={"path": "photos/2024/renamed.jpg"})
    assert r.status_code == 200, r.text
    record = r.json()
    assert record["id"] == ids[4] and record["key"] == "key-4"
    assert record["path"] == "photos/2024/renamed.jpg" and record["meta"] == {"n": 4}
    assert record["created_at"] == before["created_at"]

    assert client.get(f"/v1/items/{ids[4]}").json()["path"] == "photos/2024/renamed.jpg"
    hit = _top(client, x[4])
    assert hit["id"] == ids[4] and hit["path"] == "photos/2024/renamed.jpg"
    assert hit["meta"] == {"n": 4}
    # The vector and the other items are untouched.
    assert client.get(f"/v1/items/{ids[4]}/vector").json()["vector"] == vector
    assert _top(client, x[5])["path"] == "img/5.jpg"
    assert int(client.get("/v1/stats").json()["count"]) == 20


def test_meta_is_replaced_whole_and_path_kept_when_left_out(client: TestClient) -> None:
    x, ids = _add(client)
    r = client.patch(f"/v1/items/{ids[2]}", json={"meta": {"width": 640, "tags": ["a"]}})
    assert r.status_code == 200, r.text
    assert r.json()["path"] == "img/2.jpg" and r.json()["meta"] == {"width": 640, "tags": ["a"]}
    both = client.patch(f"/v1/items/{ids[2]}", json={"path": "b/2.jpg", "meta": {}}).json()
    assert both["path"] == "b/2.jpg" and both["meta"] == {}
    hit = _top(client, x[2])
    assert hit["path"] == "b/2.jpg" and hit["meta"] == {}


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({}, "give path, meta or both"),
        ({"path": ""}, "path"),
        ({"path": "x" * 4097}, "path"),
        ({"path": 5}, "path"),
        ({"meta": [1, 2]}, "meta"),
        ({"meta": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {}}}}}}}}}}, "nests"),
        ({"meta": {"big": "x" * 17_000}}, "16384"),
    ],
)
def test_bad_bodies_are_422_naming_the_problem(client: TestClient, body: object,
                                               named: str) -> None:
    _, ids = _add(client, 3)
    r = client.patch(f"/v1/items/{ids[0]}", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error_type"] == "validation_error" and named in r.text
    assert client.get(f"/v1/items/{ids[0]}").json()["path"] == "img/0.jpg"


def test_unknown_deleted_and_impossible_ids(client: TestClient) -> None:
    _, ids = _add(client, 3)
    unknown = client.patch("/v1/items/999999", json={"path": "a.jpg"})
    assert unknown.status_code == 404 and "does not exist" in unknown.json()["error"]
    assert client.delete(f"/v1/items/{ids[1]}").status_code == 204
    deleted = client.patch(f"/v1/items/{ids[1]}", json={"path": "a.jpg"})
    assert deleted.status_code == 404 and "deleted" in deleted.json()["error"]
    assert client.get(f"/v1/items/{ids[1]}").status_code == 404  # not brought back
    for bad in (str(2**63), "-1", "x"):
        r = client.patch(f"/v1/items/{bad}", json={"path": "a.jpg"})
        assert r.status_code == 422 and "item_id" in r.text
    garbled = client.patch(f"/v1/items/{ids[0]}", content=b"{nope",
                           headers={"content-type": "application/json"})
    assert garbled.status_code == 422 and garbled.json()["error_type"] == "validation_error"


def test_an_update_survives_restarts_with_and_without_a_snapshot(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    data = tmp_path / "index"
    client = make_client(data_dir=data)
    x, ids = _add(client)
    assert client.post("/v1/index/snapshot").status_code == 200
    assert client.patch(f"/v1/items/{ids[7]}", json={"path": "moved/7.jpg"}).status_code == 200
    client.__exit__(None, None, None)  # closing writes a snapshot only if vectors changed

    again = make_client(data_dir=data)
    stats = again.get("/v1/stats").json()
    assert "snapshot_error" not in stats["load"], stats["load"]  # the snapshot still agrees
    assert _top(again, x[7])["path"] == "moved/7.jpg"
    assert again.patch(f"/v1/items/{ids[8]}", json={"meta": {"m": 1}}).status_code == 200
    assert again.post("/v1/index/snapshot").status_code == 200
    again.__exit__(None, None, None)

    third = make_client(data_dir=data)
    assert "snapshot_error" not in third.get("/v1/stats").json()["load"]
    assert _top(third, x[7])["path"] == "moved/7.jpg"
    assert _top(third, x[8])["meta"] == {"m": 1}
    assert int(third.get("/v1/stats").json()["count"]) == 20
