"""The model migration (issue 22) end to end with the index on a real Milvus (tests/support/
milvus.py): glimpse-tiny (64-d) to glimpse-tiny-32 (32-d) with search up, the switch, a rollback
that restores the old answers, and confirm. The items' collection needs each row's built-in
vector, so after confirm new items are still encoded by both models there (one call each)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.integration.test_model_migration import (
    KEY,
    NEW,
    SPACE,
    SearchLoop,
    _image,
    _image_embeds,
    _ingest,
    _wait_state,
)
from tests.support.milvus import EmbeddedMilvus, milvus_env
from tests.support.stack import TINY_DIM, start_stack

pytestmark = [pytest.mark.milvus, pytest.mark.slow]


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
        # Milvus: each item's row holds its built-in vector, so both models encode new items.
        calls = _image_embeds(stack)
        files = [("files", ("m/late.jpg", _image(999), "image/jpeg"))]
        added = client.post("/ingest", files=files).json()["items"][0]
        assert added["status"] == "added"
        assert _image_embeds(stack) == calls + 2
        assert index.get(f"/v1/spaces/{SPACE}/pending").json()["items"] == []
        hits = client.post("/search/text", json={"query": "a photo", "k": 40}).json()
        assert hits["model"] == NEW and added["id"] in {h["id"] for h in hits["results"]}
        assert client.post("/admin/model/rollback").status_code == 409
