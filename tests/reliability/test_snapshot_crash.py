"""RELIABILITY.md #2: kill -9 inside a snapshot save, many trials.

An index of 20,000 vectors (a snapshot of a few megabytes, long enough to be caught in the
middle). Each trial adds rows, asks for a snapshot and SIGKILLs the service at a random moment
spread over the save's measured duration, then starts it again. Figures: failed starts 0;
every start loaded a whole snapshot (the old or the new one, never a torn one: no snapshot
error in its load report), then replayed the rest; all committed rows present, Faiss count
== live rows, each probed vector finds itself.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from glimpse.contracts.vectors import encode_vector
from tests.reliability._services import IndexAPI, index_process, unit_vectors

TRIALS = 10
PRELOAD = 12_000


def _add_b64(api: IndexAPI, prefix: str, vectors: np.ndarray) -> None:
    for s in range(0, len(vectors), 2000):
        part = vectors[s : s + 2000]
        r = api.add_raw([{"vector": encode_vector(v), "key": f"{prefix}{s + i}", "path": "p"}
                         for i, v in enumerate(part)])
        assert r.status_code == 200, r.text


def _ask_snapshot(url: str) -> None:
    try:
        httpx.post(url + "/v1/index/snapshot", timeout=60)
    except httpx.HTTPError:
        pass  # killed while it answered: that is the point


@pytest.mark.slow
@pytest.mark.timeout(900)  # restarts take seconds each on a loaded machine
def test_kill9_inside_snapshot_saves(tmp_path: Path, figure: Any) -> None:
    rng = np.random.default_rng(2)
    chance = random.Random(2)
    proc = index_process(tmp_path, tmp_path / "data")
    proc.start(90)
    vectors = {}
    preload = unit_vectors(PRELOAD, rng)
    with IndexAPI(proc.url) as api:
        _add_b64(api, "pre", preload)
        vectors.update({f"pre{i}": v for i, v in enumerate(preload)})
        started = time.monotonic()
        first = api.snapshot()
        save_s = time.monotonic() - started
        assert first.status_code == 200, first.text
    loaded = {"old": 0, "new": 0}
    failed_starts: list[str] = []
    problems: list[str] = []
    leftovers = 0
    for trial in range(TRIALS):
        with IndexAPI(proc.url) as api:
            fresh = unit_vectors(50, rng)
            _add_b64(api, f"t{trial}-", fresh)
            vectors.update({f"t{trial}-{i}": v for i, v in enumerate(fresh)})
            before = api.stats()
            if trial % 3 == 0:  # re-measure an uninterrupted save on this (busy) machine
                started = time.monotonic()
                assert api.snapshot().status_code == 200
                save_s = max(save_s, time.monotonic() - started)
                fresh = unit_vectors(10, rng)
                _add_b64(api, f"u{trial}-", fresh)
                vectors.update({f"u{trial}-{i}": v for i, v in enumerate(fresh)})
                before = api.stats()
        asker = threading.Thread(target=_ask_snapshot, args=(proc.url,))
        asker.start()
        # Spread over the whole save as last measured (the call, the serialisation, the
        # writes, the fsyncs and the renames), a little past its end.
        time.sleep(chance.uniform(0.0, 2.5 * save_s))
        proc.kill()
        asker.join(60)
        leftovers += len([p for p in (tmp_path / "data").rglob("*.tmp")])
        try:
            proc.start(90)
        except (RuntimeError, TimeoutError) as exc:
            failed_starts.append(str(exc)[-1500:])
            proc.kill()
            proc.start(90)
        with IndexAPI(proc.url) as api:
            after = api.stats()
            load = after.get("load") or {}
            if "snapshot_error" in load:
                problems.append(f"trial {trial}: {load['snapshot_error']}")
            if after["snapshot_seq"] == before["seq"]:
                loaded["new"] += 1
            elif after["snapshot_seq"] == before["snapshot_seq"]:
                loaded["old"] += 1
            else:
                problems.append(f"trial {trial}: snapshot seq {after['snapshot_seq']} is neither "
                                f"{before['snapshot_seq']} nor {before['seq']}")
            if after["count"] != len(vectors) or after["ntotal"] != after["count"]:
                problems.append(f"trial {trial}: {after['count']} rows, ntotal "
                                f"{after['ntotal']}, expected {len(vectors)}")
            keys = list(vectors)
            probe = [keys[i] for i in rng.integers(0, len(keys), 50)] + keys[-50:]
            hits = api.search(np.vstack([vectors[k] for k in probe]), k=1)
            found = [api.item(h[0]["id"]).json().get("key") if h else None for h in hits[:5]]
            wrong = [k for k, h in zip(probe, hits, strict=True) if not h or h[0]["score"] < 0.99]
            if wrong or found != probe[:5]:
                problems.append(f"trial {trial}: {len(wrong)} probes not found, {found}")
    proc.kill()
    figure(trials=TRIALS, failed_starts=len(failed_starts), loaded_old=loaded["old"],
           loaded_new=loaded["new"], snapshot_save_s=round(save_s, 3), problems=len(problems),
           tmp_files_left_at_kill=leftovers)
    assert not failed_starts, failed_starts[0]
    assert not problems, problems
