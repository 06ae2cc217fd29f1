"""The model migration (issue 22) with the index on a real Milvus (tests/support/milvus.py):
glimpse-tiny (64-d) to glimpse-tiny-32 (32-d) end to end with search up, the switch, a rollback
that restores the old answers, and confirm, after which an ingest is encoded once; and, on the
index alone, items added into a named space, whose rows hold a placeholder no built-in search
returns (glimpse/index/milvus_store.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.integration import test_index_milvus_contract as contract
from tests.integration.test_model_migration import (
    KEY,
    NEW,
    SPACE,
    SearchLoop,
    _image_embeds,
    _ingest,
    _wait_state,
)
from tests.support.milvus import EmbeddedMilvus, milvus_env
from tests.support.stack import TINY_DIM, start_stack
from tests.unit.index import test_spaces_add as faiss_suite
from tests.unit.index.helpers import b64, clustered, wait_ready

pytestmark = [pytest.mark.milvus, pytest.mark.slow]

# The contract suite's index app (tests/integration/test_index_milvus_contract.py), on Milvus
# alone: the Faiss side of these tests runs in tests/unit/index/test_spaces_add.py.
make_client = contract.make_client
client = contract.client


@pytest.fixture
def backend() -> str:
    return "milvus"


test_bad_space_adds_are_4xx_and_store_nothing = (
    faiss_suite.test_bad_space_adds_are_4xx_and_store_nothing)
test_the_item_listing_holds_every_item_with_the_active_spaces_vectors = (
    faiss_suite.test_the_item_listing_holds_every_item_with_the_active_spaces_vectors)


def test_items_added_into_a_space_have_a_placeholder_no_builtin_search_returns(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client()
    ids, late_ids, late = faiss_suite._setup_checked(client)
    counts = faiss_suite._counts

    def builtin_hits(**extra: Any) -> set[int]:
        body = {"vectors": [b64(clustered(1, faiss_suite.DIM, seed=4)[0])], "k": 50,
                "space": "default", **extra}
        r = client.post("/v1/search", json=body)
        assert r.status_code == 200, r.text
        return {h["id"] for h in r.json()["results"][0]}

    # Exact, Milvus's index (and the fresh rows beside it), and a filter read exactly: the
    # placeholders are in none.
    assert builtin_hits(exact=True) == builtin_hits() == set(ids)
    assert builtin_hits(filters={"folder": ["img"]}) == set(ids)
    # In the active space they are items like the others: filters, keywords, updates.
    assert client.patch(f"/v1/items/{late_ids[1]}", json={
        "path": "trip/1.jpg", "meta": {"keywords": ["beach"]}}).status_code == 200
    trip = client.post("/v1/search", json={"vectors": [b64(late[3])], "k": 5,
                                           "filters": {"folder": ["trip"]}, "words": "beach"})
    assert [h["id"] for h in trip.json()["results"][0]] == [late_ids[1]]
    assert [h["id"] for h in trip.json()["keywords"]] == [late_ids[1]]
    assert builtin_hits(exact=True) == builtin_hits() == set(ids)
    assert client.get(f"/v1/items/{late_ids[1]}/vector",
                      params={"space": "default"}).status_code == 404
    assert client.delete(f"/v1/items/{late_ids[4]}").status_code in (200, 204)
    assert counts(client) == {"default": 20, "clip2": 24}
    assert client.get("/v1/stats").json()["count"] == 24
    gone = client.get(f"/v1/items/{late_ids[4]}")
    assert gone.status_code == 404 and "was deleted" in gone.json()["error"]
    assert builtin_hits(exact=True) == set(ids)
    # A restart: the placeholders, the space vectors and the active space are all kept.
    client.__exit__(None, None, None)
    again = make_client()
    wait_ready(again)
    assert counts(again) == {"default": 20, "clip2": 24}
    assert faiss_suite._top(again, late[0], "clip2") == late_ids[0]
    assert again.get(f"/v1/items/{late_ids[1]}").json()["path"] == "trip/1.jpg"


def test_a_migration_on_milvus_switches_rolls_back_and_confirms(
    milvus_server: EmbeddedMilvus, collection_name: str, tmp_path: Path
) -> None:
    env = milvus_env(milvus_server, collection_name, TINY_DIM)
    with start_stack(tmp_path, GATEWAY_API_KEY=KEY, **env) as stack, \
            stack.client(KEY, timeout=60) as client, \
            httpx.Client(base_url=stack.index.url, timeout=60) as index:
        ids = _ingest(client, range(30))
        before = client.post("/search/text", json={"query": "a photo", "k": 5}).json()
        assert before["model"] == "glimpse-tiny" and len(before["results"]) == 5

        loop = SearchLoop(stack.gateway_url)
        loop.start()
        started = client.post("/admin/model", json={"model": NEW, "pretrained": "none"})
        assert started.status_code == 202, started.text
        late = _ingest(client, range(100, 103))  # encoded by both models
        switched = _wait_state(client, "switched")
        time.sleep(1.0)  # every worker reads the state twice a second
        loop.halt.set()
        loop.join()
        assert loop.failures == []
        assert set(loop.models) <= {"glimpse-tiny", NEW} and loop.models[-1] == NEW
        assert (switched["done"], switched["total"]) == (33, 33)
        spaces = index.get("/v1/spaces").json()
        assert spaces["active"] == SPACE
        assert {s["name"]: s["count"] for s in spaces["spaces"]} == {"default": 33, SPACE: 33}
        after = client.post("/search/text", json={"query": "a photo", "k": 40}).json()
        assert after["model"] == NEW
        assert {h["id"] for h in after["results"]} == set(ids) | set(late)
        similar = client.get(f"/images/{late[0]}/similar", params={"k": 3}).json()
        assert similar["model"] == NEW and similar["results"]

        rolled = client.post("/admin/model/rollback")
        assert rolled.status_code == 200 and rolled.json()["state"] == "rolled_back"
        time.sleep(1.0)
        restored = client.post("/search/text", json={"query": "a photo", "k": 5}).json()
        assert restored["model"] == "glimpse-tiny"
        assert restored["results"] == before["results"]

        assert client.post("/admin/model", json={"model": NEW, "pretrained": "none"}
                           ).status_code == 202
        _wait_state(client, "switched")
        confirmed = client.post("/admin/model/confirm")
        assert confirmed.status_code == 200 and confirmed.json()["state"] == "confirmed"
        # After confirm an ingest is encoded by the new model alone, one encoder call, and its
        # row holds a placeholder for the built-in vector.
        calls = _image_embeds(stack)
        late = _ingest(client, range(200, 202))
        assert _image_embeds(stack) == calls + 1
        assert index.get(f"/v1/spaces/{SPACE}/pending").json() | {"items": []} == {
            "space": SPACE, "items": [], "done": 35, "total": 35}
        counts = {s["name"]: s["count"] for s in index.get("/v1/spaces").json()["spaces"]}
        assert counts == {"default": 33, SPACE: 35}
        own = index.get(f"/v1/items/{late[0]}/vector", params={"space": "default"})
        assert own.status_code == 404 and "no vector in space 'default'" in own.json()["error"]
        hits = client.post("/search/text", json={"query": "a photo", "k": 40}).json()
        assert hits["model"] == NEW and set(late) <= {h["id"] for h in hits["results"]}
        similar = client.get(f"/images/{late[1]}/similar", params={"k": 3}).json()
        assert similar["model"] == NEW and similar["results"]
        listed = index.get("/v1/items", params={"vectors": "true", "limit": 100}).json()
        assert {i["id"]: len(i["vector"]) for i in listed["items"] if i["id"] in late} == {
            late[0]: 32, late[1]: 32}
        assert client.post("/admin/model/rollback").status_code == 409
        # The index restarted serves them from Milvus as before.
        stack.index.kill()
        stack.index.start()
        counts = {s["name"]: s["count"] for s in index.get("/v1/spaces").json()["spaces"]}
        assert counts == {"default": 33, SPACE: 35}
        hits = client.post("/search/text", json={"query": "a photo", "k": 40}).json()
        assert set(late) <= {h["id"] for h in hits["results"]}
