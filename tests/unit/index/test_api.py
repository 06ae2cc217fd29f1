"""The index service's HTTP API in-process (TestClient runs the lifespan)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from glimpse.index import api as index_api
from glimpse.index.service import IndexService
from tests.unit.index.helpers import as_stored, b64, clustered, items_body

DIM = 32


def _count(client: TestClient) -> int:
    return int(client.get("/v1/stats").json()["count"])


def test_add_is_idempotent_by_key_and_search_finds_items(client: TestClient) -> None:
    x = clustered(200, DIM)
    first = client.post("/v1/items", json=items_body(x))
    assert first.status_code == 200
    assert [i["status"] for i in first.json()["items"]] == ["added"] * 200
    again = client.post("/v1/items", json=items_body(x[:10], binary=False))
    assert [i["status"] for i in again.json()["items"]] == ["exists"] * 10
    assert [i["id"] for i in again.json()["items"]] == [i["id"] for i in first.json()["items"][:10]]
    assert _count(client) == 200

    r = client.post("/v1/search", json={"vectors": [b64(x[7] * 3.0)], "k": 5})
    assert r.status_code == 200
    hits = r.json()["results"][0]
    assert hits[0]["id"] == first.json()["items"][7]["id"]
    assert hits[0]["path"] == "img/7.jpg" and hits[0]["meta"] == {"n": 7}
    assert hits[0]["score"] == pytest.approx(1.0, abs=2e-3)
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)


def test_past_the_detail_a_hit_is_its_id_and_score(client: TestClient) -> None:
    x = clustered(50, DIM)
    client.post("/v1/items", json=items_body(x))
    full = client.post("/v1/search", json={"vectors": [b64(x[3])], "k": 6}).json()["results"][0]
    cut = client.post("/v1/search", json={"vectors": [b64(x[3])], "k": 6, "detail": 2})
    hits = cut.json()["results"][0]
    assert hits[:2] == full[:2] and all("path" in h for h in hits[:2])
    assert hits[2:] == [{"id": h["id"], "score": h["score"]} for h in full[2:]]


def test_duplicate_keys_inside_one_batch_store_one_row(client: TestClient) -> None:
    x = clustered(3, DIM)
    body = items_body(x)
    body["items"][2]["key"] = body["items"][0]["key"]
    out = client.post("/v1/items", json=body).json()["items"]
    assert [o["status"] for o in out] == ["added", "added", "exists"]
    assert out[2]["id"] == out[0]["id"]
    assert _count(client) == 2


def test_vectors_are_stored_unit_length_in_both_encodings(client: TestClient) -> None:
    raw = np.arange(1, DIM + 1, dtype=np.float32)
    item_id = client.post("/v1/items", json={"items": [
        {"vector": (raw * 7).tolist(), "path": "a.jpg", "key": "a"}]}).json()["items"][0]["id"]
    as_floats = client.get(f"/v1/items/{item_id}/vector").json()
    assert as_floats["dim"] == DIM
    np.testing.assert_allclose(as_floats["vector"], as_stored(raw[None])[0], atol=1e-6)
    as_b64 = client.get(f"/v1/items/{item_id}/vector", params={"encoding": "base64"}).json()
    assert as_b64["vector"] == b64(np.asarray(as_floats["vector"], dtype=np.float32))


@pytest.mark.parametrize(
    ("vector", "needle"),
    [
        ([1.0] * (DIM - 1), "dimension 31, expected 32"),
        ([float("nan")] + [1.0] * (DIM - 1), "NaN or Inf"),
        ([0.0] * DIM, "zero vector"),
        ("not base64!", "base64"),
    ],
)
def test_a_bad_vector_rejects_the_whole_batch(
    client: TestClient, vector: object, needle: str
) -> None:
    good = items_body(clustered(3, DIM))
    good["items"].insert(2, {"vector": vector, "path": "bad.jpg", "key": "bad"})
    if isinstance(vector, list) and any(v != v for v in vector):
        # JSON has no NaN: send it the way a float32 client would, as base64.
        good["items"][2]["vector"] = b64(np.asarray(vector, dtype=np.float32))
    r = client.post("/v1/items", json=good)
    assert r.status_code == 422, r.text
    assert needle in r.json()["error"] and "items[2]" in r.json()["error"]
    assert _count(client) == 0


def test_limits_and_empty_batches_are_refused(
    make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in (("MAX_BATCH", 4), ("MAX_K", 50), ("MAX_SEARCH_VECTORS", 2)):
        monkeypatch.setattr(index_api, name, value)
    client = make_client()
    x = clustered(5, DIM)
    too_many = client.post("/v1/items", json=items_body(x))
    assert too_many.status_code == 413 and "limit is 4" in too_many.json()["error"]
    empty = client.post("/v1/items", json={"items": []})
    assert empty.status_code == 422 and "items" in empty.json()["error"]
    assert _count(client) == 0
    big_k = client.post("/v1/search", json={"vectors": [b64(x[0])], "k": 51})
    assert big_k.status_code == 422 and "k is 51" in big_k.json()["error"]
    many = client.post("/v1/search", json={"vectors": [b64(v) for v in x[:3]], "k": 1})
    assert many.status_code == 413
    no_vectors = client.post("/v1/search", json={"vectors": [], "k": 1})
    assert no_vectors.status_code == 422
    wrong_dim = client.post("/v1/search", json={"vectors": [[1.0, 2.0]], "k": 1})
    assert wrong_dim.status_code == 422 and "dimension 2" in wrong_dim.json()["error"]


def test_k_larger_than_the_collection_and_an_empty_index(client: TestClient) -> None:
    q = clustered(2, DIM, seed=5)
    empty = client.post("/v1/search", json={"vectors": [b64(v) for v in q], "k": 10})
    assert empty.status_code == 200 and empty.json()["results"] == [[], []]
    client.post("/v1/items", json=items_body(clustered(3, DIM)))
    r = client.post("/v1/search", json={"vectors": [b64(q[0])], "k": 10, "exact": True}).json()
    assert len(r["results"][0]) == 3
    assert all(h["id"] > 0 for h in r["results"][0])


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/v1/items/{2**63}"),
        ("GET", f"/v1/items/{2**70}"),
        ("GET", f"/v1/items/{2**63}/vector"),
        ("DELETE", f"/v1/items/{2**64}"),
        ("GET", "/v1/items/-1"),
        ("DELETE", "/v1/items/-5"),
    ],
)
def test_ids_sqlite_cannot_hold_are_422_not_500(client: TestClient, method: str,
                                                path: str) -> None:
    r = client.request(method, path)
    assert r.status_code == 422, r.text
    assert r.json()["error_type"] == "validation_error"
    assert "item_id" in r.text


def test_largest_id_is_404_and_exclude_ids_are_bounded(client: TestClient) -> None:
    x = clustered(3, DIM)
    assert client.post("/v1/items", json=items_body(x)).status_code == 200
    assert client.get(f"/v1/items/{2**63 - 1}").status_code == 404
    assert client.delete(f"/v1/items/{2**63 - 1}").status_code == 404
    ok = client.post("/v1/search", json={"vectors": [b64(x[0])], "k": 2,
                                         "exclude_ids": [2**63 - 1]})
    assert ok.status_code == 200 and len(ok.json()["results"][0]) == 2
    for bad in (2**63, -1):
        r = client.post("/v1/search", json={"vectors": [b64(x[0])], "k": 2,
                                            "exclude_ids": [bad]})
        assert r.status_code == 422, r.text
        assert "exclude_ids" in r.text
    assert _count(client) == 3


def test_items_are_listed_a_page_at_a_time_in_id_order_without_the_deleted(
    client: TestClient,
) -> None:
    x = clustered(25, DIM)
    ids = [i["id"] for i in client.post("/v1/items", json=items_body(x)).json()["items"]]
    assert client.delete(f"/v1/items/{ids[4]}").status_code == 204
    seen: list[int] = []
    after: int | None = 0
    while after is not None:
        page = client.get("/v1/items", params={"after": after, "limit": 10, "vectors": "true",
                                               "encoding": "base64"}).json()
        seen += [i["id"] for i in page["items"]]
        for item in page["items"]:
            assert item["vector"] == b64(as_stored(x[ids.index(item["id"])][None])[0])
        after = page["next_after"]
    assert seen == sorted(set(ids) - {ids[4]})
    plain = client.get("/v1/items", params={"limit": 2}).json()["items"]
    first = seen[0]
    assert plain[0]["id"] == first and plain[0]["key"] == f"key-{ids.index(first)}"
    assert plain[0]["vector"] is None and len(plain) == 2
    for bad in ({"limit": 0}, {"vectors": "maybe"}, {"encoding": "hex"}):
        r = client.get("/v1/items", params=bad)
        assert r.status_code == 422 and next(iter(bad)) in r.json()["error"]


def test_delete_get_and_exclude(client: TestClient) -> None:
    x = clustered(20, DIM)
    ids = [i["id"] for i in client.post("/v1/items", json=items_body(x)).json()["items"]]
    record = client.get(f"/v1/items/{ids[3]}").json()
    assert record["key"] == "key-3" and record["path"] == "img/3.jpg" and record["seq"] >= 1

    assert client.delete(f"/v1/items/{ids[3]}").status_code == 204
    again = client.delete(f"/v1/items/{ids[3]}")
    assert again.status_code == 404 and "deleted" in again.json()["error"]
    assert client.get(f"/v1/items/{ids[3]}").status_code == 404
    assert client.get(f"/v1/items/{ids[3]}/vector").status_code == 404
    unknown = client.get("/v1/items/999999")
    assert unknown.status_code == 404 and unknown.json()["error_type"] == "not_found"

    r = client.post("/v1/search", json={"vectors": [b64(x[3])], "k": 20}).json()["results"][0]
    assert ids[3] not in [h["id"] for h in r] and len(r) == 19
    ex = client.post(
        "/v1/search", json={"vectors": [b64(x[5])], "k": 5, "exclude_ids": [ids[5]]}
    ).json()["results"][0]
    assert ids[5] not in [h["id"] for h in ex] and len(ex) == 5

    missing = client.post("/v1/keys/missing", json={"keys": ["key-3", "key-4", "nope"]}).json()
    assert missing["missing"] == ["key-3", "nope"]
    known = client.post("/v1/keys/ids", json={"keys": ["key-3", "key-4", "nope", "key-4"]})
    assert known.json() == {"ids": {"key-4": ids[4]}}
    readd = client.post("/v1/items", json=items_body(x[3:4], start=3)).json()["items"][0]
    assert readd["status"] == "added" and readd["id"] != ids[3]


def test_stats_snapshot_rebuild_and_ops_routes(client: TestClient) -> None:
    client.post("/v1/items", json=items_body(clustered(1200, DIM)))
    stats = client.get("/v1/stats").json()
    assert stats["kind"] == "flat" and stats["count"] == 1200 and stats["dim"] == DIM
    snap = client.post("/v1/index/snapshot").json()
    assert snap["seq"] == 1200 and snap["bytes"] > 0
    assert client.get("/v1/stats").json()["snapshot_seq"] == 1200

    bad = client.post("/v1/index/rebuild", json={"factory": "IVF8,Nonsense"})
    assert bad.status_code == 422 and "factory" in bad.json()["error"]
    done = client.post("/v1/index/rebuild", json={"factory": "IVF8,PQ8x4", "wait": True})
    assert done.status_code == 200 and done.json() == {"status": "done", "factory": "IVF8,PQ8x4"}
    stats = client.get("/v1/stats").json()
    assert stats["kind"] == "ivfpq" and stats["nlist"] == 8
    # Each training is followed by a tuning of nprobe and re-rank depth on held-out vectors.
    assert stats["search_defaults_source"] == "tuned"
    assert (stats["nprobe"], stats["rerank"]) == (stats["tuned"]["nprobe"],
                                                   stats["tuned"]["rerank"])

    tuned = client.post("/v1/index/tune", json={"target": 0.8, "sample": 60})
    assert tuned.status_code == 200, tuned.text
    body = tuned.json()
    assert body["reached"] and body["recall_at_k"] >= 0.8 and body["applied"]
    assert body["sample"] == 60 and body["trials"]
    assert client.get("/v1/stats").json()["rerank"] == body["rerank"]

    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["ready"] is True
    metrics = client.get("/metrics").text
    assert 'route="/v1/items"' in metrics


def test_tuning_an_exact_index_is_a_conflict(client: TestClient) -> None:
    client.post("/v1/items", json=items_body(clustered(50, DIM)))
    r = client.post("/v1/index/tune", json={})
    assert r.status_code == 409 and "flat" in r.json()["error"]


def test_disk_full_answers_507_and_acknowledges_nothing(client: TestClient) -> None:
    client.post("/v1/items", json=items_body(clustered(5, DIM)))
    store = client.app.state.service.store  # type: ignore[attr-defined]
    # SQLite's own size cap gives the real SQLITE_FULL path a full disk takes.
    pages = store._writer.execute("PRAGMA page_count").fetchone()[0]
    store._writer.execute(f"PRAGMA max_page_count={pages}")
    r = client.post("/v1/items", json=items_body(clustered(300, DIM, seed=3), start=100))
    assert r.status_code == 507, r.text
    assert r.json()["error_type"] == "insufficient_storage"
    assert _count(client) == 5
    ok = client.post("/v1/search", json={"vectors": [b64(clustered(1, DIM)[0])], "k": 50})
    assert len(ok.json()["results"][0]) == 5


def test_searches_answer_the_same_with_gathering_off(
    make_client: Callable[..., TestClient], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = clustered(300, DIM)
    q = {"vectors": [b64(v) for v in clustered(5, DIM, seed=8)], "k": 7, "exclude_ids": [3]}
    answers = []
    for gather in (True, False):
        # Gathering is for CUDA; here it is switched on for the CPU index by hand.
        monkeypatch.setattr(IndexService, "gathering",
                            property(lambda self, on=gather: self.gatherer is not None and on))
        client = make_client(data_dir=tmp_path / str(gather))
        client.post("/v1/items", json=items_body(x))
        answers.append(client.post("/v1/search", json=q).json())
    assert answers[0] == answers[1] and len(answers[0]["results"][0]) == 7
