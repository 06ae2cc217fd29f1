"""The crash-loop driver: a client that records every acknowledgement, a killer that sends
SIGKILL to a real service process at random moments and starts it again, and the audit that
compares what was acknowledged with what the service holds afterwards.

Modelled on Qdrant's crasher: the figures are acknowledged-but-missing, phantom and duplicate
items, all of which must be zero, and the Faiss count must equal the live rows.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.reliability._services import IndexAPI, faiss_count
from tests.support.procs import ServiceProcess

RETRYABLE = {429, 502, 503, 504}


@dataclass
class Ledger:
    """What the client sent and what the service acknowledged (thread-safe)."""

    sent: dict[str, np.ndarray] = field(default_factory=dict)
    acked: dict[str, int] = field(default_factory=dict)
    #: a key acknowledged under two different ids (a retry that made a second row)
    id_changes: list[tuple[str, int, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record_sent(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        with self.lock:
            for key, vec in zip(keys, vectors, strict=True):
                self.sent[key] = vec

    def record_ack(self, key: str, item_id: int) -> None:
        with self.lock:
            before = self.acked.get(key)
            if before is not None and before != item_id:
                self.id_changes.append((key, before, item_id))
            self.acked[key] = item_id


class Killer:
    """SIGKILLs ``proc`` every ``uniform(min_s, max_s)`` seconds after it is ready, then starts
    it again (same port, same data). Counts kills, failed starts and restart times."""

    def __init__(
        self,
        proc: ServiceProcess,
        *,
        kills: int,
        min_s: float,
        max_s: float,
        seed: int = 0,
        start_timeout: float = 60.0,
        on_restart: Callable[[], None] | None = None,
    ) -> None:
        self.proc = proc
        self.target = kills
        self.min_s, self.max_s = min_s, max_s
        self.rng = random.Random(seed)
        self.start_timeout = start_timeout
        self.on_restart = on_restart
        self.kills = 0
        self.failed_starts: list[str] = []
        self.restart_s: list[float] = []
        self.done = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="killer", daemon=True)

    def _run(self) -> None:
        try:
            while self.kills < self.target and not self._stop.is_set():
                if self._stop.wait(self.rng.uniform(self.min_s, self.max_s)):
                    break
                self.proc.kill()
                self.kills += 1
                started = time.monotonic()
                while True:
                    try:
                        self.proc.start(self.start_timeout)
                        break
                    except (RuntimeError, TimeoutError) as exc:
                        self.failed_starts.append(str(exc)[-2000:])
                        self.proc.kill()
                        if len(self.failed_starts) > 3:
                            return
                self.restart_s.append(time.monotonic() - started)
                if self.on_restart is not None:
                    self.on_restart()
        finally:
            self.done.set()

    def start(self) -> Killer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.start_timeout * 5)


def add_with_retries(
    http: httpx.Client,
    ledger: Ledger,
    keys: Sequence[str],
    vectors: np.ndarray,
    *,
    give_up_s: float = 120.0,
) -> None:
    """POST one batch until it is acknowledged, retrying connection errors and 5xx (as the
    ingest script does); every acknowledgement goes into the ledger."""
    items = [
        {"vector": v.tolist(), "key": k, "path": f"crash/{k}.jpg"}
        for k, v in zip(keys, vectors, strict=True)
    ]
    ledger.record_sent(keys, vectors)
    deadline = time.monotonic() + give_up_s
    delay = 0.02
    while True:
        try:
            r = http.post("/v1/items", json={"items": items})
        except httpx.TransportError:
            r = None
        if r is not None and r.status_code == 200:
            for item in r.json()["items"]:
                ledger.record_ack(item["key"], int(item["id"]))
            return
        if r is not None and r.status_code not in RETRYABLE:
            ledger.errors.append(f"{r.status_code}: {r.text[:300]}")
            return
        if time.monotonic() > deadline:
            ledger.errors.append(f"batch never acknowledged in {give_up_s}s")
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


@dataclass
class Audit:
    """The crash test's figures (every one must be zero, and faiss_count == live_rows)."""

    sent: int
    acked: int
    acked_missing: int
    wrong_id: int
    phantom: int
    duplicates: int
    live_rows: int
    faiss_count: int | None
    not_found_by_search: int
    detail: list[str] = field(default_factory=list)

    def ok(self) -> bool:
        return (
            self.acked_missing == 0
            and self.wrong_id == 0
            and self.phantom == 0
            and self.duplicates == 0
            and self.not_found_by_search == 0
            and (self.faiss_count is None or self.faiss_count == self.live_rows)
        )


def audit_index(
    api: IndexAPI,
    ledger: Ledger,
    *,
    batch: int = 500,
    path_of_key: Callable[[str], str] | None = None,
    store_path: Path | None = None,
) -> Audit:
    """Compare the ledger with the service through its HTTP API only.

    - acknowledged-but-missing: acked keys /v1/keys/missing reports, or whose acked id no
      longer holds that key (GET /v1/items/{id});
    - duplicates: live rows beyond one per distinct key the client sent;
    - phantom: a Faiss (non-exact) hit whose id is no live item the client sent, or a stored
      vector that the index cannot find (its nearest neighbour is not itself);
    - the Faiss count (when /v1/stats names it) against the live rows.

    With ``path_of_key`` (the path each key was stored under), a hit's path proves which key
    its id holds, which spares one GET /v1/items/{id} per acknowledged key.

    With ``store_path`` (the SQLite file, docs/architecture.md), the live rows and duplicate keys
    are also counted in the store itself, read-only, as a check independent of the service.
    """
    detail: list[str] = []
    keys = list(ledger.sent)
    missing = set(api.missing(keys))
    present = [k for k in keys if k not in missing]
    acked_missing = [k for k in ledger.acked if k in missing]
    detail += [f"acked but missing: {k} (id {ledger.acked[k]})" for k in acked_missing[:5]]

    id_of_key: dict[str, int] = {}
    wrong_id = 0
    if path_of_key is not None:
        confirmed = _ids_by_path(api, ledger, [k for k in ledger.acked if k not in missing],
                                 path_of_key, batch)
    else:
        confirmed = {}
    for key, item_id in ledger.acked.items():
        if key in missing:
            continue
        if confirmed.get(key) == item_id:
            id_of_key[key] = item_id
            continue
        r = api.item(item_id)
        if r.status_code != 200 or r.json().get("key") != key:
            wrong_id += 1
            if wrong_id <= 5:
                detail.append(f"acked id {item_id} of {key}: {r.status_code} {r.text[:200]}")
        else:
            id_of_key[key] = item_id
    wrong_id += len(ledger.id_changes)
    detail += [f"key {k} acknowledged as {a} then {b}" for k, a, b in ledger.id_changes[:5]]

    stats = api.stats()
    live_rows = int(stats["count"])
    duplicates = max(0, live_rows - len(present))
    if duplicates:
        detail.append(f"{live_rows} live rows for {len(present)} distinct keys present")
    if store_path is not None:
        stored_rows, stored_dups = _count_store(store_path)
        if stored_rows != live_rows:
            detail.append(f"the store holds {stored_rows} live rows, /v1/stats says {live_rows}")
            live_rows = stored_rows
        duplicates = max(duplicates, stored_dups, stored_rows - len(present))

    # Every present key: its vector's nearest neighbour in the (non-exact) index is its own
    # row; any hit id that is not a present item is a phantom.
    live_ids: set[int] = set(id_of_key.values())
    not_found = 0
    phantom = 0
    unknown: set[int] = set()
    for start in range(0, len(present), batch):
        part = present[start : start + batch]
        vectors = np.vstack([ledger.sent[k] for k in part])
        results = api.search(vectors, k=3)
        for key, hits in zip(part, results, strict=True):
            ids = [int(h["id"]) for h in hits]
            if not ids or (key in id_of_key and ids[0] != id_of_key[key]) or ids[0] < 0:
                not_found += 1
                if not_found <= 5:
                    detail.append(f"{key}: nearest hits {ids}, expected {id_of_key.get(key)}")
            unknown.update(i for i in ids if i not in live_ids)
    # Hits for keys sent but never acknowledged (stored anyway: an ack lost in the crash) are
    # live items too; resolve the unknown ids through the store before calling them phantoms.
    for item_id in sorted(unknown):
        r = api.item(item_id)
        if r.status_code != 200 or r.json().get("key") not in ledger.sent:
            phantom += 1
            if phantom <= 5:
                detail.append(f"phantom id {item_id}: {r.status_code} {r.text[:200]}")
    return Audit(
        sent=len(keys),
        acked=len(ledger.acked),
        acked_missing=len(acked_missing),
        wrong_id=wrong_id,
        phantom=phantom,
        duplicates=duplicates,
        live_rows=live_rows,
        faiss_count=faiss_count(stats),
        not_found_by_search=not_found,
        detail=detail,
    )


def _count_store(path: Path) -> tuple[int, int]:
    """(live rows, live rows beyond the first per key) read straight from the SQLite store."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        live = conn.execute("SELECT COUNT(*) FROM items WHERE deleted = 0").fetchone()[0]
        dups = conn.execute(
            "SELECT COALESCE(SUM(n - 1), 0) FROM (SELECT COUNT(*) AS n FROM items "
            "WHERE deleted = 0 GROUP BY key HAVING n > 1)"
        ).fetchone()[0]
    finally:
        conn.close()
    return int(live), int(dups)


def _ids_by_path(
    api: IndexAPI, ledger: Ledger, keys: list[str], path_of_key: Callable[[str], str], batch: int
) -> dict[str, int]:
    """key -> id, read from the hits of an exact search for each key's own vector (the hit
    whose path is the key's path names the id that holds it)."""
    out: dict[str, int] = {}
    for start in range(0, len(keys), batch):
        part = keys[start : start + batch]
        results = api.search(np.vstack([ledger.sent[k] for k in part]), k=3, exact=True)
        for key, hits in zip(part, results, strict=True):
            for hit in hits:
                if hit["path"] == path_of_key(key):
                    out[key] = int(hit["id"])
                    break
    return out


def audit_summary(audit: Audit) -> dict[str, Any]:
    out = {k: v for k, v in audit.__dict__.items() if k != "detail"}
    return out
