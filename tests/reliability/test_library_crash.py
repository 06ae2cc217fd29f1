"""kill -9 of the gateway during a library's first scan (real index, tiny encoder, gateway):
the next start resumes, indexes nothing twice and loses nothing acknowledged (every file
recorded indexed before the kill keeps its id)."""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.support.stack import start_stack

FILES = 600


def write_photos(root: Path) -> list[str]:
    keys = []
    for n in range(FILES):
        out = io.BytesIO()
        Image.new("RGB", (32, 24), (n % 256, n // 256, 99)).save(out, format="PNG")
        path = root / f"{n % 7}/{n}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(out.getvalue())
        os.utime(path, (time.time() - 60, time.time() - 60))
        keys.append(hashlib.sha256(out.getvalue()).hexdigest())
    return keys


def indexed(state_file: Path) -> dict[str, int]:
    with sqlite3.connect(state_file) as db:
        rows = db.execute("SELECT sha256, id FROM files WHERE status = 'indexed'").fetchall()
    return dict(rows)


def library_status(client: httpx.Client) -> dict[str, object]:
    status: dict[str, object] = client.get("/admin/libraries").json()["libraries"][0]
    return status


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_kill9_during_first_scan(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    keys = write_photos(photos)
    with start_stack(tmp_path / "stack", GATEWAY_LIBRARIES=f"photos={photos}") as stack:
        state_file = stack.media_dir / "libraries" / "photos.sqlite"
        with stack.client() as client:
            deadline = time.monotonic() + 120
            while not (state_file.exists() and indexed(state_file)):
                assert time.monotonic() < deadline, stack.logs()
                time.sleep(0.01)
        stack.gateway.kill()
        acknowledged = indexed(state_file)
        assert 0 < len(acknowledged) < FILES, "the scan was not caught midway"

        stack.gateway.start(120)
        with stack.client() as client:
            deadline = time.monotonic() + 300
            while (status := library_status(client))["indexed"] != FILES:
                assert time.monotonic() < deadline, (status, stack.logs())
                time.sleep(0.2)
            assert status["failed"] == 0 and status["status"] == "ok"
        after = indexed(state_file)
        assert all(after[k] == v for k, v in acknowledged.items())  # nothing lost, same ids
        with httpx.Client(base_url=stack.index.url, timeout=30) as index:
            ids = index.post("/v1/keys/ids", json={"keys": keys}).json()["ids"]
            count = index.get("/v1/stats").json()["count"]
        assert len(ids) == FILES and len(set(ids.values())) == FILES
        assert count == FILES  # nothing indexed twice
        assert not list((stack.media_dir / "originals").iterdir())  # indexed in place
