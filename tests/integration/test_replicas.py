"""Replicas behind one gateway, as real processes: two encoders (tiny model) and two index
services, with ``GATEWAY_ENCODER_URL`` and ``GATEWAY_INDEX_URL`` each naming both.

Encoders: both get calls; one killed -> searches keep answering 200 and it is skipped; it comes
back on its port -> it gets calls again; a frozen one (SIGSTOP) is abandoned for the other
within the patience bound; all killed -> 503 ``upstream_unavailable`` within 2 s.

Index: two Faiss index services do not share data, so spreading reads and writes over them
would answer from two different collections; that is what the Milvus backend is for
(test_replicas_milvus.py runs two index replicas on one Milvus behind the gateway). Here the
indexes stay empty and only the failover mechanics are checked, on calls that read: a search
(which also finds nothing in the other) and /ingest/check.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest

from tests.support.procs import ServiceProcess
from tests.support.stack import stack_env

pytestmark = pytest.mark.slow


@dataclass
class Replicas:
    encoders: list[ServiceProcess]
    indexes: list[ServiceProcess]
    gateway: ServiceProcess

    def all(self) -> list[ServiceProcess]:
        return [self.gateway, *self.encoders, *self.indexes]


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    root = tmp_path_factory.mktemp("replicas")
    (root / "logs").mkdir()
    env = stack_env(root)
    encoders = [
        ServiceProcess("glimpse.encoder.main", env, root / "logs" / f"encoder{i}.log")
        for i in (1, 2)
    ]
    indexes = [
        ServiceProcess(
            "glimpse.index.main", {**env, "INDEX_DATA_DIR": str(root / f"index{i}")},
            root / "logs" / f"index{i}.log",
        )
        for i in (1, 2)
    ]
    gateway = ServiceProcess(
        "glimpse.gateway.main",
        {
            **env,
            "GATEWAY_ENCODER_URL": ",".join(e.url for e in encoders),
            "GATEWAY_INDEX_URL": ",".join(i.url for i in indexes),
        },
        root / "logs" / "gateway.log",
    )
    stack = Replicas(encoders, indexes, gateway)
    try:
        with ThreadPoolExecutor(4) as pool:
            for future in [pool.submit(s.start, 180) for s in (*encoders, *indexes)]:
                future.result()
        gateway.start(60)
        yield stack
    finally:
        for service in stack.all():
            service.stop()


def embed_calls(service: ServiceProcess) -> int:
    """Text embeddings the encoder answered, from its own /metrics."""
    text = httpx.get(service.url + "/metrics", timeout=10).text
    pattern = (
        r'^glimpse_http_requests_total\{[^}]*route="/v1/embed/text"[^}]*status="200"[^}]*\} '
        r"(\S+)"
    )
    return int(sum(float(m) for m in re.findall(pattern, text, re.MULTILINE)))


def search(client: httpx.Client, i: int) -> httpx.Response:
    return client.post("/search/text", json={"query": f"replica query {i}", "k": 5})


def wait_until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s: {what}")


def test_replicas_share_fail_over_and_return(replicas: Replicas) -> None:
    e1, e2 = replicas.encoders
    with httpx.Client(base_url=replicas.gateway.url, timeout=30) as client:
        ready = client.get("/readyz").json()
        assert ready["ready"] and ready["checks"]["encoder"] == "ok: 2 of 2 replicas ready"
        before = [embed_calls(e) for e in (e1, e2)]
        answers = [search(client, i).status_code for i in range(20)]
        after = [embed_calls(e) for e in (e1, e2)]
        assert answers == [200] * 20
        shares = [a - b for a, b in zip(after, before, strict=True)]
        assert sum(shares) == 20 and min(shares) >= 5, shares  # both encoders took calls

        # One encoder gone (SIGKILL: refused connections): every search still answers 200.
        e1.kill()
        started = time.monotonic()
        statuses = [search(client, 100 + i).status_code for i in range(30)]
        slowest = time.monotonic() - started
        assert statuses == [200] * 30, statuses
        assert slowest < 10, slowest
        stats = client.get("/stats").json()["upstreams"]["encoder"]
        assert (stats["replicas"], stats["up"]) == (2, 1)
        (dead,) = [m for m in stats["members"] if not m["up"]]
        assert dead["url"] == e1.url and dead["reason"].startswith("unreachable")
        assert dead["failures"] >= 1 and dead["down_for_s"] >= 0
        ready = client.get("/readyz").json()
        assert ready["ready"] and ready["checks"]["encoder"].startswith("ok: 1 of 2 replicas")
        metrics = client.get("/metrics").text
        assert f'glimpse_upstream_replica_up{{replica="{e1.url}",upstream="encoder"}} 0.0' in (
            metrics
        )

        # It comes back on the same port: the gateway takes it back by itself.
        e1.start(180)
        wait_until(
            lambda: client.get("/stats").json()["upstreams"]["encoder"]["up"] == 2, 10,
            "the restarted encoder marked up",
        )
        back = embed_calls(e1)
        assert [search(client, 200 + i).status_code for i in range(10)] == [200] * 10
        assert embed_calls(e1) - back >= 3


def test_a_frozen_encoder_is_abandoned_for_the_other(replicas: Replicas) -> None:
    e1, _ = replicas.encoders
    assert e1.proc is not None
    with httpx.Client(base_url=replicas.gateway.url, timeout=30) as client:
        wait_until(
            lambda: client.get("/stats").json()["upstreams"]["encoder"]["up"] == 2, 10,
            "both encoders up",
        )
        os.kill(e1.proc.pid, signal.SIGSTOP)
        try:
            timings = []
            for i in range(10):
                started = time.monotonic()
                assert search(client, 300 + i).status_code == 200
                timings.append(time.monotonic() - started)
        finally:
            os.kill(e1.proc.pid, signal.SIGCONT)
        # The call that met the frozen one waited for the patience probe (0.5 + 1 s), then
        # went to the other (room left for a loaded test machine); the rest went to the other
        # at once.
        assert max(timings) < 2.5, timings
        assert sorted(timings)[-2] < 0.5, timings
        wait_until(
            lambda: client.get("/stats").json()["upstreams"]["encoder"]["up"] == 2, 10,
            "the thawed encoder marked up",
        )


def test_an_index_replica_down_is_skipped_on_reads(replicas: Replicas) -> None:
    i1, _ = replicas.indexes
    digests = ["ab" * 32, "cd" * 32]
    with httpx.Client(base_url=replicas.gateway.url, timeout=30) as client:
        i1.kill()
        try:
            for i in range(10):
                r = search(client, 400 + i)
                assert (r.status_code, r.json()["results"]) == (200, [])
                r = client.post("/ingest/check", json={"sha256": digests})
                assert r.json() == {"missing": digests}
            stats = client.get("/stats")
            assert stats.status_code == 200
            assert stats.json()["upstreams"]["index"]["up"] == 1
        finally:
            i1.start(90)


def test_all_encoders_down_is_503_within_2_s(replicas: Replicas) -> None:
    with httpx.Client(base_url=replicas.gateway.url, timeout=30) as client:
        for encoder in replicas.encoders:
            encoder.kill()
        timings, kinds = [], set()
        for i in range(10):
            started = time.monotonic()
            r = search(client, 500 + i)
            timings.append(time.monotonic() - started)
            kinds.add((r.status_code, r.json().get("error_type")))
        assert kinds == {(503, "upstream_unavailable")}, kinds
        assert max(timings) < 2.0, timings
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["encoder"].startswith("0 of 2 replicas ready")
