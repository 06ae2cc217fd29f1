"""The backfill (glimpse/gateway/backfill.py) against a scripted index: it fills the fields of
old items from their originals without replacing a value, skips deleted and done items,
resumes from its saved cursor after a failure, and refuses the Milvus backend."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from glimpse.contracts.errors import ErrorType, GlimpseError
from glimpse.gateway.backfill import Backfill
from glimpse.gateway.media import MediaStore
from tests.unit.gateway.test_metadata import Base, jpeg


class FakeIndex:
    def __init__(self, items: dict[int, dict[str, Any]], backend: str = "faiss",
                 fail_at: int | None = None) -> None:
        self.items, self.backend, self.fail_at = items, backend, fail_at
        self.read: list[int] = []
        self.patched: dict[int, dict[str, Any]] = {}

    async def stats(self) -> dict[str, Any]:
        return {"backend": self.backend, "count": len(self.items), "deleted": 1}

    async def item(self, item_id: int) -> dict[str, Any]:
        if item_id == self.fail_at:
            self.fail_at = None
            raise GlimpseError(ErrorType.upstream_unavailable, "the index is restarting")
        self.read.append(item_id)
        if item_id not in self.items:
            raise GlimpseError(ErrorType.not_found, f"No item {item_id}.")
        return self.items[item_id]

    async def json(self, method: str, path: str, json: Any = None) -> Any:
        assert method == "PATCH"
        item_id = int(path.rsplit("/", 1)[1])
        self.patched[item_id] = json["meta"]
        self.items[item_id] = {**self.items[item_id], "meta": json["meta"]}
        return self.items[item_id]


def collection(tmp_path: Path, n: int) -> tuple[MediaStore, dict[int, dict[str, Any]]]:
    """Items 1..n+1 with item 2 deleted; originals stored for all but item 3."""
    media = MediaStore(tmp_path)
    media.setup()
    items = {}
    for item_id in range(1, n + 2):
        data = jpeg(exif={Base.Make: "Canon", Base.Model: f"EOS {item_id}"})
        data += bytes([item_id % 256])  # distinct bytes
        key = hashlib.sha256(data).hexdigest()
        if item_id != 3:
            media.put_many([(key, data)])
        items[item_id] = {"id": item_id, "key": key, "path": f"Trips/{item_id}.jpg",
                          "meta": {"width": 32, "camera": ["kept"]}}
    del items[2]
    items[4]["meta"]["folder"] = "Trips"  # ingested since: has the fields
    return media, items


async def finished(backfill: Backfill) -> dict[str, Any]:
    assert backfill.task is not None
    await asyncio.wait_for(backfill.task, 30)
    return backfill.status()


async def test_fills_old_items_and_resumes_after_a_failure(tmp_path: Path) -> None:
    media, items = collection(tmp_path, 150)
    index = FakeIndex(items, fail_at=120)
    state = SimpleNamespace(index=index, media=media, libraries=None)
    first = Backfill(state)  # type: ignore[arg-type]
    assert (await first.start())["status"] == "running"
    stopped = await finished(first)
    assert stopped["status"] == "failed" and "restarting" in stopped["error"]
    assert stopped["cursor"] == 119  # the last item done, saved as it stopped

    again = Backfill(state)  # type: ignore[arg-type]  # a restarted gateway reads the cursor
    assert again.status()["cursor"] == 119
    await again.start()
    done = await finished(again)
    assert done["status"] == "done" and done["cursor"] == done["last_id"] == 151
    assert index.read.count(50) == 1  # items before the cursor were not read again
    meta = index.patched[10]
    assert meta["folder"] == "Trips" and meta["camera_model"] == "EOS 10"
    assert meta["camera"] == ["kept"] and meta["width"] == 32  # the meta's values win
    assert 2 not in index.patched and 4 not in index.patched  # deleted; done already
    assert 3 not in index.patched  # no original
    assert done["updated"] == 148 and done["failed"] == 1
    with pytest.raises(GlimpseError, match="running already"):
        again.task = asyncio.create_task(asyncio.sleep(1))
        await again.start()


async def test_the_milvus_backend_is_refused(tmp_path: Path) -> None:
    media, items = collection(tmp_path, 3)
    state = SimpleNamespace(index=FakeIndex(items, backend="milvus"), media=media,
                            libraries=None)
    with pytest.raises(GlimpseError, match="cannot be walked") as caught:
        await Backfill(state).start()  # type: ignore[arg-type]
    assert caught.value.error_type == "conflict"


def test_the_admin_routes(tmp_path: Path) -> None:
    from tests.unit.gateway.test_search_routes import gateway

    with gateway(tmp_path) as (client, _):
        state = client.app.state.gateway  # type: ignore[attr-defined]
        state.index = FakeIndex({}, backend="milvus")
        assert client.get("/admin/backfill").json()["status"] == "idle"
        refused = client.post("/admin/backfill")
        assert refused.status_code == 409 and "cannot be walked" in refused.json()["error"]
        state.index = FakeIndex({})
        started = client.post("/admin/backfill")
        assert started.status_code == 202 and started.json()["status"] == "running"
