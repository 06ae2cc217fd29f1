"""Issue 25's index defects through the HTTP API in-process: forced factories and the way back
to the automatic choice (F6), bounded meta and well-formed keys at add time (F5, F9)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from glimpse.contracts.index import MAX_META_BYTES, MAX_META_DEPTH, IndexItemIn, meta_problem
from tests.unit.index.helpers import b64, clustered, items_body, wait_trained

DIM = 32


def _nested(depth: int) -> dict[str, Any]:
    """``depth`` objects nested inside each other, the outer one included."""
    meta: dict[str, Any] = {}
    for _ in range(depth - 1):
        meta = {"a": meta}
    return meta


def _item(meta: Any = None, key: str = "k1") -> dict[str, Any]:
    item = {"vector": b64(clustered(1, DIM)[0]), "path": "p.jpg", "key": key}
    if meta is not None:
        item["meta"] = meta
    return item


def _add(client: TestClient, *items: dict[str, Any]) -> Any:
    return client.post("/v1/items", json={"items": list(items)})


@pytest.mark.parametrize(("meta", "words"), [
    (_nested(MAX_META_DEPTH + 1), f"more than {MAX_META_DEPTH} deep"),
    (_nested(300), f"more than {MAX_META_DEPTH} deep"),  # F5's reproducer
    ({"a": [[[[[[[[1]]]]]]]]}, "deep"),  # arrays count too
    ({"blob": "x" * MAX_META_BYTES}, f"the limit is {MAX_META_BYTES}"),
])
def test_meta_that_could_not_be_served_back_is_refused_at_add_time(
    client: TestClient, meta: dict[str, Any], words: str,
) -> None:
    r = _add(client, _item({"ok": 1}, key="good"), _item(meta, key="bad"))
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error_type"] == "validation_error"
    assert "items.1.meta" in body["error"] and words in body["error"], body["error"]
    assert client.get("/v1/stats").json()["count"] == 0  # the batch stored nothing


def test_meta_orjson_cannot_write_is_refused() -> None:
    # (Over JSON such an integer arrives as a float; a Python caller can still pass one.)
    assert "cannot be written back as JSON" in str(meta_problem({"big": 2**70}))
    with pytest.raises(ValueError, match="meta cannot be written back as JSON"):
        IndexItemIn(vector=[1.0], path="p", key="k", meta={"a": {"big": -(2**70)}})


def test_meta_at_the_limits_is_stored_and_served_back(client: TestClient) -> None:
    deep = _nested(MAX_META_DEPTH)
    filler = MAX_META_BYTES - len(json.dumps({"blob": ""}, separators=(",", ":")))
    wide = {"blob": "x" * filler}
    r = _add(client, _item(deep, key="deep"), _item(wide, key="wide"))
    assert r.status_code == 200, r.text
    ids = [i["id"] for i in r.json()["items"]]
    assert client.get(f"/v1/items/{ids[0]}").json()["meta"] == deep
    hits = client.post("/v1/search", json={"vectors": [b64(clustered(1, DIM)[0])], "k": 5})
    assert hits.status_code == 200
    assert {h["id"] for h in hits.json()["results"][0]} == set(ids)


@pytest.mark.parametrize("key", ["", "a" * 129, "has space", "slash/ed", "../up", "-lead",
                                 "naïve", "tab\tkey", "nul\x00", "é" * 10])
def test_keys_outside_the_documented_format_are_422(client: TestClient, key: str) -> None:
    r = _add(client, _item(key=key))
    assert r.status_code == 422, r.text
    assert "items.0.key" in r.json()["error"]


def test_documented_keys_are_accepted(client: TestClient) -> None:
    sha = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    r = _add(client, _item(key=sha), _item(key="key-1"), _item(key="A.b_c:d-9"),
             _item(key="k" * 128))
    assert r.status_code == 200 and [i["key"] for i in r.json()["items"]][0] == sha


REFUSED = ["HNSW1", "HNSW0", "IVF0,Flat", "PQ0", "IVF1,PQ3x8", "OPQ7,IVF4,PQ2", "", "garbage",
           "IVF8,PQ8x4,RFlat", "IVF2000,Flat", "x" * 300]


def test_bad_factories_are_422_before_faiss_sees_them(client: TestClient) -> None:
    x = clustered(1200, DIM)
    assert client.post("/v1/items", json=items_body(x)).status_code == 200
    for factory in REFUSED:
        r = client.post("/v1/index/rebuild", json={"factory": factory, "wait": True})
        assert r.status_code == 422, (factory, r.text)
        assert r.json()["error_type"] == "validation_error"
        assert "factory" in r.json()["error"], r.json()
    stats = client.get("/v1/stats").json()
    assert stats["kind"] == "flat" and not stats["training"] and stats["count"] == 1200
    # "IVF2000,Flat" on 1200 items: the answer says why.
    r = client.post("/v1/index/rebuild", json={"factory": "IVF2000,Flat"})
    assert "needs at least 2000 items" in r.json()["error"]


def test_auto_goes_back_to_the_automatic_choice_across_restarts(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(autotune=False)
    client.post("/v1/items", json=items_body(clustered(1200, DIM)))
    forced = client.post("/v1/index/rebuild", json={"factory": "IVF8,PQ8x4", "wait": True})
    assert forced.status_code == 200, forced.text
    stats = wait_trained(client)
    assert (stats["factory"], stats["factory_override"]) == ("IVF8,PQ8x4", "IVF8,PQ8x4")
    # null retrains with the factory in force: the forced one.
    again = client.post("/v1/index/rebuild", json={"factory": None, "wait": True})
    assert again.json()["factory"] == "IVF8,PQ8x4"
    client.__exit__(None, None, None)

    client = make_client(autotune=False)  # the forced factory is kept in the snapshot
    assert client.get("/v1/stats").json()["factory_override"] == "IVF8,PQ8x4"
    back = client.post("/v1/index/rebuild", json={"factory": "auto", "wait": True})
    assert back.status_code == 200, back.text
    stats = wait_trained(client)
    assert stats["factory_override"] is None
    assert stats["factory"] == back.json()["factory"] == "IVF16,PQ8x4"  # the rule at 1200 x 32
    client.__exit__(None, None, None)

    client = make_client(autotune=False)  # and the way back too
    stats = client.get("/v1/stats").json()
    assert stats["factory_override"] is None and stats["factory"] == "IVF16,PQ8x4"
    hits = client.post("/v1/search", json={"vectors": [b64(clustered(1, DIM)[0])], "k": 3})
    assert hits.status_code == 200 and len(hits.json()["results"][0]) == 3
