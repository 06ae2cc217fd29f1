"""The gateway's HTTP behaviour with the index replaced by a dict: status codes, headers and
methods of the image routes, the order of the access check, and the offline API docs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from glimpse.contracts.errors import ErrorType, GlimpseError
from glimpse.gateway.config import Settings
from glimpse.gateway.main import create_app
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


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[TestClient, FakeIndex]]:
    dead = f"http://127.0.0.1:{free_port()}"
    settings = Settings(
        encoder_url=dead, index_url=dead, media_dir=tmp_path / "media", api_key=KEY
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
        ("POST", "/images/2", "DELETE, GET, HEAD"),
        ("PUT", "/images/2", "DELETE, GET, HEAD"),
        ("GET", "/ingest", "POST"),
        ("DELETE", "/search/text", "POST"),
        ("GET", "/search/image", "POST"),
        ("POST", "/images/2/meta", "GET"),
        ("PUT", "/stats", "GET"),
        ("GET", "/admin/index/rebuild", "POST"),
        ("POST", "/docs", "GET, HEAD"),
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
