"""Issue 21 item 6: the gateway as several worker processes, and several gateways on one media
folder. Nothing that keeps the media store correct lives in a process's memory: the per-key
locks are on the file system (glimpse/gateway/media.py, KeyLocks).

Three gateway processes share one media folder and one index: gateway ``a`` runs two uvicorn
workers (``WEB_CONCURRENCY=2``, what ``GATEWAY_WORKERS=2`` gives in the container), gateway
``b`` one more. Requests go to all of them at once. The invariants:

- an acknowledged item always has its original;
- concurrent ingests of the same bytes give one item;
- a delete racing an ingest of the same bytes never leaves an item without its file;
- a deleted item's bytes are reclaimed.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.reliability._images import png_bytes
from tests.reliability._services import index_process
from tests.reliability.conftest import API_KEY
from tests.support.procs import ServiceProcess


@dataclass
class Gateways:
    urls: list[str]
    index_url: str
    media: Path

    def client(self, n: int) -> httpx.Client:
        return httpx.Client(base_url=self.urls[n % len(self.urls)], timeout=60,
                            headers={"Authorization": f"Bearer {API_KEY}"})

    def original(self, sha256: str) -> Path:
        return self.media / "originals" / sha256

    def live_ids(self, keys: list[str]) -> dict[str, int]:
        answer = httpx.post(self.index_url + "/v1/keys/ids", json={"keys": keys}, timeout=30)
        answer.raise_for_status()
        return {k: int(v) for k, v in answer.json()["ids"].items()}


@pytest.fixture(scope="module")
def gateways(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    root = tmp_path_factory.mktemp("workers")
    index = index_process(root, root / "index-data").start(90)
    env = {
        "GATEWAY_ENCODER_URL": stack.encoder.url,
        "GATEWAY_INDEX_URL": index.url,
        "GATEWAY_MEDIA_DIR": str(root / "media"),
        "GATEWAY_API_KEY": API_KEY,
        # No record kept: a gateway must see another's delete at once for these checks.
        "GATEWAY_RECORD_TTL_S": "0",
    }
    a = ServiceProcess("glimpse.gateway.main", {**env, "WEB_CONCURRENCY": "2"}, root / "a.log")
    b = ServiceProcess("glimpse.gateway.main", env, root / "b.log")
    try:
        a.start(120)
        b.start(120)
        yield Gateways([a.url, b.url], index.url, root / "media")
    finally:
        b.stop()
        a.stop()
        index.kill()


def noise(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    return png_bytes(Image.fromarray(pixels))


def post(client: httpx.Client, name: str, data: bytes) -> dict[str, Any]:
    answer = client.post("/ingest", files=[("files", (name, data, "image/png"))])
    assert answer.status_code == 200, answer.text
    item: dict[str, Any] = answer.json()["items"][0]
    return item


def test_concurrent_ingests_of_the_same_bytes_give_one_item(gateways: Gateways) -> None:
    images = [noise(1000 + i) for i in range(6)]
    senders = 8
    start = threading.Barrier(senders)

    def send(n: int) -> list[dict[str, Any]]:
        with gateways.client(n) as client:
            files = [("files", (f"same/{n}-{i}.png", d, "image/png"))
                     for i, d in enumerate(images)]
            start.wait(30)
            answer = client.post("/ingest", files=files)
            assert answer.status_code == 200, answer.text
            items: list[dict[str, Any]] = answer.json()["items"]
            return items

    with ThreadPoolExecutor(senders) as pool:
        answers = list(pool.map(send, range(senders)))
    ids: dict[str, set[int]] = {}
    for items in answers:
        for item in items:
            assert item["status"] in ("added", "exists"), item
            ids.setdefault(item["sha256"], set()).add(item["id"])
    assert all(len(found) == 1 for found in ids.values()), ids
    added = sum(item["status"] == "added" for items in answers for item in items)
    assert added == len(images)
    live = gateways.live_ids(list(ids))
    for data, (sha256, [item_id]) in zip(images, ids.items(), strict=True):
        assert live[sha256] == item_id
        with gateways.client(item_id) as client:  # an acknowledged item has its original
            assert client.get(f"/images/{item_id}").content == data


def test_a_delete_racing_an_ingest_never_leaves_an_item_without_its_file(
    gateways: Gateways,
) -> None:
    rng = random.Random(21)
    outcomes = {"item and file": 0, "neither": 0}
    for round_ in range(30):
        data = noise(2000 + round_)
        with gateways.client(round_) as first:
            item = post(first, f"race/{round_}.png", data)
        assert item["status"] == "added"
        sha256 = item["sha256"]

        def delete(n: int = round_ + 1, item_id: int = item["id"]) -> None:
            threading.Event().wait(rng.random() * 0.02)
            with gateways.client(n) as client:
                answer = client.delete(f"/images/{item_id}")
                assert answer.status_code in (204, 404), answer.text

        def ingest_again(n: int = round_, name: str = f"race/{round_}-again.png",
                         data: bytes = data) -> None:
            threading.Event().wait(rng.random() * 0.02)
            with gateways.client(n) as client:
                assert post(client, name, data)["status"] in ("added", "exists")

        with ThreadPoolExecutor(2) as pool:
            for done in [pool.submit(delete), pool.submit(ingest_again)]:
                done.result()
        live = gateways.live_ids([sha256])
        if sha256 in live:
            assert gateways.original(sha256).read_bytes() == data, round_
            with gateways.client(round_) as client:
                assert client.get(f"/images/{live[sha256]}").content == data
            outcomes["item and file"] += 1
        else:
            assert not gateways.original(sha256).exists(), round_  # reclaimed
            outcomes["neither"] += 1
    assert sum(outcomes.values()) == 30, outcomes


def test_a_deleted_items_bytes_are_reclaimed(gateways: Gateways) -> None:
    data = noise(3000)
    with gateways.client(0) as a, gateways.client(1) as b:
        item = post(a, "gone/x.png", data)
        sha256 = item["sha256"]
        assert b.get(f"/images/{item['id']}/thumbnail").status_code == 200  # made and kept
        thumbnail = gateways.media / "thumbnails" / sha256[:2] / sha256[2:4] / f"{sha256}.webp"
        assert gateways.original(sha256).is_file() and thumbnail.is_file()
        assert b.delete(f"/images/{item['id']}").status_code == 204
        assert not gateways.original(sha256).exists() and not thumbnail.exists()
        assert a.get(f"/images/{item['id']}").status_code == 404
        # The same bytes again: a new item, with its file.
        again = post(a, "gone/x.png", data)
        assert again["status"] == "added" and again["id"] != item["id"]
        assert b.get(f"/images/{again['id']}").content == data
