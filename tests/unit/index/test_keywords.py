"""Keyword search of the Faiss backend: the store's FTS5 table follows every add, delete and
update, survives a reopen, is filled once for a store made before it, and /v1/search's
``words`` rank, filter and exclude its hits."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from glimpse.index import keywords
from glimpse.index.store import NewItem, Store
from tests.unit.index.helpers import b64, clustered, items_body

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


def test_the_search_route_ranks_filters_and_excludes_keyword_hits(client: TestClient) -> None:
    vectors = clustered(4, 32)
    body = items_body(vectors)
    body["items"][0]["path"] = "2023/Zanzibar.jpg"
    body["items"][1]["path"] = "2024/beach.jpg"
    body["items"][1]["meta"] = {"keywords": ["zanzibar"]}
    body["items"][2]["path"] = "2024/Zanzibar night.jpg"
    added = [i["id"] for i in client.post("/v1/items", json=body).json()["items"]]

    def search(words: str | None, **extra: Any) -> Any:
        r = client.post("/v1/search", json={"vectors": [b64(vectors[3])], "k": 4,
                                            **({} if words is None else {"words": words}),
                                            **extra})
        assert r.status_code == 200, r.text
        return r.json()

    found = search("Zanzibar")
    assert len(found["results"][0]) == 4
    hits = found["keywords"]
    assert hits[0]["id"] == added[0] and {h["id"] for h in hits} == set(added[:3])
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert next(h for h in hits if h["id"] == added[1])["meta"] == {"keywords": ["zanzibar"]}
    # The same filters and exclusions as the vector hits; `words_k` of them, else `k`.
    narrowed = search("zanzibar", filters={"folder": ["2024"]}, exclude_ids=[added[1]])
    assert [h["path"] for h in narrowed["keywords"]] == ["2024/Zanzibar night.jpg"]
    assert [h["id"] for h in search("zanzibar", words_k=1)["keywords"]] == [added[0]]
    assert len(search("zanzibar", k=2, detail=1)["keywords"]) == 2
    assert search("the")["keywords"] == []
    assert "keywords" not in search(None)
    for bad in ({"words": ""}, {"words": "x" * 1001}, {"words": 3},
                {"words": "x", "words_k": 0}, {"words": "x", "words_k": 100_000}):
        r = client.post("/v1/search", json={"vectors": [b64(vectors[0])], **bad})
        assert r.status_code == 422, bad
        assert r.json()["error_type"] == "validation_error" and "words" in r.json()["error"]
    assert client.post("/v1/keywords/search", json={"query": "x"}).status_code == 404
