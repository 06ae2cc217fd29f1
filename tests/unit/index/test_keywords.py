"""Keyword search of the Faiss backend: the store's FTS5 table follows every add, delete and
update, survives a reopen, is filled once for a store made before it, and the route ranks and
filters its hits."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from glimpse.index import keywords
from glimpse.index.store import NewItem, Store
from tests.unit.index.helpers import clustered, items_body

DIM = 8


def _item(key: str, path: str, **meta: object) -> NewItem:
    vector = np.zeros(DIM, dtype=np.float16)
    vector[0] = 1.0
    return NewItem(key, path, dict(meta), vector)


def _found(store: Store, query: str, k: int = 10) -> list[str]:
    return [h["path"] for h in keywords.search_store(store, query, k, None)]


def test_words_and_the_fts_expression() -> None:
    assert keywords.content_words("A photo of the Zanzibar beach, zanzibar!") == [
        "zanzibar", "beach"]
    assert keywords.fts_expression(["zanzibar", "beach"]) == '"zanzibar"* AND "beach"*'
    assert keywords.content_words("the of a") == []


def test_add_delete_update_and_reopen(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db", DIM)
    outcomes, _, _ = store.add([
        _item("a", "trips/2023/Zanzibar.jpg"),
        _item("b", "trips/2023/beach.jpg", keywords=["zanzibar", "sea"]),
        _item("c", "home/cat.jpg", title="Stone Town", description="Old town of Zanzibar"),
        _item("d", "home/dog.jpg", keywords=["dog"]),
    ])
    ids = {o.key: o.id for o in outcomes}
    # The name and keyword columns weigh more than the description.
    assert _found(store, "zanzibar") == [
        "trips/2023/Zanzibar.jpg", "trips/2023/beach.jpg", "home/cat.jpg"]
    assert _found(store, "zanz") == _found(store, "zanzibar")  # a word prefix
    assert _found(store, "zanzibar sea") == ["trips/2023/beach.jpg"]  # every word
    assert _found(store, "stone town") == ["home/cat.jpg"]
    assert _found(store, "zanzibar", k=1) == ["trips/2023/Zanzibar.jpg"]

    assert store.delete(ids["a"])
    assert _found(store, "zanzibar") == ["trips/2023/beach.jpg", "home/cat.jpg"]
    assert store.update(ids["d"], "trips/Zanzibar/dog.jpg", None)  # a move
    assert store.update(ids["b"], None, {"keywords": ["sea"]})  # a keyword dropped
    assert _found(store, "zanzibar") == ["trips/Zanzibar/dog.jpg", "home/cat.jpg"]
    assert _found(store, "dog") == ["trips/Zanzibar/dog.jpg"]
    store.close()

    reopened = Store(tmp_path / "s.db", DIM)
    assert _found(reopened, "zanzibar") == ["trips/Zanzibar/dog.jpg", "home/cat.jpg"]
    # Re-added under the same key: a new row, found again.
    reopened.add([_item("a", "trips/2023/Zanzibar.jpg")])
    assert "trips/2023/Zanzibar.jpg" in _found(reopened, "zanzibar")
    reopened.close()


def test_a_store_made_before_the_text_index_is_filled_once_at_open(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = Store(path, DIM)
    store.add([_item("a", "x/Zanzibar.jpg"), _item("b", "x/other.jpg", keywords=["zanzibar"])])
    store.close()
    # As an older version left it: rows, no full-text table, no triggers.
    with sqlite3.connect(path) as conn:
        conn.executescript("DROP TABLE items_text; DROP TRIGGER items_text_on_add; "
                           "DROP TRIGGER items_text_on_change; "
                           "DELETE FROM info WHERE name = 'text_index';")
    conn.close()
    reopened = Store(path, DIM)
    assert sorted(_found(reopened, "zanzibar")) == ["x/Zanzibar.jpg", "x/other.jpg"]
    reopened.close()


def test_the_route_ranks_filters_and_refuses_bad_input(client: TestClient) -> None:
    body = items_body(clustered(4, 32))
    body["items"][0]["path"] = "2023/Zanzibar.jpg"
    body["items"][1]["path"] = "2024/beach.jpg"
    body["items"][1]["meta"] = {"keywords": ["zanzibar"]}
    added = client.post("/v1/items", json=body).json()["items"]
    r = client.post("/v1/keywords/search", json={"query": "Zanzibar", "k": 10})
    assert r.status_code == 200
    hits = r.json()["hits"]
    assert [(h["id"], h["rank"]) for h in hits] == [(added[0]["id"], 1), (added[1]["id"], 2)]
    assert hits[1]["meta"] == {"keywords": ["zanzibar"]}
    narrowed = client.post("/v1/keywords/search",
                           json={"query": "zanzibar", "filters": {"folder": ["2024"]}})
    assert [h["path"] for h in narrowed.json()["hits"]] == ["2024/beach.jpg"]
    assert client.post("/v1/keywords/search", json={"query": "the"}).json() == {"hits": []}
    for bad in ({"query": ""}, {"k": 3}, {"query": "x", "k": 0},
                {"query": "x", "filters": {"colour": "red"}}):
        r = client.post("/v1/keywords/search", json=bad)
        assert r.status_code == 422, bad
        assert r.json()["error_type"] == "validation_error"
