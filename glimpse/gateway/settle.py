"""Settling packs: giving back the bytes of packed originals that no item refers to.

An ingest request writes its originals to a new pack, born with a ``.pending`` marker
(glimpse/gateway/media.py), and removes the marker when its request ends with each entry either
referenced by the item the index added or erased. Two cases leave the marker behind:

- a crash (or kill) between the pack's fsync and the end of the request;
- an index add that did not answer: the index may have committed it, or not.

Every ``pack_settle_interval_s`` the gateway looks at the packs whose marker is older than
``pack_settle_after_s``, long enough that no add naming them can still be on its way to the
index. For each, it asks the index which item, if any, holds each entry's sha256
(``/v1/keys/ids``) and where that item's original is (``/v1/items/{id}``). An entry the item
does not name is erased, a pack no item refers to is removed, and the marker goes: a pack is
only named by the items of the one request that wrote it, so once settled it stays settled.
An index that cannot answer leaves the pack marked for the next pass.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import anyio

from glimpse.contracts.errors import GlimpseError
from glimpse.gateway.media import PackEntry, packed_location
from glimpse.gateway.state import GatewayState

logger = logging.getLogger("glimpse.gateway.settle")


@dataclass
class SettleReport:
    """What one pass did."""

    packs: int = 0  # packs looked at
    kept: int = 0  # settled, some entry referenced
    removed: int = 0  # settled, no entry referenced: the file removed
    left: int = 0  # still marked (the index did not answer, or the pack did not parse)
    erased: int = 0  # entries erased
    erased_bytes: int = 0


async def _referenced(
    state: GatewayState, pack: str, live: list[PackEntry], keys: list[str]
) -> set[int]:
    """The offsets of the ``live`` entries (not erased; ``keys``: their sha256s) that the live
    item of their sha256 names as its original."""
    if not live:
        return set()
    ids = await state.index.key_ids(keys)

    async def names_it(entry: PackEntry, key: str) -> bool:
        item_id = ids.get(key)
        if item_id is None:
            return False
        try:
            record = await state.index.item(item_id)
        except GlimpseError as exc:
            if exc.status != 404:
                raise
            return False  # deleted since: its delete erases what it named
        original = (record.get("meta") or {}).get("original")
        return packed_location(original) == (pack, entry.offset, entry.length)

    named = await asyncio.gather(*(names_it(e, k) for e, k in zip(live, keys, strict=True)))
    return {e.offset for e, yes in zip(live, named, strict=True) if yes}


async def settle_pack(state: GatewayState, pack: str, report: SettleReport) -> None:
    """Settle one marked pack (see the module's docstring), counting what it did in
    ``report``. Raises what the index raised; the pack then stays marked."""
    media = state.media
    entries, whole = await anyio.to_thread.run_sync(media.pack_entries, pack)
    report.packs += 1
    if not whole:
        # Not written by this code, or damaged: nothing is erased from what cannot be walked.
        logger.warning("pack %s does not parse to its end; it is left as it is", pack)
        report.left += 1
        return
    live = [e for e in entries if e.sha256 is not None]
    keys = [e.sha256 for e in live if e.sha256 is not None]
    # Against a delete of the same bytes in this gateway (which erases what its item names).
    async with state.key_locks.hold(keys):
        referenced = await _referenced(state, pack, live, keys)
        unreferenced = [(e, k) for e, k in zip(live, keys, strict=True)
                        if e.offset not in referenced]

        def settle() -> None:
            if referenced:
                for entry, key in unreferenced:
                    media.erase_packed(key, entry.location(pack))
            media.settle_pack(pack, keep=bool(referenced))

        await anyio.to_thread.run_sync(settle)
    media.invalidate_bytes()
    report.erased += len(unreferenced)
    report.erased_bytes += sum(e.length for e, _ in unreferenced)
    if referenced:
        report.kept += 1
    else:
        report.removed += 1


async def settle_pending(state: GatewayState) -> SettleReport:
    """One pass over the packs marked for longer than ``pack_settle_after_s``."""
    report = SettleReport()
    older_than = state.settings.pack_settle_after_s
    packs = await anyio.to_thread.run_sync(state.media.pending_packs, older_than)
    for pack in packs:
        if pack in state.packs_in_flight:
            continue  # its request has not ended (a slow one)
        try:
            await settle_pack(state, pack, report)
        except (GlimpseError, OSError) as exc:
            report.left += 1
            logger.warning("pack %s stays marked for the next pass: %s", pack, exc)
    if report.packs:
        logger.info(
            "settled packs: %d kept, %d removed, %d left marked; %d entries (%d bytes) erased",
            report.kept, report.removed, report.left, report.erased, report.erased_bytes,
        )
    return report


async def settle_forever(state: GatewayState) -> None:
    """A pass soon after start (what a crash left), then one every interval."""
    interval = state.settings.pack_settle_interval_s
    await asyncio.sleep(min(interval, 10.0))
    while True:
        try:
            await settle_pending(state)
        except Exception:  # a pass must never end the loop
            logger.exception("a pass settling packs failed")
        await asyncio.sleep(interval)
