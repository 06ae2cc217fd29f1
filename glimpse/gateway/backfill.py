"""Backfill: the metadata of items ingested before metadata.py existed, read once from their
stored originals (issue 26, "Backfill").

It runs when asked (POST /admin/backfill), not at start: it reads every original once, which on
a large collection is hours of disk reads that an operator should choose to spend, and a
restart should not repeat. It runs in the background and keeps its cursor (the last item id
done) in ``<media>/backfill.json`` after each page, so a restart resumes where it stopped (POST
again). An item whose meta has ``folder`` already has the fields (ingested since, or done) and
is skipped; the fields never replace a value the meta holds.

Items are walked a page at a time in id order (GET /v1/items), which both backends answer: the
Milvus backend's ids are hashes, not a range to count through. A page's items are done a few at
a time, since a Milvus update waits on a Strong read of itself rather than on the CPU.
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

BATCH = 100  # items listed at once, and between two saves of the cursor
IN_FLIGHT = 8  # items of a page read and updated at once
SAVED = ("cursor", "total", "updated", "skipped", "failed")


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
        out = {k: int(saved.get(k, 0)) for k in SAVED if isinstance(saved.get(k, 0), int)}
        return {**dict.fromkeys(SAVED, 0), **out}

    def status(self) -> dict[str, Any]:
        return dict(self.progress)

    async def start(self) -> dict[str, Any]:
        """Start (or resume) the backfill; 409 while one runs."""
        if self.task is not None and not self.task.done():
            raise GlimpseError(ErrorType.conflict, "A backfill is running already; see GET "
                               "/admin/backfill for its progress.")
        stats = await self.state.index.stats()
        self.progress.update(status="running", total=int(stats.get("count", 0)),
                             started_at=time.time(), error=None)
        self.task = asyncio.create_task(self._run())
        return self.status()

    async def _run(self) -> None:
        try:
            while True:
                page = await self.state.index.json("GET", "/v1/items", params={
                    "after": self.progress["cursor"], "limit": BATCH})
                records: list[dict[str, Any]] = page["items"]
                limit = asyncio.Semaphore(IN_FLIGHT)
                outcomes = await asyncio.gather(*(self._counted(r, limit) for r in records),
                                                return_exceptions=True)
                failure = next((o for o in outcomes if isinstance(o, BaseException)), None)
                if failure is not None:
                    raise failure
                if records:
                    self.progress["cursor"] = int(records[-1]["id"])
                    await anyio.to_thread.run_sync(self._save)
                if page.get("next_after") is None:
                    break
            self.progress["status"] = "done"
        except Exception as exc:  # the index or the disk failed: resumable from the cursor
            logger.warning("backfill stopped after item %d: %s", self.progress["cursor"], exc)
            self.progress.update(status="failed", error=str(exc))
        await anyio.to_thread.run_sync(self._save)

    async def _counted(self, record: dict[str, Any], limit: asyncio.Semaphore) -> None:
        async with limit:
            self.progress[await self._one(record)] += 1

    def _save(self) -> None:
        write_atomic(self.path, orjson.dumps({k: self.progress[k] for k in SAVED}))

    async def _one(self, record: dict[str, Any]) -> str:
        """Backfill one listed item: "updated", "skipped" (has the fields) or "failed"."""
        meta: dict[str, Any] = record.get("meta") or {}
        if "folder" in meta:
            return "skipped"
        found = await anyio.to_thread.run_sync(self._read, record)
        if found is None:
            return "failed"
        merged = {**found, **meta}
        if meta_problem(merged) is not None:
            return "failed"
        try:
            await self.state.index.json("PATCH", f"/v1/items/{record['id']}",
                                        json={"meta": merged})
        except GlimpseError as exc:
            if exc.error_type == ErrorType.not_found.value:
                return "skipped"  # deleted since it was listed
            raise
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
