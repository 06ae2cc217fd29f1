"""The settling pass (settle.py) over real packs, with the index's two answers scripted:
which live item holds a sha256, and that item's record. tests/integration/test_gateway_api.py
runs it against the real index."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from glimpse.contracts.errors import ErrorType, GlimpseError
from glimpse.gateway.media import MediaStore
from glimpse.gateway.settle import settle_pending
from glimpse.gateway.state import KeyLocks


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Index:
    """sha256 -> (id, record); ``down``: every call fails as an unreachable index does."""

    def __init__(self) -> None:
        self.items: dict[str, tuple[int, dict[str, Any]]] = {}
        self.deleted: set[int] = set()
        self.down = False

    def put(self, data: bytes, original: dict[str, Any]) -> None:
        item_id = len(self.items) + 1
        self.items[sha(data)] = (item_id, {"id": item_id, "key": sha(data),
                                           "meta": {"original": original}})

    async def key_ids(self, keys: list[str]) -> dict[str, int]:
        if self.down:
            raise GlimpseError(ErrorType.upstream_unavailable, "The index is unreachable.")
        return {k: self.items[k][0] for k in keys if k in self.items}

    async def item(self, item_id: int) -> dict[str, Any]:
        for got, record in self.items.values():
            if got == item_id and got not in self.deleted:
                return record
        raise GlimpseError(ErrorType.not_found, f"Item {item_id} was deleted.")


def state_of(tmp_path: Path, index: Index) -> Any:
    return SimpleNamespace(
        media=MediaStore(tmp_path), index=index, key_locks=KeyLocks(), packs_in_flight=set(),
        settings=SimpleNamespace(pack_settle_after_s=60.0),
    )


def age(state: Any, pack: str, seconds: float = 3600) -> None:
    os.utime(state.media.marker_path(pack), (time.time() - seconds,) * 2)


def shas(state: Any, pack: str) -> list[str | None]:
    entries, whole = state.media.pack_entries(pack)
    assert whole
    return [e.sha256 for e in entries]


async def test_entries_no_live_item_names_are_erased(tmp_path: Path) -> None:
    index = Index()
    state = state_of(tmp_path, index)
    named, unknown, elsewhere, deleted = b"named", b"unknown", b"elsewhere", b"deleted"
    locations = state.media.write_pack([(sha(d), d) for d in (named, unknown, elsewhere, deleted)])
    pack = locations[0]["pack"]
    index.put(named, locations[0])
    index.put(elsewhere, {"pack": "2026-01/" + "0" * 32 + ".pack", "offset": 48, "length": 9})
    index.put(deleted, locations[3])
    index.deleted.add(index.items[sha(deleted)][0])  # deleted after the key lookup
    age(state, pack)
    report = await settle_pending(state)
    assert (report.packs, report.kept, report.removed, report.left) == (1, 1, 0, 0)
    assert report.erased == 3 and report.erased_bytes == len(unknown + elsewhere + deleted)
    assert shas(state, pack) == [sha(named), None, None, None]
    assert state.media.read_packed(sha(named), locations[0]) == named
    assert state.media.pending_packs(0) == []
    assert (await settle_pending(state)).packs == 0  # settled once and for all


async def test_a_pack_no_item_names_is_removed(tmp_path: Path) -> None:
    state = state_of(tmp_path, Index())
    pack = state.media.write_pack([(sha(b"a"), b"a"), (sha(b"b"), b"b")])[0]["pack"]
    age(state, pack)
    report = await settle_pending(state)
    assert (report.removed, report.erased) == (1, 2)
    assert list((tmp_path / "packs").rglob("*.*")) == []


async def test_young_in_flight_and_unparsable_packs_stay_marked(tmp_path: Path) -> None:
    state = state_of(tmp_path, Index())
    young = state.media.write_pack([(sha(b"y"), b"y")])[0]["pack"]
    age(state, young, 30)  # younger than pack_settle_after_s
    in_flight = state.media.write_pack([(sha(b"f"), b"f")])[0]["pack"]
    age(state, in_flight)
    state.packs_in_flight.add(in_flight)  # its request has not ended
    torn = state.media.write_pack([(sha(b"t"), b"t" * 100)])[0]["pack"]
    path = tmp_path / "packs" / torn
    path.write_bytes(path.read_bytes()[:-1])
    age(state, torn)
    report = await settle_pending(state)
    assert (report.packs, report.left, report.erased) == (1, 1, 0)  # only the torn one tried
    assert sorted(state.media.pending_packs(0)) == sorted([young, in_flight, torn])
    assert path.stat().st_size > 0


async def test_an_index_that_cannot_answer_leaves_the_pack_for_the_next_pass(
    tmp_path: Path,
) -> None:
    index = Index()
    state = state_of(tmp_path, index)
    location = state.media.write_pack([(sha(b"x"), b"x")])[0]
    age(state, location["pack"])
    index.down = True
    report = await settle_pending(state)
    assert (report.left, report.erased) == (1, 0)
    assert state.media.read_packed(sha(b"x"), location) == b"x"
    assert state.media.pending_packs(60) == [location["pack"]]
    index.down = False
    index.put(b"x", location)
    report = await settle_pending(state)
    assert (report.kept, report.erased) == (1, 0)
    assert state.media.read_packed(sha(b"x"), location) == b"x"
