"""RELIABILITY.md #5: the disk fills up during ingest (a small tmpfs as the data folder).

The index's data folder, and in a second test the gateway's media folder, live on a tmpfs a
few megabytes large that a filler file brings close to full. Adds go on until the disk
refuses them. Figures: every answer was an acknowledgement or a 507/503 error (never a 500);
nothing acknowledged is missing, now or after a restart; reads keep working while the disk is
full; once the filler is removed, ingest resumes without restarting anything.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.reliability._crash import Ledger, audit_index, audit_summary
from tests.reliability._images import gradient, png_bytes
from tests.reliability._services import IndexAPI, index_process, unit_vectors
from tests.reliability.conftest import API_KEY
from tests.support.procs import ServiceProcess

FULL = (503, 507)


def _fill(folder: Path, leave: int) -> Path:
    """Write a filler file so that about ``leave`` bytes stay free on ``folder``'s disk."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    filler = folder / "filler.bin"
    with open(filler, "wb") as fh:
        remaining = max(0, free - leave)
        block = b"\0" * (1 << 20)
        while remaining > 0:
            try:
                fh.write(block[: min(len(block), remaining)])
            except OSError:
                break
            remaining -= min(len(block), remaining)
    return filler


@pytest.mark.slow
def test_index_on_a_full_disk(tmp_path: Path, tmpfs: Any, figure: Any) -> None:
    disk = tmpfs("index-disk", "8m")
    data = disk / "data"
    proc = index_process(tmp_path, data)
    proc.start(90)
    rng = np.random.default_rng(5)
    ledger = Ledger()
    answers: dict[int, int] = {}
    errored_keys: list[str] = []
    try:
        with IndexAPI(proc.url) as api:
            warm = unit_vectors(1, rng)
            ledger.record_sent(["warm"], warm)
            ledger.record_ack("warm", api.add(["warm"], warm)[0]["id"])
            snap = api.snapshot()
            assert snap.status_code == 200, snap.text
            filler = _fill(disk, leave=256 * 1024)
            full_seen = 0
            n = 0
            while full_seen < 5 and n < 200_000:
                keys = [f"d{n + i}" for i in range(50)]
                vectors = unit_vectors(50, rng)
                ledger.record_sent(keys, vectors)
                r = api.add_raw([{"vector": v.tolist(), "key": k, "path": k}
                                 for k, v in zip(keys, vectors, strict=True)])
                answers[r.status_code] = answers.get(r.status_code, 0) + 1
                n += 50
                if r.status_code == 200:
                    for item in r.json()["items"]:
                        ledger.record_ack(item["key"], item["id"])
                else:
                    assert r.status_code in FULL, (r.status_code, r.text, proc.log_tail())
                    assert r.json()["error_type"] in ("insufficient_storage", "not_ready",
                                                      "upstream_unavailable"), r.text
                    errored_keys += keys
                    full_seen += 1
            assert full_seen, "the disk never filled"
            # Reads still work on a full disk; a snapshot fails cleanly.
            assert api.search_raw(unit_vectors(2, rng), k=5).status_code == 200
            snap_full = api.snapshot()
            assert snap_full.status_code in (200, *FULL), snap_full.text
            errored_stored = len(errored_keys) - len(api.missing(errored_keys))
            acked_missing_while_full = len(api.missing(list(ledger.acked)))
            # Space returns: ingest resumes without a restart.
            filler.unlink()
            keys = [f"after{i}" for i in range(50)]
            vectors = unit_vectors(50, rng)
            ledger.record_sent(keys, vectors)
            r = api.add_raw([{"vector": v.tolist(), "key": k, "path": k}
                             for k, v in zip(keys, vectors, strict=True)])
            assert r.status_code == 200, (r.status_code, r.text)
            for item in r.json()["items"]:
                ledger.record_ack(item["key"], item["id"])
        # And the acknowledged rows survive a crash (the store was written on a full disk).
        proc.kill()
        proc.start(90)
        with IndexAPI(proc.url) as api:
            for key in errored_keys:  # errored keys: the client would retry them; drop them
                ledger.sent.pop(key, None)
            audit = audit_index(api, ledger, store_path=data / "items.sqlite3")
    finally:
        proc.kill()
    figure(answers=answers, acked_while_filling=len(ledger.acked), acked_missing_while_full=(
        acked_missing_while_full), errored_but_stored=errored_stored,
        snapshot_on_full_disk=snap_full.status_code, **audit_summary(audit))
    assert 500 not in answers
    assert acked_missing_while_full == 0
    assert audit.ok(), (audit_summary(audit), audit.detail)


@pytest.mark.slow
def test_gateway_media_on_a_full_disk(stack: Any, tmp_path: Path, tmpfs: Any,
                                      figure: Any) -> None:
    disk = tmpfs("media-disk", "4m")
    index = index_process(tmp_path, tmp_path / "index-data").start(90)
    gateway = ServiceProcess("glimpse.gateway.main", {
        "GATEWAY_ENCODER_URL": stack.encoder.url,
        "GATEWAY_INDEX_URL": index.url,
        "GATEWAY_MEDIA_DIR": str(disk / "media"),
        "GATEWAY_API_KEY": API_KEY,
        "WEB_CONCURRENCY": "2",  # uvicorn --workers 2, as GATEWAY_WORKERS=2 runs it
    }, tmp_path / "gateway.log").start(90)
    statuses: dict[str, int] = {}
    added: dict[int, bytes] = {}
    refused = 0
    wrong_answers: list[str] = []
    try:
        with httpx.Client(base_url=gateway.url, timeout=60,
                          headers={"Authorization": f"Bearer {API_KEY}"}) as gw:
            filler = _fill(disk, leave=300 * 1024)
            i = 0
            while refused < 3 and i < 400:
                # Noisy pictures do not compress: each one costs its size on the disk.
                files = []
                for _ in range(4):
                    pixels = np.random.default_rng(i).integers(0, 256, (128, 128, 3), np.uint8)
                    files.append(png_bytes(Image.fromarray(pixels)))
                    i += 1
                r = gw.post("/ingest", files=[("files", (f"f/{i}-{j}.png", d, "image/png"))
                                              for j, d in enumerate(files)])
                key = str(r.status_code)
                if r.status_code == 200:
                    for item, data in zip(r.json()["items"], files, strict=True):
                        key = f"200 {item['status']} {item.get('error_type')}"
                        statuses[key] = statuses.get(key, 0) + 1
                        if item["status"] == "added":
                            added[item["id"]] = data
                        elif item["status"] == "rejected":
                            if item["error_type"] != "insufficient_storage":
                                wrong_answers.append(str(item))
                            refused += 1
                    continue
                statuses[key] = statuses.get(key, 0) + 1
                if r.status_code not in FULL:
                    wrong_answers.append(f"{r.status_code} {r.text[:300]}")
                refused += 1
            assert refused, "the media disk never filled"
            lost = [i for i, data in added.items()
                    if gw.get(f"/images/{i}").content != data]
            filler.unlink()
            again = gw.post("/ingest", files=[("files", (
                "after.png", png_bytes(gradient(seed=4242)), "image/png"))])
            resumed = again.status_code == 200 and again.json()["items"][0]["status"] == "added"
    finally:
        gateway.stop()
        index.kill()
    figure(answers=statuses, added=len(added), added_but_media_lost=len(lost),
           resumed_after_space_returned=resumed, wrong_answers=len(wrong_answers))
    assert not wrong_answers, (wrong_answers[:3], gateway.log_tail(3000))
    assert not lost, lost[:5]
    assert resumed, again.text
