"""The SQLite store: the source of truth of the index service.

One row per item (id, key, path, meta JSON, float16 vector, sequence number, deleted flag).
Every write takes a fresh sequence number (an add or a delete), so "every change after the
snapshot" is ``WHERE seq > :snapshot_seq``. Faiss holds nothing that cannot be rebuilt from here.

The store is written by one thread at a time (the caller holds the service's write mutex) and
read from any thread: each thread gets its own read connection, which WAL mode lets run beside
the writer.

One file, over 400 lines: every SQL statement of the store is here, so the sequence-number
invariant above can be checked in one read.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson

from glimpse.contracts.errors import ErrorType, GlimpseError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    path TEXT NOT NULL,
    meta TEXT NOT NULL,
    vector BLOB NOT NULL,
    seq INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
-- A key names one live item; once deleted, the same key may be added again under a new id.
CREATE UNIQUE INDEX IF NOT EXISTS items_live_key ON items(key) WHERE deleted = 0;
CREATE INDEX IF NOT EXISTS items_seq ON items(seq);
-- An item added straight into a named space (after a confirmed model migration) has an empty
-- vector of its own: every reader of the built-in space skips it.
CREATE INDEX IF NOT EXISTS items_no_vector ON items(id) WHERE deleted = 0 AND vector = x'';
CREATE TABLE IF NOT EXISTS info (name TEXT PRIMARY KEY, value TEXT NOT NULL);
-- Named spaces (spaces.py): another model's vectors over the same items, one row per item.
-- Their writes take sequence numbers from the same counter as the items'.
CREATE TABLE IF NOT EXISTS spaces (
    name TEXT PRIMARY KEY, dim INTEGER NOT NULL, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS space_vectors (
    space TEXT NOT NULL,
    id INTEGER NOT NULL,
    vector BLOB NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (space, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS space_vectors_seq ON space_vectors(space, seq);
"""

# The full-text index of the live items (glimpse/index/keywords.py searches it): the file name,
# path, IPTC/XMP keywords, title and description. Triggers keep it in the transaction of each
# add, delete and update, so it never disagrees with the rows; a store made before it gets it
# filled once at open (``text_index`` in ``info``).
_TEXT_COLUMNS = "rowid, name, path, keywords, title, description"


def _text_of(row: str) -> str:
    """The FTS columns of an ``items`` row named ``row``; the file name is the path past its
    last slash (rtrim strips every character but '/')."""
    return (
        f"{row}.id, substr({row}.path, length(rtrim({row}.path, replace({row}.path, '/', ''))) "
        f"+ 1), {row}.path, (SELECT group_concat(value, ' ') FROM "
        f"json_each({row}.meta, '$.keywords')), json_extract({row}.meta, '$.title'), "
        f"json_extract({row}.meta, '$.description')"
    )


_TEXT_SCHEMA = f"""
CREATE VIRTUAL TABLE IF NOT EXISTS items_text USING fts5(
    name, path, keywords, title, description, tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS items_text_on_add AFTER INSERT ON items WHEN new.deleted = 0
BEGIN INSERT INTO items_text({_TEXT_COLUMNS}) SELECT {_text_of("new")}; END;
CREATE TRIGGER IF NOT EXISTS items_text_on_change AFTER UPDATE OF path, meta, deleted ON items
BEGIN
    DELETE FROM items_text WHERE rowid = old.id;
    INSERT INTO items_text({_TEXT_COLUMNS}) SELECT {_text_of("new")} WHERE new.deleted = 0;
END;
"""

_F16 = np.dtype("<f2")
_CHUNK = 65_536
_IN_LIMIT = 900  # stay below SQLite's default limit of bound parameters


class StorageError(GlimpseError):
    """The store could not commit a write (disk full, I/O error): nothing was acknowledged."""

    def __init__(self, what: str, exc: BaseException) -> None:
        super().__init__(
            ErrorType.insufficient_storage,
            f"The index store could not commit the {what} ({exc}); nothing was stored. "
            "Free disk space and retry.",
        )


@dataclass(frozen=True)
class NewItem:
    """One validated item to add: ``vector`` is unit-length float16."""

    key: str
    path: str
    meta: dict[str, Any]
    vector: np.ndarray


@dataclass(frozen=True)
class AddOutcome:
    id: int
    key: str
    status: str  # "added" | "exists"


@dataclass(frozen=True)
class Record:
    id: int
    key: str
    path: str
    meta: dict[str, Any]
    seq: int
    created_at: float
    deleted: bool


@dataclass(frozen=True)
class Changes:
    """Rows changed after a sequence number: live ones to add, deleted ones to remove."""

    added_ids: np.ndarray
    added_vectors: np.ndarray  # float16, (n, dim)
    deleted_ids: np.ndarray
    last_seq: int


def _blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=_F16).tobytes()


class Store:
    """SQLite (WAL) store of items; see the module docstring for the threading rules."""

    def __init__(self, path: Path, dim: int) -> None:
        self.path = path
        self.dim = dim
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._writer = self._connect()
        self._writer.executescript(_SCHEMA + _TEXT_SCHEMA)
        self._fill_text_index()
        row = self._writer.execute("SELECT value FROM info WHERE name = 'dim'").fetchone()
        if row is None:
            with self._writer:
                self._writer.execute("INSERT INTO info(name, value) VALUES ('dim', ?)", (str(dim),))
        elif int(row[0]) != dim:
            self._writer.close()
            raise ValueError(
                f"The store at {path} holds {row[0]}-dimensional vectors but INDEX_DIM is {dim}; "
                "use another INDEX_DATA_DIR or set INDEX_DIM to match."
            )
        self._last_seq = int(self._writer.execute(
            "SELECT MAX((SELECT COALESCE(MAX(seq), 0) FROM items), "
            "(SELECT COALESCE(MAX(seq), 0) FROM space_vectors))"
        ).fetchone()[0])

    def _fill_text_index(self) -> None:
        """Fill the full-text index from the live rows, once (a store made before it)."""
        conn = self._writer
        if conn.execute("SELECT 1 FROM info WHERE name = 'text_index'").fetchone():
            return
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM items_text")
            conn.execute(f"INSERT INTO items_text({_TEXT_COLUMNS}) SELECT {_text_of('items')} "
                         "FROM items WHERE deleted = 0")
            conn.execute("INSERT OR REPLACE INTO info(name, value) VALUES ('text_index', '1')")

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk (fsynced) before we acknowledge it, even across power loss.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=10000")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            # One per worker thread: a small page cache each (the OS caches the file anyway).
            conn.execute("PRAGMA cache_size=-512")
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def close(self) -> None:
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        self._writer.close()

    @property
    def last_seq(self) -> int:
        """Sequence number of the last committed write."""
        return self._last_seq

    # -- writes (caller holds the service's write mutex) ------------------------------------

    @contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        """One transaction of the writer: committed when the block ends, rolled back when it
        raises; a failed commit raises StorageError naming ``what`` (nothing was stored)."""
        conn = self._writer
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StorageError(what, exc) from exc

    def add(
        self, items: Sequence[NewItem], space: str | None = None, dim: int | None = None
    ) -> tuple[list[AddOutcome], np.ndarray, np.ndarray]:
        """Add items in one transaction; returns outcomes and the (ids, vectors) newly added.

        An item whose key is live already, or repeated in the batch, is ``exists`` with the
        id it has. With ``space`` (a named space of ``dim``), the vectors are that space's:
        each item's own vector is left empty (readers of the built-in space skip it) and its
        space vector is written in the same transaction. Raises StorageError when the commit
        fails; then nothing was stored.
        """
        keys = list(dict.fromkeys(item.key for item in items))
        outcomes: list[AddOutcome] = []
        new_ids: list[int] = []
        new_vectors: list[np.ndarray] = []
        seq = self._last_seq
        now = time.time()
        with self._write("add") as conn:
            existing = self._live_ids_of_keys(conn, keys)
            for item in items:
                if item.key in existing:
                    outcomes.append(AddOutcome(existing[item.key], item.key, "exists"))
                    continue
                seq += 1
                cur = conn.execute(
                    "INSERT INTO items(key, path, meta, vector, seq, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (item.key, item.path, json.dumps(item.meta, separators=(",", ":")),
                     b"" if space else _blob(item.vector), seq, now),
                )
                item_id = int(cur.lastrowid or 0)
                if space:
                    seq += 1
                    conn.execute(
                        "INSERT INTO space_vectors(space, id, vector, seq) VALUES (?, ?, ?, ?)",
                        (space, item_id, _blob(item.vector), seq))
                existing[item.key] = item_id
                outcomes.append(AddOutcome(item_id, item.key, "added"))
                new_ids.append(item_id)
                new_vectors.append(item.vector)
        self._last_seq = seq
        vectors = (
            np.vstack(new_vectors).astype(_F16)
            if new_vectors
            else np.zeros((0, dim or self.dim), dtype=_F16)
        )
        return outcomes, np.asarray(new_ids, dtype=np.int64), vectors

    def delete(self, item_id: int) -> bool:
        """Mark an item deleted under a new sequence number; False when not live."""
        seq = self._last_seq + 1
        with self._write("delete") as conn:
            cur = conn.execute(
                "UPDATE items SET deleted = 1, seq = ? WHERE id = ? AND deleted = 0",
                (seq, item_id),
            )
        if cur.rowcount == 0:
            return False
        self._last_seq = seq
        return True

    def update(self, item_id: int, path: str | None, meta: dict[str, Any] | None) -> bool:
        """Set a live item's path and/or meta (None keeps it); False when not live.

        The row keeps its sequence number: seqs order the vector writes that the index replays,
        and neither the index nor a snapshot holds paths or meta (searches read them here).
        """
        with self._write("update") as conn:
            cur = conn.execute(
                "UPDATE items SET path = COALESCE(?, path), meta = COALESCE(?, meta) "
                "WHERE id = ? AND deleted = 0",
                (path, None if meta is None else json.dumps(meta, separators=(",", ":")),
                 item_id),
            )
        return cur.rowcount > 0

    # -- reads (any thread) -------------------------------------------------------------------

    @staticmethod
    def _live_ids_of_keys(conn: sqlite3.Connection, keys: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for start in range(0, len(keys), _IN_LIMIT):
            part = keys[start : start + _IN_LIMIT]
            marks = ",".join("?" * len(part))
            rows = conn.execute(
                f"SELECT key, id FROM items WHERE deleted = 0 AND key IN ({marks})", part
            )
            found.update((str(k), int(i)) for k, i in rows)
        return found

    def missing_keys(self, keys: Sequence[str]) -> list[str]:
        """The keys with no live item, in the order given (duplicates kept once)."""
        unique = list(dict.fromkeys(keys))
        live = self.live_ids(unique)
        return [k for k in unique if k not in live]

    def live_ids(self, keys: Sequence[str]) -> dict[str, int]:
        """The live item's id of each key that has one."""
        return self._live_ids_of_keys(self._reader(), list(dict.fromkeys(keys)))

    def get(self, item_id: int) -> Record | None:
        return self._record_where("id", item_id)

    def row_at_seq(self, seq: int) -> Record | None:
        """The row whose last write took sequence number ``seq`` (None if none holds it now)."""
        return self._record_where("seq", seq)

    def _record_where(self, column: Literal["id", "seq"], value: int) -> Record | None:
        row = self._reader().execute(
            "SELECT id, key, path, meta, seq, created_at, deleted FROM items "
            f"WHERE {column} = ?",
            (value,),
        ).fetchone()
        if row is None:
            return None
        return Record(
            int(row[0]), row[1], row[2], orjson.loads(row[3]), int(row[4]), float(row[5]),
            bool(row[6]),
        )

    def get_vector(self, item_id: int) -> np.ndarray | None:
        row = self._reader().execute(
            "SELECT vector FROM items WHERE id = ? AND deleted = 0 AND vector != x''", (item_id,)
        ).fetchone()
        if row is None:
            return None
        return np.frombuffer(row[0], dtype=_F16).astype(np.float32)

    def paths_and_meta(self, ids: Sequence[int]) -> dict[int, tuple[str, dict[str, Any]]]:
        """Path and meta of the live items among ``ids``."""
        out: dict[int, tuple[str, dict[str, Any]]] = {}
        unique = list(dict.fromkeys(int(i) for i in ids))
        conn = self._reader()
        for start in range(0, len(unique), _IN_LIMIT):
            part = unique[start : start + _IN_LIMIT]
            marks = ",".join("?" * len(part))
            rows = conn.execute(
                f"SELECT id, path, meta FROM items WHERE deleted = 0 AND id IN ({marks})", part
            )
            for item_id, path, meta in rows:
                out[int(item_id)] = (path, orjson.loads(meta) if meta != "{}" else {})
        return out

    def match_text(self, expression: str, weights: Sequence[float], limit: int) -> list[int]:
        """Ids of the live items whose full-text columns match the FTS5 ``expression``, best
        first by BM25 with a weight per column (name, path, keywords, title, description)."""
        marks = ", ".join("?" * len(weights))
        rows = self._reader().execute(
            f"SELECT rowid FROM items_text WHERE items_text MATCH ? "
            f"ORDER BY bm25(items_text, {marks}), rowid LIMIT ?",
            (expression, *weights, limit),
        )
        return [int(r[0]) for r in rows]

    def vectors_of(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        """float16 vectors of the live items among ``ids`` (the low-memory re-rank path)."""
        out: dict[int, np.ndarray] = {}
        unique = list(dict.fromkeys(int(i) for i in ids))
        conn = self._reader()
        for start in range(0, len(unique), _IN_LIMIT):
            part = unique[start : start + _IN_LIMIT]
            marks = ",".join("?" * len(part))
            rows = conn.execute(
                f"SELECT id, vector FROM items WHERE deleted = 0 AND vector != x'' "
                f"AND id IN ({marks})", part
            )
            for item_id, blob in rows:
                out[int(item_id)] = np.frombuffer(blob, dtype=_F16)
        return out

    def page(self, after: int, limit: int) -> list[tuple[Record, np.ndarray]]:
        """The live items past id ``after`` in id order, with their float16 vectors (empty for
        an item added straight into a named space): a pass over every item (duplicates,
        backfill) reads a page at a time."""
        rows = self._reader().execute(
            "SELECT id, key, path, meta, seq, created_at, vector FROM items "
            "WHERE deleted = 0 AND id > ? ORDER BY id LIMIT ?", (after, limit)
        ).fetchall()
        return [(Record(int(i), k, p, orjson.loads(m), int(s), float(c), False),
                 np.frombuffer(v, dtype=_F16)) for i, k, p, m, s, c, v in rows]

    def counts(self) -> tuple[int, int]:
        """(live, deleted) item counts."""
        row = self._reader().execute(
            "SELECT COALESCE(SUM(deleted = 0), 0), COALESCE(SUM(deleted = 1), 0) FROM items"
        ).fetchone()
        return int(row[0]), int(row[1])

    def no_vector_count(self) -> int:
        """Live items with no vector of their own (added straight into a named space)."""
        return int(self._reader().execute(
            "SELECT COUNT(*) FROM items WHERE deleted = 0 AND vector = x''").fetchone()[0])

    def max_id(self) -> int:
        return int(self._reader().execute("SELECT COALESCE(MAX(id), 0) FROM items").fetchone()[0])

    def iter_live(
        self, max_seq: int | None = None, chunk: int = _CHUNK
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, float16 vectors) of the live items (with seq <= max_seq), in id order."""
        sql = "SELECT id, vector FROM items WHERE deleted = 0 AND vector != x''"
        params: tuple[int, ...] = ()
        if max_seq is not None:
            sql += " AND seq <= ?"
            params = (max_seq,)
        # A dedicated connection: the iteration may span many calls on this thread.
        conn = self._connect()
        try:
            cur = conn.execute(sql + " ORDER BY id", params)
            while True:
                rows = cur.fetchmany(chunk)
                if not rows:
                    break
                ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
                blob = b"".join(r[1] for r in rows)
                vectors = np.frombuffer(blob, dtype=_F16).reshape(len(rows), self.dim)
                yield ids, vectors
        finally:
            conn.close()

    def iter_live_ids(self, chunk: int = _CHUNK) -> Iterator[np.ndarray]:
        """Ids of the live items, in id order (the low-memory start reads no vectors)."""
        conn = self._connect()
        try:
            cur = conn.execute(
                "SELECT id FROM items WHERE deleted = 0 AND vector != x'' ORDER BY id")
            while rows := cur.fetchmany(chunk):
                yield np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        finally:
            conn.close()

    def changes_since(self, seq: int) -> Changes:
        """Every change with a sequence number above ``seq`` (for replay and catch-up)."""
        rows = self._reader().execute(
            "SELECT id, deleted, vector, seq FROM items WHERE seq > ? ORDER BY seq", (seq,)
        ).fetchall()
        added = [r for r in rows if not r[1] and r[2]]
        deleted = [int(r[0]) for r in rows if r[1]]
        vectors = (
            np.frombuffer(b"".join(r[2] for r in added), dtype=_F16).reshape(len(added), self.dim)
            if added
            else np.zeros((0, self.dim), dtype=_F16)
        )
        return Changes(
            added_ids=np.asarray([int(r[0]) for r in added], dtype=np.int64),
            added_vectors=vectors,
            deleted_ids=np.asarray(deleted, dtype=np.int64),
            last_seq=int(rows[-1][3]) if rows else seq,
        )

    # -- named spaces (spaces.py; writes under the service's write mutex) ---------------------

    def spaces(self) -> dict[str, int]:
        """Each named space's dimension, by name."""
        rows = self._reader().execute("SELECT name, dim FROM spaces ORDER BY created_at")
        return {str(name): int(dim) for name, dim in rows}

    def create_space(self, name: str, dim: int) -> None:
        with self._write("new space") as conn:
            conn.execute("INSERT INTO spaces(name, dim, created_at) VALUES (?, ?, ?)",
                         (name, dim, time.time()))

    def drop_space(self, name: str) -> None:
        """The space and its vectors, in one transaction."""
        with self._write("space drop") as conn:
            conn.execute("DELETE FROM space_vectors WHERE space = ?", (name,))
            conn.execute("DELETE FROM spaces WHERE name = ?", (name,))

    def info(self, name: str) -> str | None:
        row = self._reader().execute("SELECT value FROM info WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_info(self, name: str, value: str) -> None:
        with self._write("setting") as conn:
            conn.execute("INSERT OR REPLACE INTO info(name, value) VALUES (?, ?)", (name, value))

    def add_space_vectors(
        self, space: str, dim: int, ids: Sequence[int], vectors: np.ndarray
    ) -> tuple[dict[str, list[int]], np.ndarray, np.ndarray]:
        """Store ``space``'s float16 vectors of live items in one transaction; an id that has
        one already is left as it is ("exists": a resumed re-encoding sends it again), an id
        with no live item is "missing". Returns the ids by outcome and the (ids, vectors)
        newly stored."""
        wanted = list(dict.fromkeys(int(i) for i in ids))
        live: set[int] = set()
        have: set[int] = set()
        outcome: dict[str, list[int]] = {"added": [], "exists": [], "missing": []}
        rows: list[int] = []
        seq = self._last_seq
        with self._write("space vectors") as conn:
            for start in range(0, len(wanted), _IN_LIMIT):
                part = wanted[start : start + _IN_LIMIT]
                marks = ",".join("?" * len(part))
                live.update(int(r[0]) for r in conn.execute(
                    f"SELECT id FROM items WHERE deleted = 0 AND id IN ({marks})", part))
                have.update(int(r[0]) for r in conn.execute(
                    f"SELECT id FROM space_vectors WHERE space = ? AND id IN ({marks})",
                    (space, *part)))
            for row, item_id in enumerate(int(i) for i in ids):
                if item_id not in live:
                    outcome["missing"].append(item_id)
                elif item_id in have:
                    outcome["exists"].append(item_id)
                else:
                    seq += 1
                    conn.execute(
                        "INSERT INTO space_vectors(space, id, vector, seq) VALUES (?, ?, ?, ?)",
                        (space, item_id, _blob(vectors[row]), seq),
                    )
                    have.add(item_id)
                    outcome["added"].append(item_id)
                    rows.append(row)
        self._last_seq = seq
        added = np.asarray(outcome["added"], dtype=np.int64)
        return outcome, added, np.asarray(vectors[rows], dtype=_F16).reshape(len(rows), dim)

    def space_iter_live(
        self, space: str, dim: int, max_seq: int | None = None, chunk: int = _CHUNK
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, float16 vectors) of ``space`` for the live items, in id order."""
        sql = ("SELECT v.id, v.vector FROM space_vectors v JOIN items i ON i.id = v.id "
               "WHERE v.space = ? AND i.deleted = 0")
        params: tuple[Any, ...] = (space,)
        if max_seq is not None:
            sql += " AND v.seq <= ?"
            params = (space, max_seq)
        conn = self._connect()
        try:
            cur = conn.execute(sql + " ORDER BY v.id", params)
            while rows := cur.fetchmany(chunk):
                ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
                blob = b"".join(r[1] for r in rows)
                yield ids, np.frombuffer(blob, dtype=_F16).reshape(len(rows), dim)
        finally:
            conn.close()

    def space_changes_since(self, space: str, dim: int, seq: int) -> Changes:
        """``space``'s vectors written after ``seq`` (of items still live) and the items deleted
        after it (some may have no vector in the space: removing them is a no-op)."""
        conn = self._reader()
        added = conn.execute(
            "SELECT v.id, v.vector, v.seq FROM space_vectors v JOIN items i ON i.id = v.id "
            "WHERE v.space = ? AND v.seq > ? AND i.deleted = 0 ORDER BY v.seq", (space, seq)
        ).fetchall()
        deleted = conn.execute(
            "SELECT id, seq FROM items WHERE deleted = 1 AND seq > ? ORDER BY seq", (seq,)
        ).fetchall()
        last = max([seq] + [int(r[2]) for r in added] + [int(r[1]) for r in deleted])
        vectors = (np.frombuffer(b"".join(r[1] for r in added), dtype=_F16).reshape(-1, dim)
                   if added else np.zeros((0, dim), dtype=_F16))
        return Changes(
            added_ids=np.asarray([int(r[0]) for r in added], dtype=np.int64),
            added_vectors=vectors,
            deleted_ids=np.asarray([int(r[0]) for r in deleted], dtype=np.int64),
            last_seq=last,
        )

    def space_vectors_of(self, space: str, ids: Sequence[int]) -> dict[int, np.ndarray]:
        """float16 vectors of ``space`` for the live items among ``ids``."""
        out: dict[int, np.ndarray] = {}
        unique = list(dict.fromkeys(int(i) for i in ids))
        conn = self._reader()
        for start in range(0, len(unique), _IN_LIMIT):
            part = unique[start : start + _IN_LIMIT]
            marks = ",".join("?" * len(part))
            rows = conn.execute(
                "SELECT v.id, v.vector FROM space_vectors v JOIN items i ON i.id = v.id "
                f"WHERE v.space = ? AND i.deleted = 0 AND v.id IN ({marks})", (space, *part)
            )
            for item_id, blob in rows:
                out[int(item_id)] = np.frombuffer(blob, dtype=_F16)
        return out

    def space_count(self, space: str) -> int:
        """Live items with a vector in ``space``."""
        row = self._reader().execute(
            "SELECT COUNT(*) FROM space_vectors v JOIN items i ON i.id = v.id "
            "WHERE v.space = ? AND i.deleted = 0", (space,)
        ).fetchone()
        return int(row[0])

    def space_pending(self, space: str, after: int, limit: int) -> list[tuple[int, str, str]]:
        """(id, key, path) of live items past id ``after`` with no vector in ``space``, in id
        order: what a re-encoding into the space has left, read a page at a time."""
        rows = self._reader().execute(
            "SELECT i.id, i.key, i.path FROM items i WHERE i.deleted = 0 AND i.id > ? AND NOT "
            "EXISTS (SELECT 1 FROM space_vectors v WHERE v.space = ? AND v.id = i.id) "
            "ORDER BY i.id LIMIT ?", (after, space, limit)
        ).fetchall()
        return [(int(i), str(k), str(p)) for i, k, p in rows]
