"""Two index service replicas on one Milvus collection behind one gateway, as processes.

``GATEWAY_INDEX_URL`` names both. Ingests and searches through the gateway spread over them;
one killed -> searches keep answering 200 with the same hits and ingests keep being
acknowledged (by the other); it comes back -> it gets calls again and sees what was added
meanwhile. The index service's own replica tests (no gateway) are
test_index_milvus_processes.py; the encoder replicas are test_replicas.py.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.milvus import EmbeddedMilvus, milvus_env
from tests.support.procs import ServiceProcess
from tests.support.stack import TINY_DIM, sample_photos, stack_env

pytestmark = [pytest.mark.milvus, pytest.mark.slow]


@dataclass
class Stack:
    encoder: ServiceProcess
    indexes: list[ServiceProcess]
    gateway: ServiceProcess


@pytest.fixture
def stack(milvus_server: EmbeddedMilvus, collection_name: str, tmp_path: Path) -> Iterator[Stack]:
    env = {
        **stack_env(tmp_path),
        **milvus_env(milvus_server, collection_name, TINY_DIM),
        "GATEWAY_FSYNC": "false",
    }
    encoder = ServiceProcess("glimpse.encoder.main", env, tmp_path / "encoder.log")
    indexes = [
        ServiceProcess("glimpse.index.main", env, tmp_path / f"index{i}.log") for i in (1, 2)
    ]
    gateway = ServiceProcess(
        "glimpse.gateway.main",
        {
            **env,
            "GATEWAY_ENCODER_URL": encoder.url,
            "GATEWAY_INDEX_URL": ",".join(i.url for i in indexes),
        },
        tmp_path / "gateway.log",
    )
    try:
        with ThreadPoolExecutor(3) as pool:
            for future in [pool.submit(s.start, 180) for s in (encoder, *indexes)]:
                future.result()
        gateway.start(60)
        yield Stack(encoder, indexes, gateway)
    finally:
        for service in (gateway, encoder, *indexes):
            service.stop()


def calls(service: ServiceProcess, route: str) -> int:
    """Answered requests to ``route``, from the index service's own /metrics."""
    text = httpx.get(service.url + "/metrics", timeout=10).text
    pattern = (
        rf'^glimpse_http_requests_total\{{[^}}]*route="{re.escape(route)}"[^}}]*status="200"'
        r"[^}]*\} (\S+)"
    )
    return int(sum(float(m) for m in re.findall(pattern, text, re.MULTILINE)))


def ingest(client: httpx.Client, photos: dict[str, bytes]) -> list[str]:
    files = [("files", (name, data, "image/jpeg")) for name, data in photos.items()]
    r = client.post("/ingest", files=files)
    assert r.status_code == 200, r.text
    return [item["status"] for item in r.json()["items"]]


def hits(client: httpx.Client, query: str) -> list[int]:
    # Vector search alone: a fused text search sends its keyword search to the other replica
    # at the same moment, so the searches alone would all go to one.
    r = client.post("/search/text", json={"query": query, "k": 20, "keywords": False})
    assert r.status_code == 200, r.text
    return [hit["id"] for hit in r.json()["results"]]


def up_count(client: httpx.Client) -> int:
    return int(client.get("/stats").json()["upstreams"]["index"]["up"])


def test_index_replicas_on_milvus_share_and_fail_over(stack: Stack) -> None:
    i1, i2 = stack.indexes
    photos = sample_photos(12)
    assert len(photos) == 12
    first, second = dict(list(photos.items())[:6]), dict(list(photos.items())[6:])
    with httpx.Client(base_url=stack.gateway.url, timeout=60) as client:
        assert ingest(client, first) == ["added"] * len(first)
        queries = [f"a photo {i}" for i in range(20)]
        before = [calls(i, "/v1/search") for i in (i1, i2)]
        ranked = [hits(client, q) for q in queries]
        shares = [calls(i, "/v1/search") - b for i, b in zip((i1, i2), before, strict=True)]
        assert min(shares) >= 5 and sum(shares) == 20, shares  # both replicas answered
        # Both answer from the one collection: a query asked again gives the same hits
        # whichever replica takes it.
        assert [hits(client, q) for q in queries] == ranked
        assert all(len(r) == len(first) for r in ranked)

        # One replica killed: the same hits from the other, and ingests still acknowledged.
        i1.kill()
        assert [hits(client, q) for q in queries] == ranked
        assert ingest(client, second) == ["added"] * len(second)
        assert up_count(client) == 1
        assert client.get("/readyz").json()["checks"]["index"].startswith("ok: 1 of 2")

        # Back: taken back by itself, gets searches again, and sees what was added meanwhile.
        i1.start(120)
        deadline = time.monotonic() + 10
        while up_count(client) != 2:
            assert time.monotonic() < deadline, "the restarted index was not taken back"
            time.sleep(0.1)
        back = calls(i1, "/v1/search")
        after = [hits(client, q) for q in queries[:10]]
        assert calls(i1, "/v1/search") - back >= 3
        assert all(len(r) == len(photos) for r in after)
        assert client.get("/stats").json()["images"] == len(photos)
