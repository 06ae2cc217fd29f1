"""Named spaces in a real index process killed with SIGKILL while a re-encoding writes them.

Space vectors are acknowledged after the store's commit, and the items' own writes (with their
snapshots) go on between them: after each restart every acknowledged space vector is there,
answers a search in its space, and the pending list holds exactly the items without one.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.integration.test_index_process import DIM, _env
from tests.support.procs import ServiceProcess
from tests.unit.index.helpers import b64, clustered, items_body

SPACE_DIM = 48
N = 3000
BATCH = 10


def _space_vectors(ids: list[int]) -> np.ndarray:
    # A vector per id, the same on every call, so a restart can check what was acknowledged.
    return np.stack([clustered(1, SPACE_DIM, seed=i)[0] for i in ids])


def _writer(url: str, ids: list[int], acked: set[int], stop: threading.Event,
            next_key: list[int]) -> None:
    with httpx.Client(base_url=url, timeout=10) as client:
        for start in range(0, len(ids), BATCH):
            if stop.is_set():
                return
            part = ids[start : start + BATCH]
            try:
                r = client.post("/v1/spaces/b/vectors", json={
                    "ids": part, "vectors": [b64(v) for v in _space_vectors(part)]})
                # The items' own writes in between: their seqs interleave with the space's.
                client.post("/v1/items", json=items_body(clustered(5, DIM, seed=next_key[0]),
                                                         start=next_key[0]))
            except httpx.HTTPError:
                return  # killed mid-request
            if r.status_code != 200:
                return
            acked.update(r.json()["added"] + r.json()["exists"])
            next_key[0] += 5


def _audit(url: str, ids: list[int], acked: set[int]) -> int:
    with httpx.Client(base_url=url, timeout=30) as client:
        pending: list[int] = []
        after = 0
        while page := client.get("/v1/spaces/b/pending",
                                 params={"after": after, "limit": 1000}).json()["items"]:
            pending += [i["id"] for i in page]
            after = page[-1]["id"]
        assert not acked & set(pending), "acknowledged space vectors were lost"
        listing = {s["name"]: s for s in client.get("/v1/spaces").json()["spaces"]}
        done = listing["b"]["count"]
        assert done + len(pending) == listing["default"]["count"]
        for item_id in random.Random(0).sample(sorted(acked), min(20, len(acked))):
            hit = client.post("/v1/search", json={
                "vectors": [b64(_space_vectors([item_id])[0])], "k": 1, "space": "b",
                "exact": True}).json()["results"][0][0]
            assert hit["id"] == item_id and hit["score"] > 0.999
        stats = client.get("/v1/stats").json()
        assert stats["ntotal"] == stats["count"]
        return int(done)


@pytest.mark.slow
def test_sigkill_while_a_space_is_written_loses_no_acknowledged_vector(tmp_path: Path) -> None:
    data = tmp_path / "index"
    env = _env(data, INDEX_SNAPSHOT_EVERY_WRITES="100", INDEX_TRAIN_THRESHOLD="100000")
    proc = ServiceProcess("glimpse.index.main", env, tmp_path / "index.log").start(timeout=90)
    try:
        with httpx.Client(base_url=proc.url, timeout=60) as client:
            added = client.post("/v1/items", json=items_body(clustered(N, DIM))).json()["items"]
            ids = [a["id"] for a in added]
            assert client.post("/v1/spaces", json={"name": "b", "dim": SPACE_DIM}).is_success
    finally:
        proc.kill()
    acked: set[int] = set()
    next_key = [100_000]
    rng = random.Random(3)
    cut = 0  # rounds whose kill landed while the space was still being written
    for _ in range(3):
        proc = ServiceProcess("glimpse.index.main", env, tmp_path / "index.log")
        proc.start(timeout=90)
        try:
            _audit(proc.url, ids, acked)
            stop = threading.Event()
            todo = [i for i in ids if i not in acked]
            writer = threading.Thread(target=_writer,
                                      args=(proc.url, todo, acked, stop, next_key))
            writer.start()
            time.sleep(rng.uniform(0.8, 2.0))
            cut += writer.is_alive()
            proc.kill()
            stop.set()
            writer.join(15)
        finally:
            proc.kill()
    with ServiceProcess("glimpse.index.main", env, tmp_path / "index.log") as again:
        assert _audit(again.url, ids, acked) >= len(acked) > 0
    assert cut > 0, "no kill landed during the writes; the test proved nothing"
