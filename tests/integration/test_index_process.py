"""The index service as a real process: SIGKILL during adds, and restarts.

A kill may land anywhere: inside a SQLite commit, a snapshot, a background training. After each
restart every acknowledged item must be there (with its id), an in-flight batch must be whole
or absent, and Faiss must hold exactly the live rows (no phantom, no duplicate).
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.support.procs import ServiceProcess
from tests.unit.index.helpers import b64, clustered, items_body

DIM = 32


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        "INDEX_DATA_DIR": str(data_dir),
        "INDEX_DIM": str(DIM),
        "INDEX_SNAPSHOT_EVERY_WRITES": "300",
        "INDEX_SNAPSHOT_INTERVAL_S": "0",
        "INDEX_TRAIN_THRESHOLD": "1200",
        "OMP_NUM_THREADS": "1",
    }
    env.update(extra)
    return env


def _writer(url: str, start: int, acked: dict[str, int], inflight: list[list[str]],
            stop: threading.Event) -> None:
    batch = 25
    n = start
    with httpx.Client(base_url=url, timeout=10) as client:
        while not stop.is_set():
            body = items_body(clustered(batch, DIM, seed=n), start=n)
            keys = [item["key"] for item in body["items"]]
            inflight.append(keys)
            try:
                r = client.post("/v1/items", json=body)
            except httpx.HTTPError:
                return  # killed mid-request: this batch is in flight, not acknowledged
            if r.status_code != 200:
                return
            for item in r.json()["items"]:
                acked[item["key"]] = item["id"]
            inflight.pop()
            n += batch


def _audit(url: str, acked: dict[str, int], inflight: list[list[str]]) -> dict[str, Any]:
    with httpx.Client(base_url=url, timeout=30) as client:
        missing = client.post("/v1/keys/missing", json={"keys": list(acked)}).json()["missing"]
        assert missing == [], f"acknowledged but missing: {missing[:5]}"
        for key in random.Random(0).sample(sorted(acked), min(40, len(acked))):
            record = client.get(f"/v1/items/{acked[key]}")
            assert record.status_code == 200 and record.json()["key"] == key
        for keys in inflight:
            gone = client.post("/v1/keys/missing", json={"keys": keys}).json()["missing"]
            assert len(gone) in (0, len(keys)), "a batch was half stored"
        stats = client.get("/v1/stats").json()
        assert stats["ntotal"] == stats["count"], "Faiss and the store disagree"
        # Every hit of an exact search over everything is a stored, live item.
        q = [b64(v) for v in clustered(3, DIM, seed=99)]
        hits = client.post("/v1/search", json={"vectors": q, "k": 1000, "exact": True}).json()
        for row in hits["results"]:
            ids = [h["id"] for h in row]
            assert len(set(ids)) == len(ids) == min(1000, stats["count"])
        for item_id in random.Random(1).sample(ids, min(20, len(ids))):
            assert client.get(f"/v1/items/{item_id}").status_code == 200
        return dict(stats)


@pytest.mark.slow
def test_sigkill_during_adds_loses_no_acknowledged_item(tmp_path: Path) -> None:
    data = tmp_path / "index"
    acked: dict[str, int] = {}
    inflight: list[list[str]] = []
    next_key = 0
    rng = random.Random(7)
    for round_ in range(3):
        proc = ServiceProcess("glimpse.index.main", _env(data), tmp_path / "index.log")
        proc.start(timeout=90)
        try:
            if round_:
                _audit(proc.url, acked, inflight)
            inflight = []
            stop = threading.Event()
            writer = threading.Thread(
                target=_writer, args=(proc.url, next_key, acked, inflight, stop)
            )
            writer.start()
            time.sleep(rng.uniform(0.8, 2.0))
            proc.kill()
            stop.set()
            writer.join(15)
            next_key += 100_000
        finally:
            proc.kill()
    proc = ServiceProcess("glimpse.index.main", _env(data), tmp_path / "index.log")
    with proc:
        stats = _audit(proc.url, acked, inflight)
        assert stats["count"] >= len(acked) > 0


@pytest.mark.slow
def test_a_restart_after_sigkill_gives_identical_results(tmp_path: Path) -> None:
    data = tmp_path / "index"
    env = _env(data, INDEX_TRAIN_THRESHOLD="100000", INDEX_SNAPSHOT_EVERY_WRITES="0")
    x = clustered(2500, DIM, clusters=40)
    q = {"vectors": [b64(v) for v in clustered(30, DIM, clusters=40, seed=5)], "k": 10}
    proc = ServiceProcess("glimpse.index.main", env, tmp_path / "index.log").start(timeout=90)
    try:
        with httpx.Client(base_url=proc.url, timeout=120) as client:
            client.post("/v1/items", json=items_body(x[:2000]))
            r = client.post("/v1/index/rebuild", json={"factory": "IVF32,PQ16x4", "wait": True})
            assert r.status_code == 200, r.text
            client.post("/v1/items", json=items_body(x[2000:], start=2000))  # after the snapshot
            client.delete("/v1/items/7")
            before = client.post("/v1/search", json=q).json()
            before_exact = client.post("/v1/search", json={**q, "exact": True}).json()
            stats = client.get("/v1/stats").json()
    finally:
        proc.kill()
    with ServiceProcess("glimpse.index.main", env, tmp_path / "index.log") as again:
        with httpx.Client(base_url=again.url, timeout=60) as client:
            after_stats = client.get("/v1/stats").json()
            assert after_stats["kind"] == "ivfpq" and after_stats["load"]["replayed"] == 501
            assert after_stats["count"] == stats["count"] == 2499
            assert client.post("/v1/search", json=q).json() == before
            assert client.post("/v1/search", json={**q, "exact": True}).json() == before_exact
    assert np.isfinite([h["score"] for row in before["results"] for h in row]).all()
