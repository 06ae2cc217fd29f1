"""The gateway's HTTP behaviour with the index replaced by a dict: status codes, headers and
methods of the image routes, the order of the access check, and the offline API docs."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from glimpse.contracts.errors import ErrorType, GlimpseError
from glimpse.gateway.config import Settings
from glimpse.gateway.main import create_app
from glimpse.gateway.state import LruCache
from tests.support.procs import free_port

KEY = "key-for-the-details"


class FakeIndex:
    """The records the gateway asks the index for, by id."""

    def __init__(self, records: dict[int, dict[str, Any]]) -> None:
        self.records = records
        self.asked = 0

    async def item(self, image_id: int) -> dict[str, Any]:
        self.asked += 1
        record = self.records.get(image_id)
        if record is None:
            raise GlimpseError(ErrorType.not_found, f"No item {image_id}.")
        return record

    async def delete(self, image_id: int) -> None:
        self.records.pop(image_id, None)


def record(image_id: int, key: str, **meta: Any) -> dict[str, Any]:
    return {
        "id": image_id,
        "key": key,
        "path": f"photos/{image_id}.jpg",
        "meta": {"content_type": "image/jpeg", "width": 2, "height": 1, **meta},
        "created_at": 0.0,
    }


@contextmanager
def fake_gateway(tmp_path: Path, **options: Any) -> Iterator[tuple[TestClient, FakeIndex]]:
    dead = f"http://127.0.0.1:{free_port()}"
    settings = Settings(
        encoder_url=dead, index_url=dead, media_dir=tmp_path / "media", api_key=KEY, **options
    )
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        state = app.state.gateway
        index = FakeIndex({
            1: record(1, "not-a-sha256/../../etc/passwd"),  # F9: added through the index port
            2: record(2, "ab" * 32),  # a sha256 whose original is gone
        })
        state.index = index
        yield client, index


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[TestClient, FakeIndex]]:
    with fake_gateway(tmp_path) as running:
        yield running


# F9 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image_id", [1, 2])
@pytest.mark.parametrize("suffix", ["", "/thumbnail"])
def test_media_of_an_item_without_media_is_404(
    gateway: tuple[TestClient, FakeIndex], image_id: int, suffix: str
) -> None:
    client, _ = gateway
    response = client.get(f"/images/{image_id}{suffix}")
    assert response.status_code == 404, response.text
    body = response.json()
    assert body["error_type"] == "not_found"
    assert f"image {image_id}" in body["error"]


def test_an_item_with_a_foreign_key_can_be_deleted(gateway: tuple[TestClient, FakeIndex]) -> None:
    client, index = gateway
    response = client.delete("/images/1", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 204, response.text
    assert 1 not in index.records


# Methods -------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "/thumbnail"])
def test_head_answers_like_get_without_a_body(
    gateway: tuple[TestClient, FakeIndex], suffix: str
) -> None:
    client, _ = gateway
    got, head = client.get(f"/images/2{suffix}"), client.head(f"/images/2{suffix}")
    assert head.status_code == got.status_code == 404  # the route's answer, not the page's
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"] == "application/json"
    # An ETag the client holds is answered the same way too.
    etag = {"If-None-Match": '"' + "ab" * 32 + ('-thumb"' if suffix else '"')}
    assert client.head(f"/images/2{suffix}", headers=etag).status_code == 304
    assert client.get(f"/images/2{suffix}", headers=etag).status_code == 304


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/images/2", "DELETE, GET, HEAD, PATCH"),
        ("PUT", "/images/2", "DELETE, GET, HEAD, PATCH"),
        ("GET", "/ingest", "POST"),
        ("DELETE", "/search/text", "POST"),
        ("GET", "/search/image", "POST"),
        ("POST", "/images/2/meta", "GET"),
        ("PUT", "/stats", "GET"),
        ("GET", "/admin/index/rebuild", "POST"),
        ("POST", "/docs", "GET"),
        ("POST", "/no-such-page", "GET, HEAD"),  # the web page's own
    ],
)
def test_a_wrong_method_names_the_routes_methods(
    gateway: tuple[TestClient, FakeIndex], method: str, path: str, allow: str
) -> None:
    client, _ = gateway
    response = client.request(method, path)
    assert response.status_code == 405, response.text
    assert response.headers["allow"] == allow
    body = response.json()
    assert body["error_type"] == "method_not_allowed"
    assert f"{method} is not allowed on {path}" in body["error"]


def test_the_web_page_still_answers_every_other_path(
    gateway: tuple[TestClient, FakeIndex],
) -> None:
    client, _ = gateway
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert client.get("/app.js").status_code == 200
    missing = client.get("/no-such-page")
    assert missing.status_code == 404 and missing.json()["error_type"] == "not_found"


# Record cache (issue 25 F10) ------------------------------------------------------------------


def test_cached_records_expire() -> None:
    now = [0.0]
    cache: LruCache[int, str] = LruCache(2, ttl=5.0, clock=lambda: now[0])
    cache.put(1, "one")
    now[0] = 4.9
    assert cache.get(1) == "one"
    now[0] = 5.0
    assert cache.get(1) is None
    cache.put(1, "one")
    cache.put(2, "two")
    cache.put(3, "three")  # over the size: the least recently used goes first
    assert (cache.get(1), cache.get(2), cache.get(3)) == (None, "two", "three")
    never: LruCache[int, str] = LruCache(2, ttl=0)
    never.put(1, "one")
    assert never.get(1) is None


def test_a_record_deleted_elsewhere_is_seen_within_the_ttl(tmp_path: Path) -> None:
    with fake_gateway(tmp_path, record_ttl_s=0.5) as (client, index):
        etag = {"If-None-Match": '"' + "ab" * 32 + '"'}
        assert client.get("/images/2/meta").status_code == 200
        assert client.get("/images/2", headers=etag).status_code == 304
        assert index.asked == 1  # kept
        del index.records[2]  # deleted through another gateway
        # Without the TTL it would be served forever; the slack is for a loaded machine.
        deadline = time.monotonic() + 0.5 + 1.5
        while client.get("/images/2/meta").status_code == 200:
            assert time.monotonic() < deadline, "the deleted record was still served"
            time.sleep(0.02)
        assert client.get("/images/2", headers=etag).status_code == 404


# Offline API docs ------------------------------------------------------------------------------


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_api_docs_need_nothing_from_another_host(
    gateway: tuple[TestClient, FakeIndex], page: str
) -> None:
    client, _ = gateway
    response = client.get(page)
    assert response.status_code == 200
    html = response.text
    urls = re.findall(r"""(?:src|href|url)\s*[=:(]\s*['"]?([^'"\s)>]+)""", html)
    assert urls, html
    remote = [u for u in urls if "//" in u]
    assert not remote, f"{page} loads from elsewhere: {remote}"
    for url in urls:
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 0
    scripts = [u for u in urls if u.endswith(".js")]
    assert scripts and all("javascript" in client.get(u).headers["content-type"]
                           for u in scripts), scripts
