"""Snapshots: atomic write with a manifest, and every way a snapshot on disk can be unusable."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from glimpse.index import persistence
from glimpse.index.config import Settings
from glimpse.index.live import build_empty
from glimpse.index.service import IndexService
from glimpse.index.store import NewItem
from tests.unit.index.helpers import clustered

DIM = 16


def _flat(n: int) -> faiss.Index:
    index = build_empty("Flat", DIM)
    index.add_with_ids(clustered(n, DIM), np.arange(1, n + 1, dtype=np.int64))
    return index


def _manifest(seq: int) -> persistence.Manifest:
    return persistence.Manifest(seq=seq, file="", bytes=0, sha256="", dim=DIM, factory="Flat")


def test_save_then_load_round_trips_and_keeps_one_file(tmp_path: Path) -> None:
    persistence.save(tmp_path, faiss.serialize_index(_flat(10)), _manifest(10))
    saved = persistence.save(tmp_path, faiss.serialize_index(_flat(20)), _manifest(20))
    loaded = persistence.load(tmp_path, DIM)
    assert loaded is not None
    index, manifest = loaded
    assert index.ntotal == 20 and manifest.seq == 20 and manifest.file == saved.file
    assert [p.name for p in (tmp_path / "snapshots").iterdir()] == [Path(saved.file).name]
    assert not list(tmp_path.glob("*.tmp"))


def test_no_snapshot_is_none(tmp_path: Path) -> None:
    assert persistence.load(tmp_path, DIM) is None


@pytest.mark.parametrize("damage", ["truncate", "flip", "manifest", "missing", "dim"])
def test_unusable_snapshots_raise_with_the_reason(tmp_path: Path, damage: str) -> None:
    saved = persistence.save(tmp_path, faiss.serialize_index(_flat(10)), _manifest(10))
    snap = tmp_path / saved.file
    data = snap.read_bytes()
    dim = DIM
    if damage == "truncate":
        snap.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        snap.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    elif damage == "manifest":
        (tmp_path / persistence.MANIFEST).write_text('{"seq": 3, "fi')
    elif damage == "missing":
        snap.unlink()
    else:
        dim = DIM * 2
    with pytest.raises(persistence.CorruptSnapshot):
        persistence.load(tmp_path, dim)


def _service(tmp_path: Path) -> IndexService:
    service = IndexService(Settings(data_dir=tmp_path, dim=DIM, snapshot_interval_s=0,
                                    snapshot_every_writes=0, train_threshold=10**6))
    service.open()
    return service


def _add(service: IndexService, n: int, start: int = 0) -> None:
    x = clustered(n, DIM, seed=start).astype(np.float16)
    service.add([NewItem(f"k{start + i}", "p", {}, x[i]) for i in range(n)])


def test_start_replays_rows_after_the_snapshot(tmp_path: Path) -> None:
    service = _service(tmp_path)
    _add(service, 30)
    service.snapshot()
    _add(service, 10, start=100)
    assert service.delete(5)
    # A crash: no snapshot at close.
    service.snapshot_seq = 10**9
    service.close()
    again = _service(tmp_path)
    try:
        assert again.load_report["replayed"] == 11
        assert again.index is not None and again.index.live.ntotal == 39
        assert again.snapshot_seq == 30
    finally:
        again.close()


def test_a_torn_snapshot_is_rebuilt_from_the_store_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service = _service(tmp_path)
    _add(service, 25)
    service.snapshot()
    service.close()
    manifest = json.loads((tmp_path / persistence.MANIFEST).read_text())
    snap = tmp_path / manifest["file"]
    snap.write_bytes(snap.read_bytes()[:-7])
    with caplog.at_level(logging.WARNING, logger="glimpse.index"):
        again = _service(tmp_path)
    try:
        assert "truncated or torn" in again.load_report["snapshot_error"]
        assert any("rebuilding the index from the store" in r.message for r in caplog.records)
        assert again.index is not None and again.index.live.ntotal == 25
    finally:
        again.close()


def test_a_snapshot_ahead_of_the_store_is_not_trusted(tmp_path: Path) -> None:
    service = _service(tmp_path)
    _add(service, 5)
    service.close()
    persistence.save(tmp_path, faiss.serialize_index(_flat(50)), _manifest(50))
    again = _service(tmp_path)
    try:
        assert "store ends at 5" in again.load_report["snapshot_error"]
        assert again.index is not None and again.index.live.ntotal == 5
    finally:
        again.close()


_STORE_FILES = ("items.sqlite3", "items.sqlite3-wal", "items.sqlite3-shm")


def _copy_store(src: Path, dst: Path) -> None:
    dst.mkdir(exist_ok=True)
    for name in _STORE_FILES:
        (dst / name).unlink(missing_ok=True)
        if (src / name).exists():
            shutil.copyfile(src / name, dst / name)


def _phantoms(service: IndexService, start: int, n: int) -> int:
    """Vectors of rows the store lost that the index still finds under some (reused) id."""
    assert service.store is not None
    x = clustered(n, DIM, seed=start).astype(np.float16).astype(np.float32)
    count = 0
    for v, hits in zip(x, service.search(x, 1), strict=True):
        if hits and hits[0][1] > 0.999:
            stored = service.store.get_vector(hits[0][0])
            count += stored is None or not np.allclose(stored, v, atol=1e-3)
    return count


def _crash(service: IndexService) -> None:
    service.snapshot_seq = 10**9  # no snapshot at close, as after a kill
    service.close()


def test_a_snapshot_newer_than_a_torn_store_is_moved_aside_and_never_trusted_later(
    tmp_path: Path,
) -> None:
    data, saved = tmp_path / "data", tmp_path / "saved"
    service = _service(data)
    _add(service, 20)
    service.close()
    _copy_store(data, saved)  # the store as it will be after its tail is torn
    service = _service(data)
    _add(service, 10, start=100)  # seq 21..30, ids 21..30: the rows the store will lose
    service.close()  # snapshot at seq 30
    stale = (data / persistence.MANIFEST).read_text()
    stale_file = data / json.loads(stale)["file"]
    stale_bytes = stale_file.read_bytes()
    _copy_store(saved, data)

    third = _service(data)
    try:
        assert "store ends at 20" in third.load_report["snapshot_error"]
        assert json.loads((data / persistence.REFUSED).read_text())["seq"] == 30
        _add(third, 15, start=200)  # seq 21..35: new rows take the lost rows' ids and seqs
        assert third.store is not None and third.store.last_seq == 35
        assert _phantoms(third, 100, 10) == 0
    finally:
        _crash(third)

    fourth = _service(data)
    try:
        assert fourth.index is not None and fourth.index.live.ntotal == 35
        assert _phantoms(fourth, 100, 10) == 0
    finally:
        _crash(fourth)

    # Even the stale manifest itself (e.g. written back by hand) is refused: its last row's id
    # names another row now.
    (data / persistence.MANIFEST).write_text(stale)
    stale_file.write_bytes(stale_bytes)
    fifth = _service(data)
    try:
        assert "reused the id" in fifth.load_report["snapshot_error"]
        assert fifth.index is not None and fifth.index.live.ntotal == 35
        assert _phantoms(fifth, 100, 10) == 0
    finally:
        fifth.close()


def test_the_manifest_names_the_row_at_its_seq_and_a_lost_delete_is_caught(
    tmp_path: Path,
) -> None:
    data, saved = tmp_path / "data", tmp_path / "saved"
    service = _service(data)
    _add(service, 10)
    service.close()
    _copy_store(data, saved)
    service = _service(data)
    assert service.delete(4)  # seq 11
    service.close()
    manifest = json.loads((data / persistence.MANIFEST).read_text())
    assert manifest["seq"] == 11
    assert manifest["last_row"]["id"] == 4 and manifest["last_row"]["deleted"] is True
    stale = (data / persistence.MANIFEST).read_text()
    stale_bytes = (data / manifest["file"]).read_bytes()
    _copy_store(saved, data)  # the delete is lost
    service = _service(data)
    _add(service, 3, start=50)  # seq 11..13: past the snapshot's seq again
    _crash(service)
    (data / persistence.MANIFEST).write_text(stale)
    (data / manifest["file"]).write_bytes(stale_bytes)
    again = _service(data)
    try:
        assert "lost writes" in again.load_report["snapshot_error"]
        assert again.index is not None and again.index.live.ntotal == 13  # id 4 is live again
    finally:
        again.close()


def _vectors_file(data: Path) -> Path:
    manifest = json.loads((data / persistence.MANIFEST).read_text())
    assert manifest["vectors_file"], manifest
    return data / manifest["vectors_file"]


def test_a_start_fills_the_table_from_the_vectors_file_then_replays(tmp_path: Path) -> None:
    service = _service(tmp_path)
    _add(service, 30)
    assert service.delete(7)
    service.snapshot()  # seq 31: 29 live rows in the vectors file
    manifest = json.loads((tmp_path / persistence.MANIFEST).read_text())
    assert manifest["vectors_count"] == 29
    assert _vectors_file(tmp_path).stat().st_size == manifest["vectors_bytes"] == (
        32 + 29 * (8 + 2 * DIM))
    _add(service, 10, start=100)
    assert service.delete(3)
    assert service.index is not None and service.index.table.vectors is not None
    want = service.index.table.vectors[: 41].copy()
    q = clustered(5, DIM, seed=100)
    expected = service.search(q, 5)
    _crash(service)
    again = _service(tmp_path)
    try:
        assert again.load_report["vectors"] == "file" and again.load_report["replayed"] == 11
        assert again.index is not None and again.index.table.count == 38
        assert again.index.table.vectors is not None
        live = again.index.table.live_ids()
        assert 3 not in live and 7 not in live and len(live) == 38
        assert np.array_equal(again.index.table.vectors[live], want[live])
        assert again.search(q, 5) == expected
        # Only the newest snapshot's files stay.
        again.snapshot()
        names = sorted(p.name.split("-")[0] for p in (tmp_path / "snapshots").iterdir())
        assert names == ["index", "vectors"]
    finally:
        again.close()


@pytest.mark.parametrize("damage", ["truncated", "flipped", "missing", "header"])
def test_a_bad_vectors_file_falls_back_to_the_store_with_a_log_line(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    service = _service(tmp_path)
    _add(service, 20)
    service.close()  # snapshot at close, with its vectors file
    path = _vectors_file(tmp_path)
    raw = bytearray(path.read_bytes())
    if damage == "truncated":
        path.write_bytes(bytes(raw[:-5]))
    elif damage == "flipped":
        raw[len(raw) - 3] ^= 0xFF
        path.write_bytes(bytes(raw))
    elif damage == "missing":
        path.unlink()
    else:  # a header that disagrees, with a manifest hash that matches it
        raw[8] ^= 0x01
        path.write_bytes(bytes(raw))
        manifest = json.loads((tmp_path / persistence.MANIFEST).read_text())
        manifest["vectors_sha256"] = hashlib.sha256(bytes(raw[32:])).hexdigest()
        (tmp_path / persistence.MANIFEST).write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="glimpse.index"):
        again = _service(tmp_path)
    try:
        assert again.load_report["vectors"] == "store"
        assert "snapshot_error" not in again.load_report  # the Faiss snapshot is still used
        assert again.load_report["vectors_error"]
        assert any("vectors file unusable" in r.message for r in caplog.records)
        assert again.index is not None and again.index.table.count == 20
        q = clustered(20, DIM, seed=0).astype(np.float16).astype(np.float32)
        assert [h[0][0] for h in again.search(q, 1)] == list(range(1, 21))
    finally:
        again.close()


def test_the_low_memory_setting_streams_its_vectors_file_from_the_store(tmp_path: Path) -> None:
    def low() -> IndexService:
        service = IndexService(Settings(data_dir=tmp_path, dim=DIM, snapshot_interval_s=0,
                                        snapshot_every_writes=0, vectors_in_memory=False))
        service.open()
        return service

    service = low()
    _add(service, 12)
    assert service.delete(2)
    service.close()
    manifest = json.loads((tmp_path / persistence.MANIFEST).read_text())
    assert manifest["vectors_count"] == 11
    again = low()
    try:
        assert again.load_report["vectors"] == "file"
        assert again.index is not None and again.index.table.count == 11
        assert 2 not in again.index.table.live_ids()
        q = clustered(12, DIM, seed=0).astype(np.float16).astype(np.float32)
        assert [h[0][0] for h in again.search(q[3:], 1)] == list(range(4, 13))
    finally:
        again.close()
    # Read by the default setting, the same file fills the re-rank vectors.
    full = _service(tmp_path)
    try:
        assert full.load_report["vectors"] == "file"
        assert full.index is not None and full.index.table.vectors is not None
        assert np.array_equal(full.index.table.vectors[5], q[4].astype(np.float16))
    finally:
        full.close()
