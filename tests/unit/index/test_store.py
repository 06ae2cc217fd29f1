"""The SQLite store: idempotent adds, sequence numbers, deletes, changes since a snapshot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from glimpse.index.store import NewItem, StorageError, Store
from tests.unit.index.helpers import clustered

DIM = 8


def _items(n: int, start: int = 0) -> list[NewItem]:
    x = clustered(n, DIM, seed=start).astype(np.float16)
    return [NewItem(f"k{start + i}", f"p{start + i}", {"i": start + i}, x[i]) for i in range(n)]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "items.sqlite3", DIM)
    yield s
    s.close()


def test_add_assigns_dense_ids_and_one_seq_per_row(store: Store) -> None:
    outcomes, ids, vectors = store.add(_items(5))
    assert [o.status for o in outcomes] == ["added"] * 5
    assert ids.tolist() == [1, 2, 3, 4, 5] and vectors.dtype == np.float16
    assert store.last_seq == 5
    again, new_ids, _ = store.add(_items(2) + _items(1, start=5))
    assert [o.status for o in again] == ["exists", "exists", "added"]
    assert [o.id for o in again] == [1, 2, 6] and new_ids.tolist() == [6]
    assert store.last_seq == 6


def test_vectors_round_trip_as_float16(store: Store) -> None:
    items = _items(3)
    store.add(items)
    got = store.get_vector(2)
    assert got is not None and got.dtype == np.float32
    np.testing.assert_array_equal(got, items[1].vector.astype(np.float32))
    record = store.get(2)
    assert record is not None and record.key == "k1" and record.meta == {"i": 1}


def test_delete_takes_a_seq_and_frees_the_key(store: Store) -> None:
    store.add(_items(3))
    assert store.delete(2) is True
    assert store.delete(2) is False and store.delete(99) is False
    assert store.last_seq == 4
    assert store.get_vector(2) is None
    assert store.missing_keys(["k0", "k1", "zz", "k0"]) == ["k1", "zz"]
    assert store.live_ids(["k0", "k1", "zz", "k0"]) == {"k0": 1}
    assert store.counts() == (2, 1)
    outcomes, ids, _ = store.add(_items(2))
    assert [o.status for o in outcomes] == ["exists", "added"] and ids.tolist() == [4]


def test_changes_since_lists_adds_and_deletes_after_a_seq(store: Store) -> None:
    store.add(_items(4))  # seq 1..4
    store.delete(1)  # seq 5: id 1 was before the snapshot point
    store.add(_items(2, start=10))  # seq 6, 7 -> ids 5, 6
    store.delete(6)  # seq 8: added and deleted after the point
    changes = store.changes_since(4)
    assert changes.added_ids.tolist() == [5]
    assert sorted(changes.deleted_ids.tolist()) == [1, 6]
    assert changes.last_seq == 8 and changes.added_vectors.shape == (1, DIM)
    assert store.changes_since(8).last_seq == 8


def test_iter_live_respects_max_seq(store: Store) -> None:
    store.add(_items(5))
    store.delete(3)
    chunks = list(store.iter_live(max_seq=4, chunk=2))
    ids = np.concatenate([c[0] for c in chunks]).tolist()
    assert ids == [1, 2, 4]  # id 3 deleted (seq 6), id 5 has seq 5 > 4


def test_reopen_keeps_rows_and_refuses_another_dim(tmp_path: Path) -> None:
    first = Store(tmp_path / "s.sqlite3", DIM)
    first.add(_items(3))
    first.close()
    again = Store(tmp_path / "s.sqlite3", DIM)
    assert again.last_seq == 3 and again.counts() == (3, 0)
    again.close()
    with pytest.raises(ValueError, match="8-dimensional"):
        Store(tmp_path / "s.sqlite3", 16)


def test_a_full_disk_raises_storage_error_and_stores_nothing(store: Store) -> None:
    store.add(_items(2))
    pages = store._writer.execute("PRAGMA page_count").fetchone()[0]
    store._writer.execute(f"PRAGMA max_page_count={pages}")
    with pytest.raises(StorageError) as info:
        store.add(_items(500, start=100))
    assert info.value.status == 507
    assert store.counts() == (2, 0) and store.last_seq == 2
