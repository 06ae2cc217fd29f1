"""RELIABILITY.md #1: kill -9 the index service at random moments while ingesting.

Two drivers, both against real processes and real SIGKILLs:

- straight at the index (POST /v1/items in small batches, a client that retries every batch
  until it is acknowledged, some batches re-sending earlier keys), at least 20 kills;
- through the gateway with glimpse/cli/ingest/ doing the retrying, at least 20 kills of the
  index behind it; every acknowledgement the script receives is recorded by its transport.

Figures: acknowledged-but-missing 0, phantom 0, duplicate keys 0, Faiss count == live rows,
failed starts 0; plus the number of kills and the restart times.

The gateway driver runs the gateway as two worker processes, then checks that every
acknowledged item's original is whole, and that no original file is left that no item names
(each add the index died under was re-sent by the script, and reused its file).
"""

from __future__ import annotations

import hashlib
import statistics
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from glimpse.gateway.media import MediaStore
from tests.reliability._crash import Killer, Ledger, add_with_retries, audit_index, audit_summary
from tests.reliability._services import IndexAPI, index_process, unit_vectors
from tests.reliability.conftest import API_KEY
from tests.support.procs import ServiceProcess

KILLS = 20


def _restart_figures(killer: Killer) -> dict[str, Any]:
    times = killer.restart_s or [0.0]
    return {
        "kills": killer.kills,
        "failed_starts": len(killer.failed_starts),
        "restart_median_s": round(statistics.median(times), 2),
        "restart_max_s": round(max(times), 2),
    }


@pytest.mark.slow
@pytest.mark.timeout(900)  # restarts take seconds each on a loaded machine
def test_kill9_while_adding_straight_to_the_index(tmp_path: Path, figure: Any) -> None:
    rng = np.random.default_rng(1)
    # Snapshots every few hundred writes, so kills also land in saves and in replays.
    proc = index_process(tmp_path, tmp_path / "data", INDEX_SNAPSHOT_EVERY_WRITES="400")
    proc.start(90)
    ledger = Ledger()
    killer = Killer(proc, kills=KILLS, min_s=0.05, max_s=1.2, seed=1).start()
    batch, n = 10, 0
    try:
        with httpx.Client(base_url=proc.url, timeout=10) as http:
            # Until the killer has done its kills (the index now takes 30,000 keys before a
            # slow killer is through: 17 of 20 once); the cap only bounds a stuck run.
            while (not killer.done.is_set() or n < 2000) and n < 150_000:
                keys = [f"k{n + i:07d}" for i in range(batch)]
                vectors = unit_vectors(batch, rng)
                if n and rng.random() < 0.15:  # re-send 5 earlier keys: an idempotent re-add
                    again = [f"k{int(j):07d}" for j in rng.integers(0, n, 5)]
                    keys += again
                    vectors = np.vstack([vectors, [ledger.sent[k] for k in again]])
                add_with_retries(http, ledger, keys, vectors)
                n += batch
    finally:
        killer.stop()
    assert not killer.failed_starts, killer.failed_starts[0]
    # One more crash and recovery right after the last acknowledgement.
    proc.kill()
    proc.start(90)
    try:
        with IndexAPI(proc.url) as api:
            audit = audit_index(api, ledger, path_of_key=lambda k: f"crash/{k}.jpg",
                                store_path=tmp_path / "data" / "items.sqlite3")
    finally:
        proc.kill()
    figure(**audit_summary(audit), **_restart_figures(killer), client_errors=len(ledger.errors))
    assert killer.kills >= KILLS
    assert not ledger.errors, ledger.errors[:3]
    assert audit.faiss_count is not None, "the index's /v1/stats names no Faiss count"
    assert audit.ok(), (audit_summary(audit), audit.detail, proc.log_tail())


class RecordingTransport(httpx.HTTPTransport):
    """The ingest script's transport, noting every item an /ingest answer acknowledged."""

    def __init__(self, ledger: Ledger) -> None:
        super().__init__()
        self.ledger = ledger
        self.answers = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path == "/ingest" and response.status_code == 200:
            response.read()
            self.answers += 1
            for item in response.json()["items"]:
                if item["status"] in ("added", "exists"):
                    self.ledger.record_ack(item["sha256"], int(item["id"]))
        return response


def _check_originals(
    media_dir: Path, images: Path, path_of: dict[str, str], acked: dict[str, int]
) -> dict[str, Any]:
    """Read each acknowledged item's original from the media store, and count the original
    files whose key no acknowledged item has."""
    media = MediaStore(media_dir)
    unreadable = []
    for key in acked:
        path = media.original_path(key)
        if not path.is_file() or path.read_bytes() != (images / path_of[key]).read_bytes():
            unreadable.append(path_of[key])
    files = [p.name for p in (media_dir / "originals").rglob("*") if p.is_file()]
    return {
        "originals_checked": len(acked),
        "originals_unreadable": len(unreadable),
        "originals_unreadable_first": unreadable[:3],
        "original_files": len(files),
        "original_files_no_item_names": sum(name not in acked for name in files),
    }


def _write_images(folder: Path, start: int, count: int, rng: np.random.Generator) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:06d}.png")


@pytest.mark.slow
@pytest.mark.timeout(900)  # restarts take seconds each on a loaded machine
def test_kill9_index_behind_the_gateway_while_ingest_script_retries(
    stack: Any, tmp_path: Path, figure: Any
) -> None:
    from glimpse.cli.ingest import RetryPolicy, ingest

    rng = np.random.default_rng(2)
    index = index_process(tmp_path, tmp_path / "index-data", INDEX_SNAPSHOT_EVERY_WRITES="300")
    index.start(90)
    gateway = ServiceProcess("glimpse.gateway.main", {
        "GATEWAY_ENCODER_URL": stack.encoder.url,
        "GATEWAY_INDEX_URL": index.url,
        "GATEWAY_MEDIA_DIR": str(tmp_path / "media"),
        "GATEWAY_API_KEY": API_KEY,
        "GATEWAY_FSYNC": "false",
        "WEB_CONCURRENCY": "2",  # uvicorn --workers 2, as GATEWAY_WORKERS=2 runs it
    }, tmp_path / "gateway.log").start(90, wait_ready=False)
    ledger = Ledger()
    transport = RecordingTransport(ledger)
    retry = RetryPolicy(attempts=200, base_s=0.05, max_s=0.5)
    images = tmp_path / "images"
    killer = Killer(index, kills=KILLS, min_s=0.2, max_s=1.5, seed=2).start()
    made, runs = 0, 0
    summaries = []
    stop = threading.Event()
    try:
        # Rounds go on until the killer has done its kills; the cap only bounds a killer that
        # hangs (at 6,000 a faster gateway finished its images after 17 kills of 20).
        while (not killer.done.is_set() or made < 1000) and made < 15_000:
            _write_images(images / f"round{runs:02d}", made, 300, rng)
            made += 300
            runs += 1
            summary = ingest([images], gateway.url, API_KEY, batch_size=16, concurrency=2,
                             retry=retry, timeout_s=30, transport=transport, stop=stop,
                             report_path=tmp_path / "report.jsonl", retry_rejected=True)
            summaries.append(summary.to_dict())
    finally:
        killer.stop()
    # The script, re-run with the index up, must find nothing left to do.
    final = ingest([images], gateway.url, API_KEY, retry=retry, transport=transport,
                   report_path=tmp_path / "report.jsonl", retry_rejected=True)
    try:
        assert not killer.failed_starts, killer.failed_starts[0]
        with IndexAPI(index.url) as api:
            # Every file's key, with the vector the index holds for it (the client never saw
            # the vectors: the encoder made them).
            never_acked, no_vector = [], []
            path_of: dict[str, str] = {}
            for path in sorted(images.rglob("*.png")):
                key = hashlib.sha256(path.read_bytes()).hexdigest()
                path_of[key] = path.relative_to(images).as_posix()
                item_id = ledger.acked.get(key)
                if item_id is None:
                    never_acked.append(path.name)
                    continue
                r = api.http.get(f"/v1/items/{item_id}/vector")
                if r.status_code != 200:
                    no_vector.append(f"{path.name}: {r.status_code}")
                    continue
                ledger.sent[key] = np.asarray(r.json()["vector"], dtype=np.float32)
            audit = audit_index(api, ledger, path_of_key=path_of.__getitem__,
                                store_path=tmp_path / "index-data" / "items.sqlite3")
            originals = _check_originals(tmp_path / "media", images, path_of, ledger.acked)
    finally:
        gateway.stop()
        index.kill()
    figure(**audit_summary(audit), **_restart_figures(killer), images=made,
           ingest_runs=runs, final_run=final.to_dict(), answers_recorded=transport.answers,
           **originals)
    assert killer.kills >= KILLS
    assert final.ok and final.added == 0, final.to_dict(with_failures=True)
    assert not never_acked, never_acked[:5]
    assert not no_vector, no_vector[:5]
    assert audit.acked == made, (audit.acked, made)
    assert audit.faiss_count is not None, "the index's /v1/stats names no Faiss count"
    assert audit.ok(), (audit_summary(audit), audit.detail, index.log_tail())
    assert originals["originals_unreadable"] == 0, originals
    assert originals["original_files_no_item_names"] == 0, originals
