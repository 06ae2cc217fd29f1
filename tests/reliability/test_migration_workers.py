"""Issue 22: a model migration through a gateway of two worker processes (``WEB_CONCURRENCY=2``,
what ``GATEWAY_WORKERS=2`` gives in the container). The migration runs once: one worker holds
the runner lock and re-encodes, the other waits on it; there is one state file, each item is
embedded once by the new model and written once into its space, and both workers answer from
the new model after the switch."""

from __future__ import annotations

import io
import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.support.procs import ServiceProcess
from tests.support.stack import stack_env

KEY = "workers-key"
NEW = "glimpse-tiny-32"
N = 40  # two batches of the runner (migration.BATCH is 32)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[dict[str, ServiceProcess]]:
    env = stack_env(tmp_path, GATEWAY_API_KEY=KEY)
    index = ServiceProcess("glimpse.index.main", env, tmp_path / "index.log")
    encoder = ServiceProcess("glimpse.encoder.main", env, tmp_path / "encoder.log")
    gateway = ServiceProcess("glimpse.gateway.main", {
        **env, "WEB_CONCURRENCY": "2", "GATEWAY_ENCODER_URL": encoder.url,
        "GATEWAY_INDEX_URL": index.url}, tmp_path / "gateway.log")
    started: list[ServiceProcess] = []
    try:
        with ThreadPoolExecutor(2) as pool:
            for future in [pool.submit(s.start, 120) for s in (index, encoder)]:
                started.append(future.result())
        started.append(gateway.start(120))
        yield {"index": index, "encoder": encoder, "gateway": gateway}
    finally:
        for service in reversed(started):
            service.stop()


def _jpeg(seed: int) -> bytes:
    rng = random.Random(seed)
    out = io.BytesIO()
    Image.frombytes("RGB", (40, 30), rng.randbytes(40 * 30 * 3)).save(out, "JPEG")
    return out.getvalue()


def _requests(service: ServiceProcess, route_part: str, method: str) -> int:
    """Requests a service answered on routes whose template holds ``route_part``."""
    text = httpx.get(service.url + "/metrics").text
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith("glimpse_http_requests_total{") and route_part in line
               and f'method="{method}"' in line)


def _fresh(url: str, method: str, path: str, **kwargs: object) -> httpx.Response:
    """One request on a new connection: the kernel hands each to either worker."""
    with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {KEY}"},
                      limits=httpx.Limits(max_keepalive_connections=0)) as client:
        return client.request(method, path, **kwargs)  # type: ignore[arg-type]


def test_a_migration_through_two_workers_runs_once(
    services: dict[str, ServiceProcess], tmp_path: Path,
) -> None:
    gateway, index, encoder = services["gateway"], services["index"], services["encoder"]
    for start in range(0, N, 20):
        files = [("files", (f"w/{s}.jpg", _jpeg(s), "image/jpeg"))
                 for s in range(start, start + 20)]
        answer = _fresh(gateway.url, "POST", "/ingest", files=files)
        assert {i["status"] for i in answer.json()["items"]} == {"added"}, answer.text
    embeds = _requests(encoder, "/v1/embed/image", "POST")

    started = _fresh(gateway.url, "POST", "/admin/model", json={"model": NEW, "pretrained": "none"})
    assert started.status_code == 202, started.text
    # A second start, on whichever worker, is refused: the state file is shared.
    for _ in range(4):
        again = _fresh(gateway.url, "POST", "/admin/model",
                       json={"model": NEW, "pretrained": "none"})
        assert again.status_code == 409, again.text
    deadline = time.monotonic() + 120
    while (status := _fresh(gateway.url, "GET", "/admin/model").json())["state"] != "switched":
        assert status["state"] == "running" and time.monotonic() < deadline, status
        time.sleep(0.1)
    assert (status["done"], status["total"], status["failed"]) == (N, N, 0)

    # Once: two embed calls of the new model (32 + 8 originals), two space writes, one switch.
    assert _requests(encoder, "/v1/embed/image", "POST") - embeds == 2
    writes = _requests(index, "/vectors", "POST")
    assert writes == 2, writes
    assert _requests(index, "/activate", "POST") == 1
    spaces = httpx.get(index.url + "/v1/spaces").json()
    assert {s["name"]: s["count"] for s in spaces["spaces"]} == {
        "default": N, "glimpse_tiny_32_none": N}
    media = tmp_path / "media"
    assert sorted(p.name for p in media.iterdir() if "migration" in p.name) == ["migration.json"]

    # Both workers answer from the new model. Each scrape of /metrics comes from one worker
    # and counts that worker's earlier scrapes: one worker alone would count 0, 1, 2...
    time.sleep(1.0)  # every worker reads the state file twice a second
    seen: list[int] = []
    while len(seen) < 200 and seen == list(range(len(seen))):
        text = _fresh(gateway.url, "GET", "/metrics").text
        assert 'glimpse_migration_state{state="switched"} 1.0' in text
        seen.append(sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
                        if line.startswith("glimpse_http_requests_total{")
                        and 'route="/metrics"' in line))
        search = _fresh(gateway.url, "POST", "/search/text", json={"query": "a photo", "k": 3})
        assert search.json()["model"] == NEW, search.text
    assert seen != list(range(len(seen))), f"one worker answered every scrape: {seen}"
    # No worker started the work again after the switch.
    time.sleep(1.0)
    assert _requests(index, "/vectors", "POST") == writes
    assert _fresh(gateway.url, "GET", "/admin/model").json()["state"] == "switched"
