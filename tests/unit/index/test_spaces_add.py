"""Items added straight into a named space (after a confirmed model migration, issue 22): one
transaction writes the item with an empty vector of its own and its space vector; the built-in
space never sees it, across a snapshot and a restart, and a delete removes it everywhere."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from tests.unit.index.helpers import b64, clustered, items_body, wait_ready

DIM = 32  # the built-in space (helpers.settings)
NEW_DIM = 48


def _setup(client: TestClient) -> tuple[list[int], list[int], np.ndarray]:
    """20 items with both vectors, then 5 added into ``clip2`` alone (activated)."""
    old = client.post("/v1/items", json=items_body(clustered(20, DIM, seed=1))).json()["items"]
    ids = [a["id"] for a in old]
    assert client.post("/v1/spaces", json={"name": "clip2", "dim": NEW_DIM}).status_code == 201
    both = clustered(20, NEW_DIM, seed=2)
    client.post("/v1/spaces/clip2/vectors", json={"ids": ids, "vectors": [b64(v) for v in both]})
    client.post("/v1/spaces/clip2/activate")
    late = clustered(5, NEW_DIM, seed=3)
    r = client.post("/v1/items", json={**items_body(late, 100), "space": "clip2"})
    assert r.status_code == 200, r.text
    assert {a["status"] for a in r.json()["items"]} == {"added"}
    return ids, [a["id"] for a in r.json()["items"]], late


def _counts(client: TestClient) -> dict[str, int]:
    return {s["name"]: s["count"] for s in client.get("/v1/spaces").json()["spaces"]}


def _top(client: TestClient, vector: np.ndarray, space: str) -> int:
    body = {"vectors": [b64(vector)], "k": 1, "space": space, "exact": True}
    return int(client.post("/v1/search", json=body).json()["results"][0][0]["id"])


def _setup_checked(client: TestClient) -> tuple[list[int], list[int], np.ndarray]:
    """:func:`_setup`, and what every backend must then show: the 5 items count in the space
    and the stats, not in the built-in space, which has no vector for them (a 404 naming it)."""
    ids, late_ids, late = _setup(client)
    assert _counts(client) == {"default": 20, "clip2": 25}
    builtin = next(s for s in client.get("/v1/spaces").json()["spaces"] if s["built_in"])
    assert builtin["optional"] is True
    assert client.get("/v1/stats").json()["count"] == 25
    pending = client.get("/v1/spaces/clip2/pending").json()
    assert (pending["items"], pending["done"], pending["total"]) == ([], 25, 25)
    assert _top(client, late[2], "clip2") == late_ids[2]
    own = client.get(f"/v1/items/{late_ids[0]}/vector", params={"space": "default"})
    assert own.status_code == 404 and "no vector in space 'default'" in own.json()["error"]
    return ids, late_ids, late


def test_items_added_into_a_space_have_no_builtin_vector(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client()
    ids, late_ids, late = _setup_checked(client)
    assert client.get(f"/v1/items/{late_ids[0]}").status_code == 200
    query = clustered(1, DIM, seed=4)[0]
    hits = client.post("/v1/search", json={"vectors": [b64(query)], "k": 50, "exact": True,
                                           "space": "default"}).json()["results"][0]
    assert {h["id"] for h in hits} == set(ids)
    # A snapshot and a restart: the built-in index is rebuilt without them, the space with.
    assert client.post("/v1/index/snapshot").status_code == 200
    more = client.post("/v1/items", json={**items_body(clustered(2, NEW_DIM, seed=5), 200),
                                          "space": "clip2"}).json()["items"]
    client.__exit__(None, None, None)
    again = make_client()
    wait_ready(again)
    assert _counts(again) == {"default": 20, "clip2": 27}
    assert _top(again, late[4], "clip2") == late_ids[4]
    assert again.delete(f"/v1/items/{more[0]['id']}").status_code in (200, 204)
    assert _counts(again) == {"default": 20, "clip2": 26}
    assert again.get("/v1/stats").json()["count"] == 26


def test_bad_space_adds_are_4xx_and_store_nothing(client: TestClient) -> None:
    client.post("/v1/spaces", json={"name": "clip2", "dim": NEW_DIM})
    unknown = client.post("/v1/items", json={**items_body(clustered(1, NEW_DIM)), "space": "x"})
    assert unknown.status_code == 404 and "'x'" in unknown.json()["error"]
    wrong = client.post("/v1/items", json={**items_body(clustered(1, DIM)), "space": "clip2"})
    assert wrong.status_code == 422 and "48" in wrong.json()["error"], wrong.text
    assert _counts(client) == {"default": 0, "clip2": 0}
    assert client.get("/v1/stats").json()["count"] == 0


def test_the_item_listing_holds_every_item_with_the_active_spaces_vectors(
    client: TestClient,
) -> None:
    """The duplicates and backfill passes read GET /v1/items: an item added into the active
    space alone is listed, with that space's vector; the built-in space's listing names it
    with no vector."""
    ids, late_ids, late = _setup(client)

    def listing(**params: str) -> dict[int, Any]:
        page = client.get("/v1/items", params={"limit": "100", **params}).json()
        assert page["next_after"] is None
        return {int(i["id"]): i["vector"] for i in page["items"]}

    assert set(listing()) == set(ids + late_ids)
    active = listing(vectors="true")
    assert all(len(active[i]) == NEW_DIM for i in ids + late_ids)
    np.testing.assert_allclose(active[late_ids[1]], late[1], atol=2e-3)
    builtin = listing(vectors="true", space="default")
    assert all(builtin[i] is None for i in late_ids)
    assert all(len(builtin[i]) == DIM for i in ids)
    unknown = client.get("/v1/items", params={"vectors": "true", "space": "x"})
    assert unknown.status_code == 404 and "'x'" in unknown.json()["error"]
