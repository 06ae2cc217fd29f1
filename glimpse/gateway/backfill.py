"""Backfill: the metadata of items ingested before metadata.py existed, read once from their
stored originals (issue 26, "Backfill").

It runs when asked (POST /admin/backfill), not at start: it reads every original once, which on
a large collection is hours of disk reads that an operator should choose to spend, and a
restart should not repeat. It runs in the background, one item at a time, and keeps its
cursor (the last item id done) in ``<media>/backfill.json`` after each batch, so a restart
resumes where it stopped (POST again). An item whose meta has ``folder`` already has the fields
(ingested since, or done) and is skipped; the fields never replace a value the meta holds.

Items are walked by id, 1 to the highest one (count + deleted): the Faiss backend's ids are
SQLite row ids. The Milvus backend's ids are hashes of the keys and cannot be walked: there
it refuses with a sentence.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import anyio
import orjson

from glimpse.contracts.errors import ErrorType, GlimpseError
from glimpse.contracts.index import meta_problem
from glimpse.gateway.media import write_atomic
from glimpse.gateway.metadata import extract_metadata
from glimpse.gateway.state import GatewayState

logger = logging.getLogger("glimpse.gateway")

BATCH = 100  # items between two saves of the cursor


class Backfill:
    """The one backfill of a gateway: its progress, and the task running it."""

    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self.path: Path = state.media.root / "backfill.json"
        self.task: asyncio.Task[None] | None = None
        self.progress: dict[str, Any] = {"status": "idle", **self._saved()}

    def _saved(self) -> dict[str, Any]:
        try:
            saved = orjson.loads(self.path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            saved = {}
        keys = ("cursor", "last_id", "updated", "skipped", "failed")
        out = {k: int(saved.get(k, 0)) for k in keys if isinstance(saved.get(k, 0), int)}
        return {"cursor": 0, "last_id": 0, "updated": 0, "skipped": 0, "failed": 0, **out}

    def status(self) -> dict[str, Any]:
        return dict(self.progress)

    async def start(self) -> dict[str, Any]:
        """Start (or resume) the backfill; 409 while one runs, or on the Milvus backend."""
        if self.task is not None and not self.task.done():
            raise GlimpseError(ErrorType.conflict, "A backfill is running already; see GET "
                               "/admin/backfill for its progress.")
        stats = await self.state.index.stats()
        if stats.get("backend") == "milvus":
            raise GlimpseError(ErrorType.conflict, "The Milvus backend's ids are hashes of "
                               "the keys and cannot be walked, so it has no backfill; "
                               "ingest the files again to read their metadata.")
        last_id = int(stats.get("count", 0)) + int(stats.get("deleted", 0))
        self.progress.update(status="running", last_id=last_id, started_at=time.time(),
                             error=None)
        self.task = asyncio.create_task(self._run(last_id))
        return self.status()

    async def _run(self, last_id: int) -> None:
        try:
            while self.progress["cursor"] < last_id:
                start = self.progress["cursor"] + 1
                for item_id in range(start, min(last_id, start + BATCH - 1) + 1):
                    outcome = await self._one(item_id)
                    self.progress[outcome] += 1
                    self.progress["cursor"] = item_id
                await anyio.to_thread.run_sync(self._save)
            self.progress["status"] = "done"
        except Exception as exc:  # the index or the disk failed: resumable from the cursor
            logger.warning("backfill stopped at item %d: %s", self.progress["cursor"], exc)
            self.progress.update(status="failed", error=str(exc))
        await anyio.to_thread.run_sync(self._save)

    def _save(self) -> None:
        keys = ("cursor", "last_id", "updated", "skipped", "failed")
        write_atomic(self.path, orjson.dumps({k: self.progress[k] for k in keys}))

    async def _one(self, item_id: int) -> str:
        """Backfill one item: "updated", "skipped" (gone, or has the fields) or "failed"."""
        index = self.state.index
        try:
            record = await index.item(item_id)
        except GlimpseError as exc:
            if exc.error_type == ErrorType.not_found.value:
                return "skipped"  # deleted
            raise
        meta: dict[str, Any] = record.get("meta") or {}
        if "folder" in meta:
            return "skipped"
        found = await anyio.to_thread.run_sync(self._read, record)
        if found is None:
            return "failed"
        merged = {**found, **meta}
        if meta_problem(merged) is not None:
            return "failed"
        await index.json("PATCH", f"/v1/items/{item_id}", json={"meta": merged})
        return "updated"

    def _read(self, record: dict[str, Any]) -> dict[str, Any] | None:
        """The metadata of the item's original (None when it cannot be read)."""
        path, meta = str(record["path"]), record.get("meta") or {}
        try:
            found = self.state.media.find_original(str(record["key"]), path,
                                                   meta.get("original"))
            if isinstance(found, Path):
                # A library file's mtime is the photo's; a stored copy's is its upload's.
                ours = found.is_relative_to(self.state.media.root)
                mtime = None if ours else found.stat().st_mtime
                return extract_metadata(found.read_bytes(), path, mtime)
            if isinstance(found, bytes):
                return extract_metadata(found, path)
        except (OSError, ValueError) as exc:
            logger.info("backfill: the original of %s cannot be read: %s", path[:200], exc)
        return None


def backfill_of(state: GatewayState) -> Backfill:
    """The gateway's Backfill, made on first use."""
    backfill = getattr(state, "backfill", None)
    if not isinstance(backfill, Backfill):
        backfill = Backfill(state)
        setattr(state, "backfill", backfill)  # noqa: B010 (GatewayState has no field for it)
    return backfill
