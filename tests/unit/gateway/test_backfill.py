"""The backfill (glimpse/gateway/backfill.py) against a scripted index: it walks the listing
in id order (sparse ids, as Milvus's hashes are), fills the fields of old items from their
originals without replacing a value, skips done items and items deleted meanwhile, and resumes
from its saved cursor after a failure. tests/integration/test_backfill_milvus.py runs it on a
real Milvus."""

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
    def __init__(self, items: dict[int, dict[str, Any]], fail_at: int | None = None,
                 gone: int | None = None) -> None:
        self.items, self.fail_at, self.gone = items, fail_at, gone
        self.listed: list[int] = []
        self.patched: dict[int, dict[str, Any]] = {}

    async def stats(self) -> dict[str, Any]:
        return {"backend": "milvus", "count": len(self.items), "deleted": 1}

    async def json(self, method: str, path: str, json: Any = None,
                   params: dict[str, Any] | None = None) -> Any:
        if method == "GET":
            assert path == "/v1/items" and params is not None
            after, limit = int(params["after"]), int(params["limit"])
            ids = sorted(i for i in self.items if i > after)
            self.listed += ids[:limit]
            return {"items": [self.items[i] for i in ids[:limit]],
                    "next_after": ids[limit - 1] if len(ids) >= limit else None}
        assert method == "PATCH"
        item_id = int(path.rsplit("/", 1)[1])
        if item_id == self.fail_at:
            self.fail_at = None
            raise GlimpseError(ErrorType.upstream_unavailable, "the index is restarting")
        if item_id == self.gone:
            raise GlimpseError(ErrorType.not_found, f"No item {item_id}.")
        self.patched[item_id] = json["meta"]
        self.items[item_id] = {**self.items[item_id], "meta": json["meta"]}
        return self.items[item_id]


def collection(tmp_path: Path, n: int) -> tuple[MediaStore, dict[int, dict[str, Any]]]:
    """Items 1..n+1, ids 1000 apart, with item 2 deleted; originals stored for all but item 3.
    """
    media = MediaStore(tmp_path)
    media.setup()
    items = {}
    for item_id in range(1, n + 2):
        data = jpeg(exif={Base.Make: "Canon", Base.Model: f"EOS {item_id}"})
        data += bytes([item_id % 256])  # distinct bytes
        key = hashlib.sha256(data).hexdigest()
        if item_id != 3:
            media.put_many([(key, data)])
        items[sparse(item_id)] = {"id": sparse(item_id), "key": key,
                                  "path": f"Trips/{item_id}.jpg",
                                  "meta": {"width": 32, "camera": ["kept"]}}
    del items[sparse(2)]
    items[sparse(4)]["meta"]["folder"] = "Trips"  # ingested since: has the fields
    return media, items


def sparse(n: int) -> int:
    return n * 1000 + 7


async def finished(backfill: Backfill) -> dict[str, Any]:
    assert backfill.task is not None
    await asyncio.wait_for(backfill.task, 30)
    return backfill.status()


async def test_fills_old_items_and_resumes_after_a_failure(tmp_path: Path) -> None:
    media, items = collection(tmp_path, 250)
    index = FakeIndex(items, fail_at=sparse(120), gone=sparse(7))
    state = SimpleNamespace(index=index, media=media, libraries=None)
    first = Backfill(state)  # type: ignore[arg-type]
    assert (await first.start())["status"] == "running"
    stopped = await finished(first)
    assert stopped["status"] == "failed" and "restarting" in stopped["error"]
    # The last page done whole (items 1..101, less the deleted 2), saved as it stopped.
    assert stopped["cursor"] == sparse(101) and stopped["total"] == 250

    again = Backfill(state)  # type: ignore[arg-type]  # a restarted gateway reads the cursor
    assert again.status()["cursor"] == sparse(101)
    await again.start()
    done = await finished(again)
    assert done["status"] == "done" and done["cursor"] == sparse(251)
    assert index.listed.count(sparse(50)) == 1  # pages before the cursor were not read again
    meta = index.patched[sparse(10)]
    assert meta["folder"] == "Trips" and meta["camera_model"] == "EOS 10"
    assert meta["camera"] == ["kept"] and meta["width"] == 32  # the meta's values win
    assert sparse(4) not in index.patched  # done already
    assert sparse(3) not in index.patched  # no original
    assert sparse(7) not in index.patched  # deleted after it was listed
    assert len(index.patched) == 247 and done["updated"] == 247 and done["failed"] == 1
    with pytest.raises(GlimpseError, match="running already"):
        again.task = asyncio.create_task(asyncio.sleep(1))
        await again.start()


def test_the_admin_routes(tmp_path: Path) -> None:
    from tests.unit.gateway.test_search_routes import gateway

    with gateway(tmp_path) as (client, _):
        state = client.app.state.gateway  # type: ignore[attr-defined]
        state.index = FakeIndex({})
        assert client.get("/admin/backfill").json()["status"] == "idle"
        started = client.post("/admin/backfill")
        assert started.status_code == 202 and started.json()["status"] == "running"
