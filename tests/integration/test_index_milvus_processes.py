"""INDEX_BACKEND=milvus as real processes on a real Milvus: replicas, kills, Milvus restarts.

Several index service replicas share one collection and keep nothing of their own, so: they
answer the same; a write acknowledged by one is seen at once by the other; SIGKILL of a replica
loses nothing it acknowledged; Milvus killed and restarted under load turns writes into clear
503s meanwhile and loses nothing acknowledged. And the faults at start: Milvus unreachable (the
service starts, unready, and says why), a collection that disagrees with the settings (the
start fails with a sentence naming both).
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymilvus import Collection, CollectionSchema, DataType, FieldSchema, connections

from tests.support.milvus import EmbeddedMilvus, milvus_env
from tests.support.procs import ServiceProcess, free_port
from tests.unit.index.helpers import b64, clustered, items_body

pytestmark = pytest.mark.milvus

DIM = 32


def _replica(env: dict[str, str], log: Path) -> ServiceProcess:
    return ServiceProcess("glimpse.index.main", env, log)


def _search(client: httpx.Client, vectors: Any, k: int, **extra: Any) -> list[list[dict[str, Any]]]:
    r = client.post("/v1/search", json={"vectors": [b64(v) for v in vectors], "k": k, **extra})
    assert r.status_code == 200, r.text
    return list(r.json()["results"])


def test_two_replicas_on_one_collection_answer_the_same(
    milvus_server: EmbeddedMilvus, collection_name: str, tmp_path: Path
) -> None:
    env = milvus_env(milvus_server, collection_name, DIM)
    with _replica(env, tmp_path / "a.log") as a, _replica(env, tmp_path / "b.log") as b, \
            httpx.Client(base_url=a.url, timeout=30) as ca, \
            httpx.Client(base_url=b.url, timeout=30) as cb:
        x = clustered(1000, DIM, clusters=20)
        # The same keys through both replicas at once: one id per key, whoever wins.
        body = items_body(x[:400])
        with ThreadPoolExecutor(2) as pool:
            ra, rb = pool.map(lambda c: c.post("/v1/items", json=body), (ca, cb))
        assert ra.status_code == rb.status_code == 200, (ra.text, rb.text)
        ids = [i["id"] for i in ra.json()["items"]]
        assert ids == [i["id"] for i in rb.json()["items"]]
        assert len(set(ids)) == 400 and all(0 < i < 2**53 for i in ids)
        # Written through A, found through B right after A's answer.
        for start in range(400, 1000, 100):
            r = ca.post("/v1/items", json=items_body(x[start : start + 100], start=start))
            assert r.status_code == 200, r.text
            first = r.json()["items"][0]["id"]
            assert _search(cb, x[start : start + 1], 1)[0][0]["id"] == first
            ids += [i["id"] for i in r.json()["items"]]
        # Deleted through B, gone from A right after B's answer, and not re-addable by id.
        assert cb.delete(f"/v1/items/{ids[5]}").status_code == 204
        assert ids[5] not in [h["id"] for h in _search(ca, x[5:6], 20)[0]]
        gone = ca.get(f"/v1/items/{ids[5]}")
        assert gone.status_code == 404 and "deleted" in gone.json()["error"]
        assert ca.post("/v1/keys/missing", json={"keys": ["key-5", "key-6"]}).json() == {
            "missing": ["key-5"]}
        assert ca.post("/v1/keys/ids", json={"keys": ["key-5", "key-6"]}).json() == {
            "ids": {"key-6": ids[6]}}
        q = clustered(25, DIM, clusters=20, seed=3)
        for extra in ({}, {"exact": True}, {"exclude_ids": ids[:3]}):
            assert _search(ca, q, 10, **extra) == _search(cb, q, 10, **extra)
        stats = [c.get("/v1/stats").json() for c in (ca, cb)]
        assert stats[0]["count"] == stats[1]["count"] == 999
        assert stats[0]["deleted"] == stats[1]["deleted"] == 1


def _writer(url: str, start: int, acked: dict[str, int], inflight: list[list[str]],
            codes: list[tuple[float, int, str]], stop: threading.Event,
            until_killed: bool = True) -> None:
    """Adds batches of 20 until stopped; records what was acknowledged and every answer."""
    n = start
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            body = items_body(clustered(20, DIM, seed=n), start=n)
            keys = [item["key"] for item in body["items"]]
            inflight.append(keys)
            try:
                r = client.post("/v1/items", json=body)
            except httpx.HTTPError:
                if until_killed:
                    return  # the replica died mid-request: this batch was not acknowledged
                time.sleep(0.1)
                continue
            codes.append((time.monotonic(), r.status_code, r.text))
            if r.status_code != 200:
                time.sleep(0.1)
                continue  # not acknowledged; the next batch gets new keys
            for item in r.json()["items"]:
                acked[item["key"]] = item["id"]
            inflight.remove(keys)
            n += 20


def _audit(url: str, acked: dict[str, int]) -> dict[str, Any]:
    """Every acknowledged key is there with its id; every hit is a stored, live item."""
    with httpx.Client(base_url=url, timeout=60) as client:
        keys = list(acked)
        for part in range(0, len(keys), 5000):
            r = client.post("/v1/keys/missing", json={"keys": keys[part : part + 5000]})
            assert r.json()["missing"] == [], "acknowledged but missing"
        for key in random.Random(0).sample(keys, min(40, len(keys))):
            record = client.get(f"/v1/items/{acked[key]}")
            assert record.status_code == 200 and record.json()["key"] == key
        stats: dict[str, Any] = client.get("/v1/stats").json()
        hits = _search(client, clustered(3, DIM, seed=99), 1000, exact=True)
        for row in hits:
            ids = [h["id"] for h in row]
            assert len(set(ids)) == len(ids) == min(1000, stats["count"])
            by_key = {h["path"] for h in row}
            assert len(by_key) == len(row), "two ids for one item"
        return stats


def test_sigkill_of_a_replica_during_adds_loses_nothing_acknowledged(
    milvus_server: EmbeddedMilvus, collection_name: str, tmp_path: Path
) -> None:
    env = milvus_env(milvus_server, collection_name, DIM)
    acked: dict[str, int] = {}
    codes: list[tuple[float, int, str]] = []
    rng = random.Random(11)
    sent: set[str] = set()  # keys of batches in flight when a replica was killed
    with _replica(env, tmp_path / "survivor.log") as survivor:
        for round_ in range(3):
            victim = _replica(env, tmp_path / "victim.log").start(timeout=90)
            inflight: list[list[str]] = []
            stop = threading.Event()
            writer = threading.Thread(target=_writer, args=(
                victim.url, round_ * 100_000, acked, inflight, codes, stop))
            writer.start()
            time.sleep(rng.uniform(1.0, 2.0))
            victim.kill()
            stop.set()
            writer.join(30)
            assert not writer.is_alive()
            # An in-flight batch may be kept or not, in part even; whatever is stored is one
            # row per key, and every row is an acknowledged or an in-flight item (no phantom).
            sent.update(k for batch in inflight for k in batch)
            _audit(survivor.url, acked)
            with httpx.Client(base_url=survivor.url, timeout=60) as client:
                hits = _search(client, clustered(1, DIM, seed=7), 1000, exact=True)[0]
            stored = [h["path"].removeprefix("img/").removesuffix(".jpg") for h in hits]
            assert len(hits) < 1000, "the check below needs every row in one exact search"
            assert len(set(stored)) == len(stored), "a key stored twice"
            phantoms = {f"key-{n}" for n in stored} - set(acked) - sent
            assert not phantoms, sorted(phantoms)[:5]
            assert set(acked) <= {f"key-{n}" for n in stored}
        assert len(acked) >= 3 * 20 and all(code == 200 for _, code, _ in codes)


def test_milvus_killed_and_restarted_under_load(
    milvus_server: EmbeddedMilvus, collection_name: str, tmp_path: Path
) -> None:
    env = milvus_env(milvus_server, collection_name, DIM, INDEX_MILVUS_TIMEOUT_S="3")
    acked: dict[str, int] = {}
    inflight: list[list[str]] = []
    codes: list[tuple[float, int, str]] = []
    with _replica(env, tmp_path / "index.log") as replica:
        stop = threading.Event()
        writer = threading.Thread(target=_writer, args=(
            replica.url, 0, acked, inflight, codes, stop, False))
        writer.start()
        try:
            time.sleep(2.0)
            before = len(acked)
            assert before > 0
            killed_at = time.monotonic()
            milvus_server.kill()
            time.sleep(4.0)
            milvus_server.restart()
            back_at = time.monotonic()
            deadline = back_at + 90
            while time.monotonic() < deadline and not any(
                    t > back_at and code == 200 for t, code, _ in codes):
                time.sleep(0.5)
            time.sleep(1.0)
        finally:
            stop.set()
            writer.join(60)
        failures = [(t, code, text) for t, code, text in codes if code != 200]
        assert failures, "no write failed while Milvus was down"
        for t, code, text in failures:
            assert killed_at <= t, text
            assert code == 503 and '"upstream_unavailable"' in text and "Milvus at" in text, text
        assert any(t > back_at and code == 200 for t, code, _ in codes), "writes never resumed"
        assert len(acked) > before
        _audit(replica.url, acked)


def test_an_unreachable_milvus_leaves_the_service_up_unready_and_saying_why(
    tmp_path: Path,
) -> None:
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {"INDEX_BACKEND": "milvus", "INDEX_MILVUS_URI": uri, "INDEX_DIM": str(DIM),
           "INDEX_MILVUS_TIMEOUT_S": "1"}
    proc = _replica(env, tmp_path / "index.log").start(timeout=60, wait_ready=False)
    try:
        ready = httpx.get(proc.url + "/readyz", timeout=5)
        assert ready.status_code == 503
        assert f"Milvus at {uri} is unreachable" in ready.json()["checks"]["index"]
        r = httpx.post(proc.url + "/v1/search", json={"vectors": [[1.0] * DIM], "k": 1},
                       timeout=5)
        assert r.status_code == 503 and r.json()["error_type"] == "upstream_unavailable"
        assert f"Milvus at {uri} is unreachable" in r.json()["error"]
        assert r.headers["retry-after"] == "1"
        assert httpx.get(proc.url + "/healthz", timeout=5).status_code == 200
    finally:
        proc.kill()


def test_a_collection_that_disagrees_with_the_settings_stops_the_start(
    milvus_server: EmbeddedMilvus, collection_name: str, tmp_path: Path
) -> None:
    env = milvus_env(milvus_server, collection_name, DIM)
    with _replica(env, tmp_path / "first.log"):
        pass  # creates the collection with 32-d vectors
    wrong = _replica({**env, "INDEX_DIM": "16"}, tmp_path / "dim.log")
    with pytest.raises(RuntimeError) as exc:
        wrong.start(timeout=60)
    assert "holds 32-dimensional vectors but INDEX_DIM is 16" in str(exc.value)

    # A collection indexed for L2 (not made by Glimpse, same fields): the metric is refused.
    l2 = f"{collection_name}_l2"
    connections.connect(alias="l2", uri=milvus_server.uri)
    try:
        schema = CollectionSchema([
            FieldSchema("id", DataType.INT64, is_primary=True),
            FieldSchema("key", DataType.VARCHAR, max_length=512),
            FieldSchema("path", DataType.VARCHAR, max_length=512),
            FieldSchema("meta", DataType.JSON),
            FieldSchema("created_at", DataType.DOUBLE),
            FieldSchema("vector", DataType.FLOAT_VECTOR, dim=DIM),
        ])
        collection = Collection(l2, schema, using="l2")
        collection.create_index("vector", {"index_type": "IVF_FLAT", "metric_type": "L2",
                                           "params": {"nlist": 8}})
        metric = _replica({**env, "INDEX_MILVUS_COLLECTION": l2}, tmp_path / "metric.log")
        with pytest.raises(RuntimeError) as exc:
            metric.start(timeout=60)
        assert "indexed with metric L2, but Glimpse scores by inner product" in str(exc.value)
    finally:
        milvus_server.drop(l2)
        connections.disconnect("l2")
