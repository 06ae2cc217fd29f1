"""The index service's HTTP contract on both backends: Faiss and a real Milvus server.

The backend-agnostic tests of tests/unit/index/test_api.py run here again with a
``make_client`` parametrised over INDEX_BACKEND; the tests below them check what only
matters once a second backend exists (exact search against numpy on both, Milvus's sealed
HNSW segments and IVF_PQ ones with re-ranking, the ops routes Milvus owns).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pymilvus import Collection, connections, utility

from glimpse.index.config import MilvusSettings
from glimpse.index.main import create_app
from tests.support.milvus import EmbeddedMilvus
from tests.unit.index import test_api as suite
from tests.unit.index.helpers import (
    as_stored,
    b64,
    clustered,
    items_body,
    recall_at,
    settings,
    wait_ready,
)

pytestmark = pytest.mark.milvus

DIM = suite.DIM

# The backend-agnostic part of the API suite (the rest tests snapshots, Faiss training and
# tuning, SQLite's disk-full path: Faiss-only by nature).
test_add_is_idempotent_by_key_and_search_finds_items = (
    suite.test_add_is_idempotent_by_key_and_search_finds_items)
test_duplicate_keys_inside_one_batch_store_one_row = (
    suite.test_duplicate_keys_inside_one_batch_store_one_row)
test_vectors_are_stored_unit_length_in_both_encodings = (
    suite.test_vectors_are_stored_unit_length_in_both_encodings)
test_a_bad_vector_rejects_the_whole_batch = suite.test_a_bad_vector_rejects_the_whole_batch
test_limits_and_empty_batches_are_refused = suite.test_limits_and_empty_batches_are_refused
test_k_larger_than_the_collection_and_an_empty_index = (
    suite.test_k_larger_than_the_collection_and_an_empty_index)
test_ids_sqlite_cannot_hold_are_422_not_500 = suite.test_ids_sqlite_cannot_hold_are_422_not_500
test_largest_id_is_404_and_exclude_ids_are_bounded = (
    suite.test_largest_id_is_404_and_exclude_ids_are_bounded)
test_delete_get_and_exclude = suite.test_delete_get_and_exclude
test_items_are_listed_a_page_at_a_time_in_id_order_without_the_deleted = (
    suite.test_items_are_listed_a_page_at_a_time_in_id_order_without_the_deleted)
test_searches_answer_the_same_with_gathering_off = (
    suite.test_searches_answer_the_same_with_gathering_off)
test_past_the_detail_a_hit_is_its_id_and_score = (
    suite.test_past_the_detail_a_hit_is_its_id_and_score)


@pytest.fixture(params=["faiss", "milvus"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_client(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., TestClient]]:
    """An index app on ``backend``, started and ready. On Milvus each data_dir maps to its own
    collection (so two clients on one data_dir share their items, as on Faiss)."""
    opened: list[TestClient] = []
    collections: list[str] = []
    server: EmbeddedMilvus | None = (
        request.getfixturevalue("milvus_server") if backend == "milvus" else None
    )

    def make(**overrides: Any) -> TestClient:
        overrides.setdefault("data_dir", tmp_path / "index")
        if server is not None:
            digest = hashlib.blake2b(str(overrides["data_dir"]).encode(), digest_size=6)
            name = f"t_{digest.hexdigest()}"
            collections.append(name)
            overrides = {"backend": "milvus", "milvus_uri": server.uri,
                         "milvus_collection": name, "milvus_timeout_s": 10, **overrides}
        milvus = MilvusSettings(**{key.removeprefix("milvus_"): overrides.pop(key)
                                   for key in list(overrides) if key.startswith("milvus_")})
        client = TestClient(create_app(settings(**overrides), milvus))
        client.__enter__()
        opened.append(client)
        wait_ready(client)
        return client

    yield make
    for client in reversed(opened):
        client.__exit__(None, None, None)
    for name in dict.fromkeys(collections):
        assert server is not None
        server.drop(name)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def _search(client: TestClient, queries: np.ndarray, k: int, **extra: Any) -> list[list[int]]:
    r = client.post("/v1/search", json={"vectors": [b64(q) for q in queries], "k": k, **extra})
    assert r.status_code == 200, r.text
    return [[h["id"] for h in row] for row in r.json()["results"]]


def test_exact_search_is_numpy_on_the_stored_vectors(client: TestClient) -> None:
    x = clustered(600, DIM, clusters=12)
    ids = np.asarray([i["id"] for i in
                      client.post("/v1/items", json=items_body(x)).json()["items"]])
    q = clustered(20, DIM, clusters=12, seed=4)  # unit already; queries are not float16-rounded
    truth = ids[np.argsort(-(q @ as_stored(x).T), axis=1, kind="stable")[:, :10]]
    found = np.asarray(_search(client, q, 10, exact=True))
    assert recall_at(found, truth) >= 0.99  # float ties may order two equal scores either way
    approx = np.asarray(_search(client, q, 10))
    assert recall_at(approx, truth) >= 0.95
    r = client.post("/v1/search", json={"vectors": [b64(q[0])], "k": 10}).json()["results"][0]
    scores = [h["score"] for h in r]
    assert scores == sorted(scores, reverse=True)
    np.testing.assert_allclose(scores, np.sort(as_stored(x) @ q[0])[::-1][:10],
                               atol=1e-5)


def test_a_deleted_key_comes_back_under_a_new_id_and_the_old_one_stays_gone(
    client: TestClient,
) -> None:
    x = clustered(30, DIM)
    first = [i["id"] for i in client.post("/v1/items", json=items_body(x)).json()["items"]]
    for _ in range(3):
        assert client.delete(f"/v1/items/{first[4]}").status_code == 204
        again = client.post("/v1/items", json=items_body(x[4:5], start=4)).json()["items"][0]
        assert again["status"] == "added" and again["id"] not in first
        hits = _search(client, x[4:5], 30)[0]
        assert first[4] not in hits and again["id"] in hits and len(hits) == 30
        assert client.get(f"/v1/items/{first[4]}").status_code == 404
        first[4] = again["id"]
    assert int(client.get("/v1/stats").json()["count"]) == 30


@pytest.mark.parametrize("backend", ["milvus"])
@pytest.mark.parametrize(("index_type", "rerank"), [("HNSW", 0), ("IVF_PQ", 16)])
def test_milvus_sealed_segments_reach_high_recall(
    make_client: Callable[..., TestClient], milvus_server: EmbeddedMilvus, index_type: str,
    rerank: int,
) -> None:
    """HNSW (the default) on its own scores; IVF_PQ with the re-rank on exact vectors."""
    params = {"nlist": 16, "m": 8, "nbits": 8} if index_type == "IVF_PQ" else {}
    client = make_client(milvus_index_type=index_type, milvus_index_params=params)
    x = clustered(4000, DIM, clusters=40)
    for start in range(0, len(x), 1000):
        r = client.post("/v1/items", json=items_body(x[start : start + 1000], start=start))
        assert r.status_code == 200
    name = client.app.state.milvus.collection  # type: ignore[attr-defined]
    connections.connect(alias="seal", uri=milvus_server.uri)
    try:
        collection = Collection(name, using="seal")
        collection.flush()  # seals the segment: Milvus builds its index on it
        utility.wait_for_index_building_complete(name, using="seal", timeout=120)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            info = utility.index_building_progress(name, using="seal")
            if info.get("indexed_rows", 0) >= len(x):
                break
            time.sleep(0.5)
        assert info.get("indexed_rows", 0) >= len(x), info
    finally:
        connections.disconnect("seal")
    q = clustered(50, DIM, clusters=40, seed=9)
    truth = np.asarray(_search(client, q, 10, exact=True))
    found = np.asarray(_search(client, q, 10))
    assert recall_at(found, truth) >= 0.95
    stats = client.get("/v1/stats").json()
    assert stats["kind"] == f"milvus_{index_type.lower()}" and stats["rerank"] == rerank
    assert stats["count"] == 4000


@pytest.mark.parametrize("backend", ["milvus"])
def test_ops_routes_that_milvus_owns_answer_409_with_a_sentence(client: TestClient) -> None:
    for path in ("/v1/index/rebuild", "/v1/index/snapshot", "/v1/index/tune"):
        r = client.post(path, json={})
        assert r.status_code == 409, r.text
        assert r.json()["error_type"] == "conflict" and "Milvus" in r.json()["error"]
    assert client.get("/readyz").json() == {"ready": True, "checks": {"index": "ok"}}


@pytest.mark.parametrize("backend", ["milvus"])
def test_ghost_rows_never_answer_and_the_next_hits_take_their_place(client: TestClient) -> None:
    """A row left beside its tombstone (a replica killed between a delete's two steps, or an
    add that raced the delete) is deleted: a search skips it and still answers k hits."""
    x = clustered(300, DIM, clusters=3)
    assert client.post("/v1/items", json=items_body(x)).status_code == 200
    before = _search(client, x[:1], 12)[0]
    store = client.app.state.service.store  # type: ignore[attr-defined]
    ghosts = before[:4]
    for item_id in ghosts:
        record = store.get(item_id)
        # The delete's first step only: the tombstone is written, the row stays.
        store._upsert([[-item_id], [record.key], [""], [{}], [time.time()],  # noqa: SLF001
                       np.zeros((1, DIM), dtype=np.float32)], "delete")
    store._await_visible([-i for i in ghosts], "delete")  # noqa: SLF001
    after = _search(client, x[:1], 5)[0]
    assert after == [i for i in before if i not in ghosts][:5]
    for item_id in ghosts:
        assert client.get(f"/v1/items/{item_id}").status_code == 404


@pytest.mark.parametrize("backend", ["milvus"])
def test_concurrent_searches_share_milvus_calls_and_answer_as_alone(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    """Searches that queue while a Milvus call runs go to Milvus together (different k and
    exclude_ids in one batch): each answer is the one it gets alone."""
    alone = make_client(milvus_search_calls=0, data_dir=tmp_path / "shared")
    assert alone.post("/v1/items", json=items_body(clustered(300, DIM))).status_code == 200
    gathered = make_client(milvus_search_calls=1, data_dir=tmp_path / "shared")
    queries = clustered(48, DIM, seed=8)
    bodies = [{"vectors": [b64(q)], "k": 3 + n % 4, "exclude_ids": [1] if n % 3 else []}
              for n, q in enumerate(queries)]
    expected = [alone.post("/v1/search", json=body).json()["results"] for body in bodies]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(
            lambda body: gathered.post("/v1/search", json=body).json()["results"], bodies))
    assert answers == expected
    stats = gathered.get("/v1/stats").json()
    assert stats["gathered_requests"] == len(bodies)
    assert stats["gathered_calls"] < len(bodies)
