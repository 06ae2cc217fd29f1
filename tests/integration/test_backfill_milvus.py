"""The backfill on a real Milvus (issue 26, "Backfill"): the gateway's POST /admin/backfill
walks the Milvus-backed listing and fills old items' fields, which filtered search then sees;
and an update of every row (what a backfill does) keeps recall@10 right after it, although
Milvus's upsert moves each row out of its indexed segment into a growing one."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from glimpse.contracts.filters import SearchFilters
from glimpse.index.milvus_service import MilvusIndexService
from glimpse.index.store import NewItem
from tests.support.milvus import (
    EmbeddedMilvus,
    embedding_like,
    milvus_env,
    recall_at_10,
    wait_sealed,
)
from tests.support.stack import TINY_DIM, sample_photos, start_stack

pytestmark = pytest.mark.milvus

ROWS = 6000  # over the ~5,000 rows from which Milvus builds a growing segment's interim index


@pytest.mark.timeout(600)  # two seals, each waiting for Milvus to index a segment
def test_a_search_right_after_updating_every_row_recalls_the_exact_top_10(
        milvus_index: MilvusIndexService) -> None:
    x = embedding_like(ROWS + 100)
    base, queries = x[:ROWS], x[ROWS:]
    ids: list[int] = []
    for start in range(0, ROWS, 1000):
        out = milvus_index.add([NewItem(f"k{i}", f"p/{i}.jpg", {}, base[i])
                                for i in range(start, start + 1000)])
        ids += [o.id for o in out]
    wait_sealed(milvus_index, 300, "after the adds")
    truth = np.asarray(ids)[np.argsort(-(queries @ base.T), axis=1)[:, :10]]

    types = ["jpeg" if n % 2 else "png" for n in range(ROWS)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: milvus_index.update(ids[n], None, {"file_type": types[n]}),
                      range(ROWS)))

    at_once = milvus_index.search_records(queries, 10)
    raw = milvus_index.store.search_candidates(queries, 10,
                                               milvus_index.search_params(10, None), ())
    assert recall_at_10([[h["id"] for h in row] for row in at_once], truth) >= 0.95
    # The updated rows do sit under Milvus's interim index: its own answer falls short.
    assert recall_at_10([[i for i, _ in row] for row in raw], truth) < 0.95
    # A filter on the new meta sees it at once, with the same recall.
    in_a = np.flatnonzero(np.asarray(types) == "jpeg")
    truth_a = np.asarray(ids)[in_a][np.argsort(-(queries @ base[in_a].T), axis=1)[:, :10]]
    found = milvus_index.search_records(queries, 10, filters=SearchFilters(type=["jpeg"]))
    assert all(h["meta"] == {"file_type": "jpeg"} for row in found for h in row)
    assert recall_at_10([[h["id"] for h in row] for row in found], truth_a) >= 0.95

    wait_sealed(milvus_index, 300, "after the updates")
    sealed = milvus_index.search_records(queries, 10)
    assert recall_at_10([[h["id"] for h in row] for row in sealed], truth) >= 0.95


def test_the_gateway_backfills_a_milvus_collection(
    milvus_server: EmbeddedMilvus, collection_name: str, tmp_path: Path
) -> None:
    env = milvus_env(milvus_server, collection_name, TINY_DIM)
    photos = sample_photos(limit=5)
    with start_stack(tmp_path, **env) as stack, stack.client(timeout=60) as client, \
            httpx.Client(base_url=stack.index.url, timeout=60) as index:
        files = [("files", (f"Trips/2019/{name}", data, "image/jpeg"))
                 for name, data in photos.items()]
        items = client.post("/ingest", files=files).json()["items"]
        ids = [i["id"] for i in items]
        assert all(i["status"] == "added" for i in items) and max(ids) > 2**40  # hashes
        # Items ingested before metadata extraction: no fields (one keeps a value of its own).
        for n, item_id in enumerate(ids):
            meta = {"note": "kept"} if n == 0 else {}
            assert index.patch(f"/v1/items/{item_id}", json={"meta": meta}).status_code == 200
        query = {"query": "a photo", "k": 10, "filters": {"type": ["jpeg"]}}
        assert client.post("/search/text", json=query).json()["results"] == []

        started = client.post("/admin/backfill")
        assert started.status_code == 202, started.text
        assert started.json()["total"] == len(ids)
        deadline = time.monotonic() + 120
        while (progress := client.get("/admin/backfill").json())["status"] == "running":
            assert time.monotonic() < deadline, progress
            time.sleep(0.5)
        assert progress["status"] == "done", (progress, stack.logs()[-3000:])
        assert progress["updated"] == len(ids) and progress["failed"] == 0
        assert progress["cursor"] == max(ids)

        metas = [index.get(f"/v1/items/{i}").json()["meta"] for i in ids]
        assert all(m["folder"] == "Trips/2019" and m["file_type"] == "jpeg" for m in metas), metas
        assert metas[0]["note"] == "kept"
        hits = client.post("/search/text", json=query).json()["results"]
        assert sorted(h["id"] for h in hits) == sorted(ids)
        again = client.post("/admin/backfill")  # resumes past its cursor: nothing left
        assert again.status_code == 202
        deadline = time.monotonic() + 60
        while (progress := client.get("/admin/backfill").json())["status"] == "running":
            assert time.monotonic() < deadline, progress
            time.sleep(0.5)
        assert progress["status"] == "done" and progress["updated"] == len(ids)
