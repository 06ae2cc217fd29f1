"""Searches, adds and deletes at once against a real index process, through a training swap."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.procs import ServiceProcess
from tests.unit.index.helpers import b64, clustered, items_body

DIM = 32
SECONDS = 8.0


@pytest.mark.slow
def test_concurrent_search_add_delete_has_no_error_and_no_deleted_hit(tmp_path: Path) -> None:
    env = {
        "INDEX_DATA_DIR": str(tmp_path / "index"),
        "INDEX_DIM": str(DIM),
        "INDEX_TRAIN_THRESHOLD": "1500",  # crossed during the run: a swap under load
        "INDEX_SNAPSHOT_EVERY_WRITES": "500",
    }
    errors: list[str] = []
    deleted: dict[int, float] = {}  # id -> time its delete was acknowledged
    violations: list[str] = []
    added: list[int] = []
    searches = 0
    stop = threading.Event()

    with ServiceProcess("glimpse.index.main", env, tmp_path / "index.log") as proc:
        with httpx.Client(base_url=proc.url, timeout=30) as client:
            first = client.post("/v1/items", json=items_body(clustered(1400, DIM)))
            added.extend(i["id"] for i in first.json()["items"])

        def adder() -> None:
            n = 10_000
            with httpx.Client(base_url=proc.url, timeout=30) as client:
                while not stop.is_set():
                    r = client.post("/v1/items", json=items_body(clustered(20, DIM, seed=n),
                                                                 start=n))
                    if r.status_code != 200:
                        errors.append(f"add {r.status_code} {r.text[:200]}")
                        continue
                    added.extend(i["id"] for i in r.json()["items"])
                    n += 20

        def deleter() -> None:
            with httpx.Client(base_url=proc.url, timeout=30) as client:
                while not stop.is_set():
                    victim = added[len(deleted) * 7 % len(added)]
                    if victim in deleted:
                        time.sleep(0.001)
                        continue
                    r = client.delete(f"/v1/items/{victim}")
                    if r.status_code != 204:
                        errors.append(f"delete {victim}: {r.status_code} {r.text[:200]}")
                    deleted[victim] = time.monotonic()
                    time.sleep(0.01)

        def searcher(seed: int) -> None:
            nonlocal searches
            queries = clustered(50, DIM, seed=seed)
            with httpx.Client(base_url=proc.url, timeout=30) as client:
                i = 0
                while not stop.is_set():
                    started = time.monotonic()
                    body = {"vectors": [b64(queries[i % 50])], "k": 20, "exact": i % 5 == 0}
                    r = client.post("/v1/search", json=body)
                    i += 1
                    if r.status_code != 200:
                        errors.append(f"search {r.status_code} {r.text[:200]}")
                        continue
                    searches += 1
                    for hit in r.json()["results"][0]:
                        acked_at = deleted.get(hit["id"])
                        if acked_at is not None and acked_at < started:
                            violations.append(f"deleted id {hit['id']} returned")

        threads = [threading.Thread(target=adder), threading.Thread(target=deleter)] + [
            threading.Thread(target=searcher, args=(s,)) for s in range(3)
        ]
        for t in threads:
            t.start()
        time.sleep(SECONDS)
        stop.set()
        for t in threads:
            t.join(60)
        with httpx.Client(base_url=proc.url, timeout=60) as client:
            stats = client.get("/v1/stats").json()
            for _ in range(600):
                if not stats["training"]:
                    break
                time.sleep(0.1)
                stats = client.get("/v1/stats").json()

    assert errors == []
    assert violations == []
    assert searches > 50 and len(deleted) > 10
    assert stats["count"] == len(set(added)) - len(deleted)
    assert stats["ntotal"] == stats["count"]
    # The training swap happened under load (the structure is the training's choice).
    assert stats["kind"] in ("ivfpq", "ivfpq-fastscan", "hnsw"), stats
