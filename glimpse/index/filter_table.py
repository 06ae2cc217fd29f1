"""The filterable fields of every item of one SQLite store, in memory as numpy arrays by id:
what the Faiss backend evaluates a filter on (filters.py), in a few milliseconds where
``json_extract`` over the rows took 160-330 ms at 50k items (they hold the vectors too).

It follows the store without a hook in it: each use first asks SQLite whether another
connection committed since (``PRAGMA data_version``), then reads only what changed: the rows
of a higher sequence number (adds and deletes), and the ids a trigger on ``UPDATE OF path,
meta`` listed in ``filter_touched`` (an update keeps its row's sequence number).

Strings (folders, file types) and word sets (camera, keywords) are stored as codes into
lists of their distinct values: a filter tests each distinct value once, then selects the
items whose code passed through a lookup table by code.

A filter's mask is kept until the table changes (``generation``): the same filter sent with
each new query, as the page does, is evaluated once.
"""

from __future__ import annotations

import posixpath
import sqlite3
import threading
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

_GROWTH = 1.25
# Masks kept per table; past this many, all are dropped (a few distinct filters are in use).
_MASKS = 16
_SETUP = """
CREATE TABLE IF NOT EXISTS filter_touched (id INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS filter_touched_on_update AFTER UPDATE OF path, meta ON items
BEGIN INSERT INTO filter_touched(id) VALUES (new.id); END;
"""


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return np.nan
    return float(value)


def _words(value: Any) -> tuple[str, ...] | None:
    if not isinstance(value, list):
        return None
    return tuple(dict.fromkeys(v for v in value if isinstance(v, str)))


class _Codes:
    """Distinct values and the code of each."""

    def __init__(self) -> None:
        self.values: list[Any] = []
        self._code: dict[Hashable, int] = {}

    def code(self, value: Hashable | None) -> int:
        if value is None:
            return -1
        found = self._code.get(value)
        if found is None:
            found = self._code[value] = len(self.values)
            self.values.append(value)
        return found

    def passing(self, test: Callable[[Any], bool]) -> np.ndarray:
        return np.asarray([c for c, v in enumerate(self.values) if test(v)], dtype=np.int32)


class FilterTable:
    """Columns by item id (NaN or -1 where an item lacks the field); see the module docstring."""

    FLOATS = ("taken_ts", "lat", "lon", "width")
    CODED = ("folder", "file_type", "camera", "keywords")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        with sqlite3.connect(path, timeout=30.0) as setup:
            setup.executescript(_SETUP)
        setup.close()
        self._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        self.present = np.zeros(0, dtype=bool)
        self.floats = {name: np.zeros(0) for name in self.FLOATS}
        self.codes = {name: np.zeros(0, dtype=np.int32) for name in self.CODED}
        self.values = {name: _Codes() for name in self.CODED}
        self._version = -1
        self._seq = 0
        self._touched = 0
        self.generation = 0  # bumped whenever a row changed
        self._masks: dict[str, np.ndarray] = {}

    def _reserve(self, max_id: int) -> None:
        size = len(self.present)
        if max_id < size:
            return
        new = max(max_id + 1, int(size * _GROWTH) + 1)
        self.present = np.concatenate([self.present, np.zeros(new - size, dtype=bool)])
        for name, column in self.floats.items():
            self.floats[name] = np.concatenate([column, np.full(new - size, np.nan)])
        for name, codes in self.codes.items():
            self.codes[name] = np.concatenate([codes, np.full(new - size, -1, dtype=np.int32)])

    def _put(self, rows: list[tuple[int, str, str, int]]) -> None:
        if not rows:
            return
        self._reserve(max(r[0] for r in rows))
        for item_id, path, raw, deleted in rows:
            self.present[item_id] = not deleted
            meta = orjson.loads(raw) if raw and raw != "{}" else {}
            if not isinstance(meta, dict):
                meta = {}
            for name in self.FLOATS:
                self.floats[name][item_id] = _number(meta.get(name))
            file_type = meta.get("file_type")
            self.codes["folder"][item_id] = self.values["folder"].code(posixpath.dirname(path))
            self.codes["file_type"][item_id] = self.values["file_type"].code(
                file_type if isinstance(file_type, str) else None)
            for name in ("camera", "keywords"):
                self.codes[name][item_id] = self.values[name].code(_words(meta.get(name)))

    def refresh(self) -> None:
        """Catch up with the store (caller holds ``lock``)."""
        conn = self._conn
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self._version:
            return
        self._version = version
        with conn:  # one read transaction: the rows and the list of touched ids agree
            conn.execute("BEGIN")
            touched = conn.execute(
                "SELECT t.rowid, i.id, i.path, i.meta, i.deleted FROM filter_touched t "
                "JOIN items i ON i.id = t.id WHERE t.rowid > ?", (self._touched,)).fetchall()
            rows = conn.execute("SELECT id, path, meta, deleted, seq FROM items WHERE seq > ? "
                                "ORDER BY seq", (self._seq,)).fetchall()
        self._put([(r[0], r[1], r[2], r[3]) for r in rows])
        self._put([(r[1], r[2], r[3], r[4]) for r in touched])
        if rows or touched:
            self.generation += 1
            self._masks.clear()
        if rows:
            self._seq = max(self._seq, int(rows[-1][4]))
        if touched:
            self._touched = max(self._touched, max(int(r[0]) for r in touched))

    def mask(self, key: str, make: Callable[[], np.ndarray]) -> np.ndarray:
        """The mask of the filter named ``key``, from ``make`` unless kept since the last
        change (caller holds ``lock``, refreshed); read-only, as it is shared."""
        found = self._masks.get(key)
        if found is None:
            if len(self._masks) >= _MASKS:
                self._masks.clear()
            found = self._masks[key] = make()
            found.flags.writeable = False
        return found

    def close(self) -> None:
        self._conn.close()


_tables: dict[tuple[Path, int], FilterTable] = {}
_tables_lock = threading.Lock()


def table_of(path: Path) -> FilterTable:
    """The one FilterTable of the store file at ``path`` (made on first use; a new file at
    the same path, as a test's fresh store, gets its own)."""
    key = (path, path.stat().st_ino)
    with _tables_lock:
        table = _tables.get(key)
        if table is None:
            table = _tables[key] = FilterTable(path)
        return table
