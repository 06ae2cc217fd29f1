"""The whole stack (gateway, tiny-model encoder, index) with the index on a real Milvus.

The gateway does not know which backend answers: ingest, search, the image URLs built from
Milvus-backed ids, delete and re-ingest work as on Faiss; and with Milvus down the gateway
answers 503 with a sentence, then recovers once Milvus is back.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.support.milvus import EmbeddedMilvus, milvus_env
from tests.support.stack import TINY_DIM, sample_photos, start_stack

pytestmark = [pytest.mark.milvus, pytest.mark.slow]


def test_the_stack_on_milvus_ingests_searches_and_survives_a_milvus_outage(
    milvus_server: EmbeddedMilvus, collection_name: str, tmp_path: Path
) -> None:
    env = milvus_env(milvus_server, collection_name, TINY_DIM, INDEX_MILVUS_TIMEOUT_S="3")
    photos = sample_photos(limit=6)
    with start_stack(tmp_path, **env) as stack, stack.client(timeout=60) as client:
        files = [("files", (f"milvus/{name}", data, "image/jpeg"))
                 for name, data in photos.items()]
        items = client.post("/ingest", files=files).json()["items"]
        assert [i["status"] for i in items] == ["added"] * len(photos), items
        again = client.post("/ingest", files=files[:2]).json()["items"]
        assert [i["status"] for i in again] == ["exists", "exists"]
        assert [i["id"] for i in again] == [i["id"] for i in items[:2]]

        hits = client.post("/search/text", json={"query": "a photo", "k": 10}).json()["results"]
        assert sorted(h["id"] for h in hits) == sorted(i["id"] for i in items)
        first = client.get(hits[0]["image_url"])
        assert first.status_code == 200 and first.content in photos.values()

        gone = items[0]["id"]
        assert client.delete(f"/images/{gone}").status_code == 204
        hits = client.post("/search/text", json={"query": "a photo", "k": 10}).json()["results"]
        assert gone not in [h["id"] for h in hits] and len(hits) == len(photos) - 1
        back = client.post("/ingest", files=files[:1]).json()["items"][0]
        assert back["status"] == "added" and back["id"] != gone

        milvus_server.kill()
        try:
            started = time.monotonic()
            down = client.post("/search/text", json={"query": "a photo", "k": 5})
            took = time.monotonic() - started
            assert down.status_code == 503, down.text
            # Bounded by INDEX_MILVUS_TIMEOUT_S (3 s, pymilvus retries within it), not by the
            # gateway's 30 s upstream timeout (a 504).
            assert took < 15, (took, down.text)
            assert down.json()["error_type"] == "upstream_unavailable"
            assert len(down.json()["error"].split()) >= 5  # a sentence, not a code
        finally:
            milvus_server.restart()
        deadline = time.monotonic() + 90
        status = 0
        while time.monotonic() < deadline:
            try:
                status = client.post("/search/text", json={"query": "a photo", "k": 5}
                                     ).status_code
            except httpx.HTTPError:
                status = 0
            if status == 200:
                break
            time.sleep(1)
        assert status == 200, stack.logs()[-3000:]
