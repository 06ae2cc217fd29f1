"""The model migration (issue 22) against the real stack (index, encoder and gateway as
processes): glimpse-tiny (dim 64) to glimpse-tiny-32 (dim 32, random weights) with a search
loop running the whole time, new ingests meanwhile, the switch, rollback and confirm."""

from __future__ import annotations

import io
import random
import threading
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest
from PIL import Image

from tests.support.stack import Stack, start_stack

KEY = "migration-key"
NEW = "glimpse-tiny-32"
SPACE = "glimpse_tiny_32_none"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(tmp_path_factory.mktemp("migration"), GATEWAY_API_KEY=KEY) as s:
        yield s


def _image(seed: int) -> bytes:
    rng = random.Random(seed)
    img = Image.frombytes("RGB", (48, 32), rng.randbytes(48 * 32 * 3))
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    return buf.getvalue()


def _ingest(client: httpx.Client, seeds: range) -> list[int]:
    files = [("files", (f"m/{s}.jpg", _image(s), "image/jpeg")) for s in seeds]
    items = client.post("/ingest", files=files).json()["items"]
    assert {i["status"] for i in items} == {"added"}, items
    return [i["id"] for i in items]


def _wait_state(client: httpx.Client, wanted: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get("/admin/model").json()
        if status["state"] == wanted:
            return status
        assert status["state"] != "failed", status
        time.sleep(0.1)
    raise AssertionError(f"no {wanted!r} state in {timeout} s: {status}")


class SearchLoop(threading.Thread):
    """Text searches one after another: each answer's model, and every failure."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.models: list[str] = []
        self.failures: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.halt.is_set():
                answer = client.post("/search/text", json={"query": "a photo", "k": 5})
                if answer.status_code != 200:
                    self.failures.append(answer.text)
                else:
                    self.models.append(answer.json()["model"])


def test_a_migration_keeps_search_up_switches_rolls_back_and_confirms(stack: Stack) -> None:
    with stack.client(KEY) as client, httpx.Client(base_url=stack.index.url) as index:
        _ingest(client, range(40))
        before = client.post("/search/text", json={"query": "a photo", "k": 5}).json()
        assert before["model"] == "glimpse-tiny"
        assert client.get("/admin/model").json()["state"] == "idle"
        assert httpx.post(stack.gateway_url + "/admin/model",
                          json={"model": NEW, "pretrained": "none"}).status_code == 401

        unknown = client.post("/admin/model", json={"model": "no-such-model", "pretrained": "x"})
        assert unknown.status_code == 422 and "'no-such-model'" in unknown.json()["error"]

        loop = SearchLoop(stack.gateway_url)
        loop.start()
        time.sleep(0.5)
        started = client.post("/admin/model", json={"model": NEW, "pretrained": "none"})
        assert started.status_code == 202, started.text
        assert started.json()["state"] == "running"
        again = client.post("/admin/model", json={"model": NEW, "pretrained": "none"})
        assert again.status_code == 409 and "runs" in again.json()["error"]
        new_ids = _ingest(client, range(100, 105))  # encoded by both models

        switched = _wait_state(client, "switched")
        time.sleep(1.0)  # every worker reads the state twice a second
        loop.halt.set()
        loop.join()
        assert loop.failures == []
        assert set(loop.models) <= {"glimpse-tiny", NEW}
        # Until the switch the old model answered, after it the new one, never mixed back.
        first_new = loop.models.index(NEW)
        assert set(loop.models[:first_new]) == {"glimpse-tiny"}
        assert set(loop.models[first_new:]) == {NEW}, loop.models

        assert (switched["done"], switched["total"]) == (45, 45)
        assert switched["idle_p50_ms"] > 0 and switched["search_p50_ms"] > 0
        spaces = index.get("/v1/spaces").json()
        assert spaces["active"] == SPACE
        assert {s["name"]: (s["dim"], s["count"]) for s in spaces["spaces"]} == {
            "default": (64, 45), SPACE: (32, 45)}
        pending = index.get(f"/v1/spaces/{SPACE}/pending").json()
        assert pending["items"] == [] and set(new_ids) <= set(range(1, 46))

        after = client.post("/search/text", json={"query": "a photo", "k": 5}).json()
        assert after["model"] == NEW and after["results"]
        # More like this and image terms use the new model too.
        similar = client.get(f"/images/{new_ids[0]}/similar", params={"k": 5})
        assert similar.status_code == 200, similar.text
        assert similar.json()["model"] == NEW and similar.json()["results"]
        # ... from the image's stored vector in the new space, not its original encoded again.
        stored = index.get(f"/v1/items/{new_ids[0]}/vector", params={"encoding": "base64"})
        assert stored.json()["space"] == SPACE and stored.json()["dim"] == 32
        direct = index.post("/v1/search", json={"vectors": [stored.json()["vector"]], "k": 20,
                                                "exclude_ids": [new_ids[0]]}).json()["results"][0]
        got = [h["id"] for h in similar.json()["results"]]
        assert got == [h["id"] for h in direct][:len(got)]
        terms = client.post("/search", json={"terms": [
            {"text": "a photo", "weight": 1.0}, {"image_id": new_ids[1], "weight": 1.0}]})
        assert terms.status_code == 200, terms.text
        metrics = client.get("/metrics").text
        assert "glimpse_migration_done 45.0" in metrics
        assert 'glimpse_migration_state{state="switched"} 1.0' in metrics

        rolled = client.post("/admin/model/rollback")
        assert rolled.status_code == 200 and rolled.json()["state"] == "rolled_back"
        assert index.get("/v1/spaces").json()["active"] == "default"
        time.sleep(1.0)
        restored = client.post("/search/text", json={"query": "a photo", "k": 5}).json()
        assert restored["model"] == "glimpse-tiny"
        assert restored["results"] == before["results"]
        assert client.post("/admin/model/confirm").status_code == 409

        # Again: the space is complete already, so it switches at once; then confirm.
        assert client.post("/admin/model", json={"model": NEW, "pretrained": "none"}
                           ).status_code == 202
        _wait_state(client, "switched")
        confirmed = client.post("/admin/model/confirm")
        assert confirmed.status_code == 200 and confirmed.json()["state"] == "confirmed"
        assert client.post("/search/text", json={"query": "x"}).json()["model"] == NEW
        # An encoder restarted after confirm serves its configured model only: the gateway
        # loads the new one again, for searches and for new items' vectors.
        stack.encoder.kill()
        stack.encoder.start()
        assert client.post("/search/text", json={"query": "x"}).json()["model"] == NEW
        # After confirm an ingest is encoded by the new model alone, one encoder call, and the
        # item goes straight into the new space with no built-in vector.
        calls = _image_embeds(stack)
        late = _ingest(client, range(200, 202))
        assert _image_embeds(stack) == calls + 1
        assert index.get(f"/v1/spaces/{SPACE}/pending").json() | {"items": []} == {
            "space": SPACE, "items": [], "done": 47, "total": 47}
        counts = {s["name"]: s["count"] for s in index.get("/v1/spaces").json()["spaces"]}
        assert counts == {"default": 45, SPACE: 47}
        assert index.get("/v1/stats").json()["count"] == 47
        own = index.get(f"/v1/items/{late[0]}/vector", params={"space": "default"})
        assert own.status_code == 404 and "no vector in space 'default'" in own.json()["error"]
        stored = index.get(f"/v1/items/{late[0]}/vector", params={"encoding": "base64"}).json()
        found = index.post("/v1/search", json={"vectors": [stored["vector"]], "k": 1}).json()
        assert found["space"] == SPACE and found["results"][0][0]["id"] == late[0]
        similar = client.get(f"/images/{late[1]}/similar", params={"k": 3}).json()
        assert similar["model"] == NEW and similar["results"]
        assert client.get(f"/images/{late[0]}/meta").status_code == 200
        # A confirmed migration has nothing to roll back to: the old space is gone for good.
        assert client.post("/admin/model/rollback").status_code == 409
        # The index restarted rebuilds both spaces from its store, the late items included.
        stack.index.kill()
        stack.index.start()
        counts = {s["name"]: s["count"] for s in index.get("/v1/spaces").json()["spaces"]}
        assert counts == {"default": 45, SPACE: 47}


def _image_embeds(stack: Stack) -> int:
    """Image embed calls the encoder has answered (its request counter)."""
    metrics = httpx.get(stack.encoder.url + "/metrics").text
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in metrics.splitlines()
               if line.startswith("glimpse_http_requests_total{") and "/v1/embed/image" in line)


def test_kill_9_of_each_service_during_a_migration_loses_nothing(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with start_stack(tmp_path_factory.mktemp("resume"), GATEWAY_API_KEY=KEY) as stack, \
            stack.client(KEY) as client:
        _ingest(client, range(300, 360))
        started = client.post("/admin/model", json={"model": NEW, "pretrained": "none"})
        assert started.status_code == 202, started.text
        # The gateway first times idle searches, so it is mid-way when killed.
        stack.gateway.kill()
        stack.encoder.kill()
        saved = orjson.loads((stack.media_dir / "migration.json").read_bytes())
        assert saved["state"] == "running" and saved["progress"]["done"] < 60
        # A gateway restarted while the encoder is down resumes and waits for it.
        stack.gateway.start(wait_ready=False)
        deadline = time.monotonic() + 30
        while "encoder" not in str(client.get("/admin/model").json()["error"]):
            assert time.monotonic() < deadline, client.get("/admin/model").json()
            time.sleep(0.1)
        assert client.get("/admin/model").json()["state"] == "running"
        # The restarted encoder serves its configured model only: the gateway loads the new
        # one again. Then the index goes down and comes back too.
        stack.encoder.start()
        stack.index.kill()
        stack.index.start()
        status = _wait_state(client, "switched")
        assert (status["done"], status["total"]) == (60, 60)
        with httpx.Client(base_url=stack.index.url) as index:
            counts = {s["name"]: s["count"] for s in index.get("/v1/spaces").json()["spaces"]}
        assert counts == {"default": 60, SPACE: 60}
        assert client.post("/search/text", json={"query": "x"}).json()["model"] == NEW
