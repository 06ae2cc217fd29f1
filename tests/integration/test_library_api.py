"""Libraries through the real stack (index, tiny encoder, gateway): GET /admin/libraries, POST
/admin/libraries/{name}/scan, originals and thumbnails served from the library, every path of
the same bytes in /images/{id}/meta, an unreadable library reported while uploads work."""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.support.stack import Stack, start_stack

KEY = "library-test-key"


def jpeg(n: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (n * 40 % 256, 90, 30)).save(out, format="JPEG")
    return out.getvalue()


def settled(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (time.time() - 60, time.time() - 60))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Path]]:
    root = tmp_path_factory.mktemp("library")
    photos = root / "photos"
    settled(photos / "a/one.jpg", jpeg(1))
    settled(photos / "b/copy.jpg", jpeg(1))
    settled(photos / "two.jpg", jpeg(2))
    settled(photos / "notes.txt", b"hello")
    (root / "outside.jpg").write_bytes(jpeg(3))
    (photos / "link.jpg").symlink_to(root / "outside.jpg")
    libraries = f"photos={photos},gone={root / 'missing'}"
    with start_stack(root / "stack", GATEWAY_LIBRARIES=libraries, GATEWAY_API_KEY=KEY) as s:
        yield s, photos


def status(client: httpx.Client) -> dict[str, dict[str, Any]]:
    answer = client.get("/admin/libraries")
    assert answer.status_code == 200, answer.text
    return {lib["name"]: lib for lib in answer.json()["libraries"]}


def wait_indexed(client: httpx.Client, count: int) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + 60
    while (libs := status(client))["photos"]["indexed"] != count or libs["photos"]["pending"]:
        assert time.monotonic() < deadline, libs
        time.sleep(0.1)
    return libs


def test_status_serving_and_paths(stack: tuple[Stack, Path]) -> None:
    s, _ = stack
    with s.client(KEY) as client:
        libs = wait_indexed(client, 3)
        photos, gone = libs["photos"], libs["gone"]
        assert photos["failed"] == 1 and photos["failures"][0]["path"] == "notes.txt"
        assert photos["watcher"] in ("inotify", "polling") and photos["last_scan"]["files"] == 4
        assert gone["status"] == "failed" and "cannot be read" in gone["error"]

        found = client.post("/search/text", json={"query": "a photo", "k": 10}).json()
        paths = {hit["path"] for hit in found["results"]}
        assert "photos/two.jpg" in paths and not any("link" in p for p in paths)
        one = next(h for h in found["results"] if h["path"] in ("photos/a/one.jpg",
                                                                "photos/b/copy.jpg"))
        meta = client.get(f"/images/{one['id']}/meta").json()
        assert meta["paths"] == ["photos/a/one.jpg", "photos/b/copy.jpg"]
        original = client.get(f"/images/{one['id']}")
        assert original.status_code == 200 and original.content == jpeg(1)
        assert client.get(f"/images/{one['id']}/thumbnail").status_code == 200
        assert not list((s.media_dir / "originals").iterdir())  # served in place

        # Uploads keep working; the same bytes uploaded are the same item.
        up = client.post("/ingest", files=[("files", ("up/one.jpg", jpeg(1), "image/jpeg"))])
        assert up.json()["items"][0]["status"] == "exists"
        assert up.json()["items"][0]["id"] == one["id"]


def test_scan_route_and_errors(stack: tuple[Stack, Path]) -> None:
    s, photos = stack
    with s.client(KEY) as client:
        wait_indexed(client, 3)
        settled(photos / "c/new.jpg", jpeg(4))
        answer = client.post("/admin/libraries/photos/scan")
        assert answer.status_code == 202 and answer.json()["library"]["name"] == "photos"
        wait_indexed(client, 4)
        key = hashlib.sha256(jpeg(4)).hexdigest()
        missing = client.post("/ingest/check", json={"sha256": [key]}).json()["missing"]
        assert missing == []

        unknown = client.post("/admin/libraries/nope/scan")
        assert unknown.status_code == 404
        assert set(unknown.json()) >= {"error", "error_type", "details"}
        assert "nope" in unknown.json()["error"]
    with s.client() as anonymous:
        assert anonymous.get("/admin/libraries").status_code == 401
        assert anonymous.post("/admin/libraries/photos/scan").status_code == 401


def test_moved_file_keeps_its_id_and_shows_its_new_path(stack: tuple[Stack, Path]) -> None:
    s, photos = stack
    with s.client(KEY) as client:
        wait_indexed(client, 4)  # with test_scan_route_and_errors' new file
        found = client.post("/search/text", json={"query": "a photo", "k": 10}).json()
        two = next(h for h in found["results"] if h["path"] == "photos/two.jpg")
        (photos / "moved").mkdir()
        os.rename(photos / "two.jpg", photos / "moved/two.jpg")
        deadline = time.monotonic() + 60
        while (meta := client.get(f"/images/{two['id']}/meta").json())["path"] != (
            "photos/moved/two.jpg"
        ):
            assert time.monotonic() < deadline, meta
            time.sleep(0.2)
        assert meta["paths"] == ["photos/moved/two.jpg"]
        assert client.get(f"/images/{two['id']}").content == jpeg(2)
        # The index holds the new path: a search answers it (the same id).
        while (hit := next(h for h in client.post(
                "/search/text", json={"query": "a photo", "k": 10}).json()["results"]
                if h["id"] == two["id"]))["path"] != "photos/moved/two.jpg":
            assert time.monotonic() < deadline, hit
            time.sleep(0.2)
        record = httpx.get(f"{s.index.url}/v1/items/{two['id']}").json()
        assert record["path"] == "photos/moved/two.jpg"
