"""RELIABILITY.md #3: a torn or truncated tail of the store or of the snapshot, then a start.

The store: SQLite in WAL mode, so the tail of the store is the tail of its write-ahead log.
After a kill, the log is cut inside the frames of the last transaction (what a crash during
that write leaves). The snapshot: its file truncated, emptied, a byte flipped, garbage
appended, deleted; its manifest cut or deleted; and a snapshot newer than the (torn) store.

Figures: every start succeeds; every row committed before the tear is there (and Faiss holds
exactly the live rows); the torn transaction is gone whole, never half; a snapshot it could
not use is named in the log and the load report, and the index is rebuilt from the store.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.reliability._services import IndexAPI, index_process, unit_vectors
from tests.support.procs import ServiceProcess

BATCH = 10


def _check(api: IndexAPI, vectors: dict[str, np.ndarray], must: list[str]) -> list[str]:
    """Problems: committed keys missing, Faiss count off, probes not finding themselves."""
    problems = []
    missing = api.missing(must)
    if missing:
        problems.append(f"{len(missing)} committed keys missing, e.g. {missing[:3]}")
    stats = api.stats()
    if stats["ntotal"] != stats["count"]:
        problems.append(f"Faiss holds {stats['ntotal']} vectors for {stats['count']} rows")
    present = [k for k in vectors if k not in set(api.missing(list(vectors)))]
    if present:
        hits = api.search(np.vstack([vectors[k] for k in present]), k=1)
        lost = sum(1 for h in hits if not h or h[0]["score"] < 0.99)
        if lost:
            problems.append(f"{lost} stored vectors not found by the index")
    return problems


def _fill(proc: ServiceProcess, rng: np.random.Generator, batches: int, wal: Path
          ) -> tuple[dict[str, np.ndarray], list[list[str]], list[int]]:
    vectors: dict[str, np.ndarray] = {}
    keys_by_batch: list[list[str]] = []
    wal_sizes: list[int] = []
    with IndexAPI(proc.url) as api:
        for b in range(batches):
            keys = [f"b{b}-{i}" for i in range(BATCH)]
            vecs = unit_vectors(BATCH, rng)
            api.add(keys, vecs)
            vectors.update(zip(keys, vecs, strict=True))
            keys_by_batch.append(keys)
            wal_sizes.append(wal.stat().st_size)
    return vectors, keys_by_batch, wal_sizes


@pytest.mark.slow
def test_torn_tail_of_the_store_log(tmp_path: Path, figure: Any) -> None:
    rng = np.random.default_rng(3)
    data = tmp_path / "data"
    wal = data / "items.sqlite3-wal"
    proc = index_process(tmp_path, data)
    proc.start(90)
    try:
        vectors, batches, sizes = _fill(proc, rng, 12, wal)
        proc.kill()
        assert sizes == sorted(sizes) and sizes[-1] > sizes[-2], sizes  # no checkpoint between
        cut = sizes[-2] + (sizes[-1] - sizes[-2]) // 2  # inside the last transaction
        with open(wal, "r+b") as fh:
            fh.truncate(cut)
        proc.start(90)
        with IndexAPI(proc.url) as api:
            committed = [k for b in batches[:-1] for k in b]
            problems = _check(api, {k: vectors[k] for k in committed}, committed)
            last_missing = len(api.missing(batches[-1]))
            count = api.stats()["count"]
    finally:
        proc.kill()
    figure(rows_before_tear=len(committed), rows_after=count, torn_batch_rows_missing=(
        last_missing), problems=problems)
    assert not problems, problems
    assert last_missing in (0, BATCH), f"the torn transaction is half there: {last_missing}"
    assert count == len(committed) + (BATCH - last_missing)


def _corruptions(data: Path) -> dict[str, Any]:
    manifest = data / "manifest.json"

    def snap() -> Path:
        return data / json.loads(manifest.read_text())["file"]

    def truncate_half(p: Path) -> None:
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])

    def flip(p: Path) -> None:
        b = bytearray(p.read_bytes())
        b[len(b) // 2] ^= 0xFF
        p.write_bytes(bytes(b))

    return {
        "snapshot truncated to half": lambda: truncate_half(snap()),
        "snapshot emptied": lambda: snap().write_bytes(b""),
        "snapshot byte flipped": lambda: flip(snap()),
        "snapshot with garbage appended": lambda: snap().write_bytes(
            snap().read_bytes() + b"\x00garbage" * 100),
        "snapshot deleted": lambda: snap().unlink(),
        "manifest truncated": lambda: truncate_half(manifest),
        "manifest deleted": lambda: manifest.unlink(),
    }


@pytest.mark.slow
def test_torn_or_truncated_snapshot(tmp_path: Path, figure: Any) -> None:
    rng = np.random.default_rng(33)
    pristine = tmp_path / "pristine"
    proc = index_process(tmp_path, pristine)
    proc.start(90)
    vectors, batches, _ = _fill(proc, rng, 20, pristine / "items.sqlite3-wal")
    with IndexAPI(proc.url) as api:
        assert api.snapshot().status_code == 200
        more = unit_vectors(15, rng)  # rows after the snapshot: replayed at start
        api.add([f"late{i}" for i in range(15)], more)
        vectors.update({f"late{i}": v for i, v in enumerate(more)})
    proc.kill()

    variants = _corruptions(pristine)
    procs: dict[str, ServiceProcess] = {}
    for n, name in enumerate(variants):
        data = tmp_path / f"v{n}"
        shutil.copytree(pristine, data)
        _corruptions(data)[name]()
        procs[name] = index_process(tmp_path, data, f"v{n}")
    outcomes: dict[str, Any] = {}
    try:
        # Start them side by side: each start is mostly waiting on imports.
        with ThreadPoolExecutor(4) as pool:
            started = {name: pool.submit(p.start, 120) for name, p in procs.items()}
            errors = {}
            for name, future in started.items():
                try:
                    future.result()
                except (RuntimeError, TimeoutError) as exc:
                    errors[name] = str(exc)[-1500:]
        for name, p in procs.items():
            if name in errors:
                outcomes[name] = {"started": False, "error": errors[name]}
                continue
            with IndexAPI(p.url) as api:
                stats = api.stats()
                problems = _check(api, vectors, list(vectors))
            load = stats.get("load") or {}
            said = load.get("snapshot_error")
            outcomes[name] = {"started": True, "problems": problems, "said": said,
                              "in_log": "snapshot" in p.log_tail(20000).lower()}
    finally:
        for p in procs.values():
            p.kill()
    figure(variants=len(variants), failed_starts=len(errors),
           explained=sum(1 for o in outcomes.values() if o.get("said")), outcomes=outcomes)
    assert not errors, errors
    bad = {n: o for n, o in outcomes.items() if o["problems"]}
    assert not bad, bad
    silent = [n for n, o in outcomes.items()
              if n != "manifest deleted" and not (o["said"] and o["in_log"])]
    assert not silent, f"corrupt snapshots used or dropped without a word: {silent}"


@pytest.mark.slow
def test_snapshot_newer_than_the_torn_store(tmp_path: Path, figure: Any) -> None:
    """A snapshot written after the last transaction, whose log tail is then torn: the
    snapshot holds rows the store no longer has. Using it would serve phantoms."""
    rng = np.random.default_rng(34)
    data = tmp_path / "data"
    wal = data / "items.sqlite3-wal"
    proc = index_process(tmp_path, data)
    proc.start(90)
    try:
        vectors, batches, sizes = _fill(proc, rng, 12, wal)
        with IndexAPI(proc.url) as api:
            assert api.snapshot().status_code == 200
        proc.kill()
        assert wal.stat().st_size == sizes[-1], "a snapshot must not touch the store's log"
        with open(wal, "r+b") as fh:
            fh.truncate(sizes[-2] + (sizes[-1] - sizes[-2]) // 2)
        proc.start(90)
        with IndexAPI(proc.url) as api:
            committed = [k for b in batches[:-1] for k in b]
            problems = _check(api, {k: vectors[k] for k in committed}, committed)
            stats = api.stats()
            # Phantoms: the torn batch's vectors must not be found under any id.
            torn = np.vstack([vectors[k] for k in batches[-1]])
            hits = api.search(torn, k=1)
            phantom = sum(1 for h, k in zip(hits, batches[-1], strict=True)
                          if h and h[0]["score"] > 0.99 and api.missing([k]))
            # Life goes on past the old snapshot's sequence number (new rows may even take
            # the torn rows' ids), then another crash: the stale snapshot on disk must still
            # not be trusted.
            later = unit_vectors(2 * BATCH, rng)
            later_keys = [f"later{i}" for i in range(2 * BATCH)]
            api.add(later_keys, later)
        proc.kill()
        proc.start(90)
        with IndexAPI(proc.url) as api:
            vectors.update(zip(later_keys, later, strict=True))
            committed += later_keys
            problems_later = _check(api, {k: vectors[k] for k in committed}, committed)
            stats_later = api.stats()
            hits = api.search(torn, k=1)
            phantom_later = sum(1 for h, k in zip(hits, batches[-1], strict=True)
                                if h and h[0]["score"] > 0.99 and api.missing([k]))
    finally:
        proc.kill()
    said = (stats.get("load") or {}).get("snapshot_error")
    figure(problems=problems, phantom=phantom, said=said, problems_after_more_writes=(
        problems_later), phantom_after_more_writes=phantom_later,
        load_after_more_writes=stats_later.get("load"))
    assert not problems, problems
    assert phantom == 0
    assert stats["ntotal"] == stats["count"]
    assert not problems_later, (problems_later, stats_later.get("load"))
    assert phantom_later == 0, stats_later.get("load")
