"""The Milvus collection behind INDEX_BACKEND=milvus: schema, ids, tombstones, reads and writes.

Milvus holds everything (vector, key, path, meta); the service keeps nothing, so any number of
index replicas can share one collection. Milvus has no unique constraint and no compare-and-set,
so the rules that make replicas agree are here:

- Ids are public (``/images/{id}``) and must stay below 2**53 so a browser's JSON numbers hold
  them exactly. An item's id is a hash of (key, generation, salt): two replicas adding the same
  key at once compute the same id, and ``upsert`` (delete-then-insert at one timestamp) leaves
  one row, so dedup by key holds without coordination. ``generation`` is the number of
  tombstones the key has: re-adding a deleted key gives a new id, as the SQLite store does.
  ``salt`` moves past an id another key holds (a 53-bit hash collides at ~10**8 items).
- A delete first writes a tombstone (primary key ``-id``, same key, a zero vector), then deletes
  the row. The tombstone is the truth: a row whose tombstone exists is deleted even if it is
  still there (a replica killed between the two steps, or a racing add that re-upserted it), and
  it never leaves a search. Tombstones are never removed, so a deleted id is never reused.
- Writes are acknowledged only once a Strong read sees them, so every later read, on any
  replica, may use Eventually consistency (Milvus serves reads from one delegator per shard whose
  time only moves forward): cheap reads, read-after-acknowledged-write across replicas.
- Fresh rows are searched exactly. Until a segment is sealed and its index served, Milvus
  searches it with an interim IVF index of its own (nlist 128, nprobe 16, server settings no
  search parameter reaches): recall@10 0.90 right after adding 7,500 MiniLM vectors, against
  0.999 once indexed. So the store remembers when its oldest unserved write was made
  (``fresh_since``), seals on idle (a flush :data:`SEAL_IDLE_S` after a write burst, or every
  :data:`SEAL_ROWS` rows of a long one) and, until Milvus serves the sealed segments indexed,
  scores the rows written since exactly, from a copy it keeps of them (ids, vectors, paths,
  metas: a Milvus scan of 19,000 fresh rows took seconds a query), beside the ANN search.
  Of the three ways out, the interim index's parameters are the server's, not Glimpse's, and
  sealing alone leaves every search between an add and its index at 0.90; the exact window
  costs a product with the unsealed rows only while there are some. The window is this replica's
  writes: another replica's fresh rows keep the interim index's recall until they are sealed.
  An update is such a write: Milvus's upsert moves the row out of its indexed segment into a
  growing one (recall@10 0.79 right after a backfill rewrote 8,000 rows, without the window).
- An item added into a named space alone (after a migration away from the built-in space,
  milvus_spaces.py) has no built-in vector, but its row needs one: the row holds zeros, a
  placeholder, in the partition :data:`SPACE_ONLY`. Built-in searches read only Milvus's
  default partition, so none returns it; reads by id, listings, filters and keywords see it.

One file, over 400 lines: every Milvus call of the backend and the fresh rows it scores itself
share the collection handles and the tombstone rule; split, each part would reach into the
others.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from pymilvus import (
    Collection,
    CollectionSchema,
    DataType,
    FieldSchema,
    MilvusException,
    connections,
    utility,
)
from pymilvus.client.prepare import Prepare
from pymilvus.client.types import Status
from pymilvus.client.utils import check_status
from pymilvus.grpc_gen import common_pb2

from glimpse.contracts.errors import ErrorType, GlimpseError
from glimpse.index.config import MilvusSettings, Settings
from glimpse.index.rules import auto_nlist, auto_nprobe, auto_pq
from glimpse.index.store import AddOutcome, NewItem, Record

ID_BITS = 53
_ID_SPAN = (1 << ID_BITS) - 1  # ids are 1 .. 2**53 - 1
_IN_CHUNK = 1000  # ids or keys per "in [...]" expression
_PATH_BYTES = 65_535  # the contract allows 4096 characters; UTF-8 takes up to 4 bytes each
_KEY_BYTES = 512
_VECTOR_BYTES = 4
# Seal on idle: a flush this long after the last write, or once this many rows are unsealed
# (which bounds the exact scan of fresh rows during a long ingest).
SEAL_IDLE_S = 1.0
SEAL_ROWS = 20_000
REFLUSH_S = 15.0  # while a seal waits to be served, a flush again this often
# Milvus builds no index for a segment under this many rows (indexCoord's default): it searches
# such a sealed segment by brute force, which is exact already.
_MIN_INDEXED_ROWS = 1024

# pymilvus raises its own exceptions, but a dropped channel can surface as a bare gRPC error.
_FAILURES = (MilvusException, grpc.RpcError)

FIELDS = ("id", "key", "path", "meta", "created_at", "vector")
SPACE_ONLY = "space_only"  # rows with a zero placeholder for a built-in vector (docstring)
BUILT_IN = ["_default"]  # the partition built-in searches read


class CollectionMismatch(Exception):
    """The existing collection cannot be the one the settings describe: refuse to start."""


class MilvusUnavailable(GlimpseError):
    """Milvus did not answer (down, restarting, or past INDEX_MILVUS_TIMEOUT_S)."""

    def __init__(self, uri: str, what: str, exc: BaseException, stored: bool | None) -> None:
        tail = {True: "", False: " Nothing was stored; retry.",
                None: " The write may or may not have been kept; retrying it is safe."}[stored]
        super().__init__(
            ErrorType.upstream_unavailable,
            f"Milvus at {uri} did not answer the {what} ({_short(exc)}).{tail}",
            headers={"Retry-After": "1"},
        )


def _short(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return str(text).splitlines()[0][:300]


def _column(field: Any) -> Any:
    """One column of a query reply: a numpy array for numbers and vectors, else a list."""
    if field.HasField("vectors"):
        dim = int(field.vectors.dim)
        flat = np.asarray(field.vectors.float_vector.data, dtype=np.float32)
        return flat.reshape(-1, dim) if dim else flat
    scalars = field.scalars
    kind = scalars.WhichOneof("data")
    values = getattr(scalars, kind).data if kind else []
    if kind == "json_data":
        return [json.loads(v) if v else {} for v in values]
    if kind == "string_data":
        return list(values)
    if kind == "long_data":
        return np.asarray(values, dtype=np.int64).tolist()
    return list(values)


def builtin_vector(row: Any) -> np.ndarray | None:
    """A row's built-in vector, None for a placeholder (zeros: a stored vector is a unit one)."""
    vector = np.asarray(row, dtype=np.float32)
    return vector if vector.any() else None


def _or_empty(vector: np.ndarray | None) -> np.ndarray:
    return np.zeros(0, dtype=np.float32) if vector is None else vector


def item_id(key: str, generation: int, salt: int = 0) -> int:
    """The id of ``key``'s ``generation``-th life (1 .. 2**53-1; see the module docstring)."""
    digest = hashlib.blake2b(f"{generation}:{salt}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % _ID_SPAN + 1


def _ints(values: Iterable[int]) -> str:
    return "[" + ",".join(str(int(v)) for v in values) + "]"


def _strs(values: Iterable[str]) -> str:
    # Milvus parses string literals like Go's strconv.Unquote; JSON's escapes are a subset.
    return "[" + ",".join(json.dumps(v) for v in values) + "]"


def _chunks(values: Sequence[Any], size: int = _IN_CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


@dataclass(frozen=True)
class FreshRows:
    """Rows a replica wrote that Milvus does not yet serve indexed (module docstring)."""

    ids: np.ndarray
    vectors: np.ndarray
    paths: list[str]
    metas: list[dict[str, Any]]
    # A filter's mask over these rows, kept as long as they are (a new write makes new rows):
    # the same filter sent with each new query, as the page does, is evaluated once.
    masks: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class IndexPlan:
    """The Milvus index of a new collection and the default search parameters."""

    index_type: str
    params: dict[str, Any]

    @property
    def nlist(self) -> int | None:
        value = self.params.get("nlist")
        return int(value) if value is not None else None

    @property
    def quantized(self) -> bool:
        """PQ codes only: candidates need a re-rank with the exact vectors for recall."""
        return self.index_type in ("IVF_PQ", "GPU_IVF_PQ")


def plan_index(settings: Settings, milvus: MilvusSettings, index_type: str | None = None,
               params: dict[str, Any] | None = None) -> IndexPlan:
    """The Faiss backend's rules (glimpse/index/rules.py) applied to one full segment, since
    Milvus trains an index per sealed segment, not per collection; explicit params win."""
    kind = index_type or milvus.index_type
    rows = segment_rows(settings, milvus)
    if kind == "HNSW":
        rule: dict[str, Any] = {"M": 16, "efConstruction": 256}
    else:
        m, nbits = auto_pq(settings.dim, rows)
        rule = {"nlist": auto_nlist(rows), "m": m, "nbits": nbits}
    rule.update(milvus.index_params if params is None else params)
    return IndexPlan(kind, rule)


# Milvus's default dataCoord.segment.maxSize. Milvus trains one index per segment, so the IVF
# parameters follow the rule for a full segment's rows; INDEX_MILVUS_INDEX_PARAMS overrides them
# for a server configured otherwise.
SEGMENT_MB = 512


def segment_rows(settings: Settings, milvus: MilvusSettings) -> int:
    """Rows of a full segment: its size over the raw vector bytes (other fields are small)."""
    return max(1, SEGMENT_MB * (1 << 20) // (settings.dim * _VECTOR_BYTES))


def default_nprobe(plan: IndexPlan, settings: Settings) -> int:
    nlist = plan.nlist or 1
    return max(1, min(nlist, settings.nprobe or auto_nprobe(nlist)))


class MilvusStore:
    """One collection on one Milvus; every method blocks on gRPC (call from threads)."""

    def __init__(self, settings: Settings, milvus: MilvusSettings) -> None:
        self.settings = settings
        self.milvus = milvus
        self.uri = milvus.uri
        # pymilvus 2.3 bounds its retries by ``timeout`` only when it is an int; a float
        # (10.0) leaves 75 retries with back-off, minutes of a caller waiting on a dead Milvus.
        self.timeout = max(1, math.ceil(milvus.timeout_s))
        self.alias = f"glimpse-{id(self):x}"
        self._collection: Collection | None = None
        self.plan = plan_index(settings, milvus)
        self._lock = threading.Lock()
        # The fresh window (module docstring): guarded by _fresh_lock.
        self._fresh_lock = threading.Lock()
        self.fresh_since: float | None = None  # created_at of the oldest unserved write
        self._next_since: float | None = None  # the same for writes made after a seal began
        self._sealing = False
        self._fresh_rows = 0
        # This replica's unserved writes, a batch per add: the window's and the next one's.
        self._fresh: list[FreshRows] = []
        self._next: list[FreshRows] = []
        self._where: dict[int, tuple[FreshRows, int]] = {}  # id -> its batch and row in it
        self._stacked: FreshRows | None = None
        self._last_write = 0.0
        self._space_only = False  # the SPACE_ONLY partition is known to exist
        # Imported here: milvus_spaces.py builds on this module.
        from glimpse.index.milvus_spaces import MilvusSpaces

        self.spaces = MilvusSpaces(self, settings, milvus)

    # -- connection and schema -------------------------------------------------------------------

    def connect(self) -> None:
        """Connect, create or check the collection, load it. Raises CollectionMismatch when the
        collection disagrees with the settings, MilvusException/OSError when Milvus is down."""
        with self._lock:
            if self._collection is not None:
                return
            m = self.milvus
            connections.connect(alias=self.alias, uri=m.uri, token=m.token or "",
                                timeout=self.timeout)
            name = m.collection
            if utility.has_collection(name, using=self.alias, timeout=self.timeout):
                collection = Collection(name, using=self.alias)
                self._check(collection)
            else:
                collection = self._create(name)
            collection.load(timeout=max(self.timeout, 60.0))
            self._collection = collection

    def _create(self, name: str) -> Collection:
        s = self.settings
        schema = CollectionSchema(
            [
                FieldSchema("id", DataType.INT64, is_primary=True, auto_id=False),
                FieldSchema("key", DataType.VARCHAR, max_length=_KEY_BYTES),
                FieldSchema("path", DataType.VARCHAR, max_length=_PATH_BYTES),
                FieldSchema("meta", DataType.JSON),
                FieldSchema("created_at", DataType.DOUBLE),
                FieldSchema("vector", DataType.FLOAT_VECTOR, dim=s.dim),
            ],
            description="Glimpse items; a negative id is the tombstone of the item -id.",
        )
        try:
            collection = Collection(name, schema, using=self.alias, consistency_level="Strong",
                                    timeout=self.timeout)
        except MilvusException:
            # Another replica created it first: check that one instead.
            if not utility.has_collection(name, using=self.alias, timeout=self.timeout):
                raise
            collection = Collection(name, using=self.alias)
            self._check(collection)
            return collection
        if not collection.has_index():
            self._create_index(collection)
        return collection

    def _create_index(self, collection: Collection) -> None:
        collection.create_index(
            "vector",
            {"index_type": self.plan.index_type, "metric_type": "IP", "params": self.plan.params},
            timeout=max(self.timeout, 60.0),
        )

    def _check(self, collection: Collection) -> None:
        s = self.settings
        name = collection.name
        fields = {f.name: f for f in collection.schema.fields}
        missing = [f for f in FIELDS if f not in fields]
        if missing:
            raise CollectionMismatch(
                f"The Milvus collection {name!r} at {self.uri} has no field(s) {missing}: it was "
                "not made by Glimpse. Set INDEX_MILVUS_COLLECTION to another name."
            )
        dim = int(fields["vector"].params.get("dim", 0))
        if dim != s.dim:
            raise CollectionMismatch(
                f"The Milvus collection {name!r} at {self.uri} holds {dim}-dimensional vectors "
                f"but INDEX_DIM is {s.dim}; set INDEX_DIM={dim} or use another "
                "INDEX_MILVUS_COLLECTION."
            )
        if not collection.has_index():
            self._create_index(collection)
            return
        index = collection.index()
        metric = str(index.params.get("metric_type", "")).upper()
        if metric != "IP":
            raise CollectionMismatch(
                f"The Milvus collection {name!r} at {self.uri} is indexed with metric "
                f"{metric or 'unknown'}, but Glimpse scores by inner product (metric IP, cosine "
                "of unit vectors); use another INDEX_MILVUS_COLLECTION."
            )
        # The collection's index wins over the settings (it was built with it); stats say so.
        params = index.params.get("params", {})
        if isinstance(params, str):
            params = json.loads(params)
        self.plan = IndexPlan(str(index.params.get("index_type", self.plan.index_type)),
                              dict(params))

    @property
    def collection(self) -> Collection:
        if self._collection is None:
            raise GlimpseError(
                ErrorType.upstream_unavailable,
                f"Milvus at {self.uri} has not been reached yet; retry shortly.",
                headers={"Retry-After": "1"},
            )
        return self._collection

    def close(self) -> None:
        try:
            connections.disconnect(self.alias)
        except Exception:  # noqa: BLE001 - closing a dead connection is fine
            pass

    # -- reads (Eventually: every acknowledged write is visible already) -------------------------

    def _query(self, expr: str, fields: Sequence[str], what: str,
               consistency: str = "Eventually", partitions: list[str] | None = None
               ) -> list[dict[str, Any]]:
        """Rows matching ``expr``; a vector field comes back as a numpy row, not a list.

        pymilvus 2.3's own query builds a Python list per vector element by element (0.2 ms a
        384-d row: 36 of a search's 55 ms with 176 candidates re-ranked), so the reply's columns
        are decoded here instead, on the same request and the same connection.
        """
        name = self.collection.name
        try:
            handler = self.collection._get_connection()  # noqa: SLF001 - the decode above
            request = Prepare.query_request(name, expr, list(fields), partitions,
                                            consistency_level=consistency)
            response = handler._stub.Query(request, timeout=self.timeout)  # noqa: SLF001
            if Status.EMPTY_COLLECTION in {response.status.code, response.status.error_code}:
                return []
            check_status(response.status)
        except _FAILURES as exc:
            raise MilvusUnavailable(self.uri, what, exc, stored=True) from exc
        columns = {fd.field_name: _column(fd) for fd in response.fields_data}
        n = min((len(c) for c in columns.values()), default=0)
        return [{k: c[i] for k, c in columns.items()} for i in range(n)]

    def rows_of_ids(self, ids: Sequence[int], fields: Sequence[str], what: str
                    ) -> dict[int, dict[str, Any]]:
        """Rows of ``ids`` and their tombstones (negative ids), keyed by primary key."""
        out: dict[int, dict[str, Any]] = {}
        unique = list(dict.fromkeys(int(i) for i in ids))
        for part in _chunks(unique, _IN_CHUNK // 2):
            wanted = list(part) + [-i for i in part]
            for row in self._query(f"id in {_ints(wanted)}", fields, what):
                out[int(row["id"])] = row
        return out

    def live_of_keys(self, keys: Sequence[str], what: str
                     ) -> tuple[dict[str, int], dict[str, int]]:
        """(live id of each key that has one, tombstones per key)."""
        rows: list[dict[str, Any]] = []
        unique = list(dict.fromkeys(keys))
        for part in _chunks(unique):
            rows.extend(self._query(f"key in {_strs(part)}", ("id", "key"), what))
        dead = {-int(r["id"]) for r in rows if int(r["id"]) < 0}
        tombstones: dict[str, int] = {}
        live: dict[str, int] = {}
        for row in rows:
            rid, key = int(row["id"]), str(row["key"])
            if rid < 0:
                tombstones[key] = tombstones.get(key, 0) + 1
            elif rid not in dead:
                live[key] = min(rid, live.get(key, rid))
        return live, tombstones

    def missing_keys(self, keys: Sequence[str]) -> list[str]:
        """The keys with no live item, in the order given (duplicates kept once)."""
        unique = list(dict.fromkeys(keys))
        live = self.live_ids(unique)
        return [k for k in unique if k not in live]

    def live_ids(self, keys: Sequence[str]) -> dict[str, int]:
        """The live item's id of each key that has one."""
        live, _ = self.live_of_keys(keys, "key lookup")
        return live

    def get(self, item_id: int) -> Record | None:
        rows = self.rows_of_ids([item_id], ("id", "key", "path", "meta", "created_at"),
                                "item read")
        row, tomb = rows.get(item_id), rows.get(-item_id)
        if row is None and tomb is None:
            return None
        row = row or tomb
        assert row is not None
        created = float(row["created_at"])
        # seq: Milvus keeps no per-row write number; the add's time in microseconds stands in.
        return Record(item_id, str(row["key"]), str(row["path"]), dict(row["meta"] or {}),
                      int(created * 1e6), created, tomb is not None)

    def get_vector(self, item_id: int) -> np.ndarray | None:
        rows = self.rows_of_ids([item_id], ("id", "vector"), "vector read")
        if item_id not in rows or -item_id in rows:
            return None
        return builtin_vector(rows[item_id]["vector"])

    def page(self, after: int, limit: int) -> list[tuple[Record, np.ndarray]]:
        """The live items past id ``after`` in id order (a query iterator walks the primary
        key), with their built-in vectors (empty for a placeholder): a pass over every item
        reads a page at a time."""
        found: list[tuple[Record, np.ndarray]] = []
        try:
            iterator = self.collection.query_iterator(
                batch_size=1000, expr=f"id > {int(after)}", output_fields=["id"],
                timeout=self.timeout, consistency_level="Eventually")
            while len(found) < limit:
                ids = sorted(int(r["id"]) for r in iterator.next())
                if not ids:
                    break
                rows = self.rows_of_ids(ids, FIELDS, "item listing")
                for i in ids:
                    if i in rows and -i not in rows:
                        row, created = rows[i], float(rows[i]["created_at"])
                        found.append((Record(i, str(row["key"]), str(row["path"]),
                                             dict(row["meta"] or {}), int(created * 1e6),
                                             created, False),
                                      _or_empty(builtin_vector(row["vector"]))))
            iterator.close()
        except _FAILURES as exc:
            raise MilvusUnavailable(self.uri, "item listing", exc, stored=True) from exc
        return found[:limit]

    def counts(self) -> tuple[int, int]:
        """(rows with a positive id, tombstones), read Strong: a count that lags the rows an
        exact search returns would contradict it (test_index_milvus_processes)."""
        live = self._query("id > 0", ("count(*)",), "count", consistency="Strong")
        dead = self._query("id < 0", ("count(*)",), "count", consistency="Strong")
        return int(live[0]["count(*)"]), int(dead[0]["count(*)"])

    def builtin_count(self) -> int:
        """Live items with a built-in vector (rows past :data:`SPACE_ONLY`), read Strong."""
        rows = self._query("id > 0", ("count(*)",), "count", consistency="Strong",
                           partitions=BUILT_IN)
        return int(rows[0]["count(*)"]) if rows else 0

    # -- writes -----------------------------------------------------------------------------------

    def add(self, items: Sequence[NewItem], space_only: bool = False) -> list[AddOutcome]:
        """Add items idempotently by key; returns only once a Strong read sees them. With
        ``space_only`` their vectors are another space's (milvus_spaces.py stores them): the
        rows get the placeholder, in :data:`SPACE_ONLY`."""
        keys = list(dict.fromkeys(item.key for item in items))
        live, generations = self.live_of_keys(keys, "key lookup before an add")
        fresh = [k for k in keys if k not in live]
        chosen = self._free_ids(fresh, generations)
        outcomes: list[AddOutcome] = []
        rows: dict[str, NewItem] = {}
        for item in items:
            if item.key in live:
                outcomes.append(AddOutcome(live[item.key], item.key, "exists"))
            elif item.key in rows:
                outcomes.append(AddOutcome(chosen[item.key], item.key, "exists"))
            else:
                rows[item.key] = item
                outcomes.append(AddOutcome(chosen[item.key], item.key, "added"))
        if rows:
            now = time.time()
            batch = list(rows.values())
            data = [
                [chosen[i.key] for i in batch],
                [i.key for i in batch],
                [i.path for i in batch],
                [i.meta for i in batch],
                [now] * len(batch),
                np.zeros((len(batch), self.settings.dim), dtype=np.float32) if space_only
                else np.vstack([np.asarray(i.vector, dtype=np.float32) for i in batch]),
            ]
            if space_only:  # no built-in search reads a placeholder: not in the fresh window
                self._upsert(data, "add", self._space_only_partition())
            else:
                self._upsert(data, "add")
                self._wrote(now, FreshRows(np.asarray(data[0], dtype=np.int64),
                                           np.asarray(data[5]), [i.path for i in batch],
                                           [i.meta for i in batch]))
            self._await_visible([chosen[i.key] for i in batch], "add")
        return outcomes

    # -- the fresh window (module docstring) -----------------------------------------------------

    def _wrote(self, created_at: float, rows: FreshRows) -> None:
        """Count an upserted write into the window: into the next one once a seal has begun,
        since its flush may have missed it."""
        with self._fresh_lock:
            if self._sealing:
                self._next_since = min(self._next_since or created_at, created_at)
                self._next.append(rows)
            else:
                self.fresh_since = min(self.fresh_since or created_at, created_at)
                self._fresh.append(rows)
                self._stacked = None
            for n, i in enumerate(rows.ids.tolist()):
                self._where[i] = (rows, n)
            self._fresh_rows += len(rows.ids)
            self._last_write = time.monotonic()

    def fresh_rows(self) -> FreshRows | None:
        """This replica's writes that Milvus does not yet serve indexed, or None."""
        with self._fresh_lock:
            if self._stacked is None:
                batches = self._fresh + self._next
                if not batches:
                    return None
                self._stacked = FreshRows(
                    np.concatenate([b.ids for b in batches]),
                    np.vstack([b.vectors for b in batches]),
                    [p for b in batches for p in b.paths],
                    [m for b in batches for m in b.metas])
            return self._stacked

    def _rewrote(self, item_id: int, vector: np.ndarray, path: str, meta: dict[str, Any]
                 ) -> None:
        """An update: Milvus's upsert moves the row into a growing segment, so it joins the
        window like an add (a backfill rewrites every row); a fresh row's copy follows instead
        (filters read its path and meta)."""
        with self._fresh_lock:
            where = self._where.get(item_id)
            if where is not None:
                batch, n = where
                batch.paths[n], batch.metas[n] = path, meta
                self._stacked = None
                return
        self._wrote(time.time(), FreshRows(np.asarray([item_id], dtype=np.int64),
                                           vector.reshape(1, -1), [path], [meta]))

    def seal_due(self) -> bool:
        """Whether a burst of writes has gone idle, or grown past SEAL_ROWS, unsealed."""
        with self._fresh_lock:
            if self._sealing or self.fresh_since is None:
                return False
            return (self._fresh_rows >= SEAL_ROWS
                    or time.monotonic() - self._last_write >= SEAL_IDLE_S)

    def seal(self, stop: threading.Event, timeout_s: float = 600.0) -> bool:
        """Flush (seal the growing segments), wait until Milvus serves them indexed, then close
        the window on the rows the flush covered; True when it did. Writes made meanwhile open
        the next window."""
        with self._fresh_lock:
            self._sealing = True
            self._fresh_rows = 0
        served = False
        try:
            self.collection.flush(timeout=max(self.timeout, 60))
            flushed = time.monotonic()
            deadline = flushed + timeout_s
            while not stop.is_set() and time.monotonic() < deadline:
                if self._served_indexed():
                    served = True
                    break
                if time.monotonic() - flushed >= REFLUSH_S:
                    # Rows left growing (writes since, or some the flush missed) would keep the
                    # window open until the next burst's seal: flush them too.
                    self.collection.flush(timeout=max(self.timeout, 60))
                    flushed = time.monotonic()
                stop.wait(0.5)
        except _FAILURES:
            served = False  # Milvus down: the window stays open, the next write retries
        finally:
            with self._fresh_lock:
                self._sealing = False
                if served:
                    self.fresh_since, self._next_since = self._next_since, None
                    self._fresh = self._next
                elif self._next_since is not None:
                    self.fresh_since = min(self.fresh_since or self._next_since,
                                           self._next_since)
                    self._next_since = None
                    self._fresh = self._fresh + self._next
                self._next = []
                self._stacked = None
                self._where = {i: (b, n) for b in self._fresh
                               for n, i in enumerate(b.ids.tolist())}
        return served

    def _served_indexed(self) -> bool:
        """Every row is in a sealed segment the query nodes serve with its index (or by brute
        force, under Milvus's minimum rows for an index), and every flushed segment is served.
        The rows alone are not enough after an update: the upsert's old segment still counts
        its deleted rows while the new one is not yet loaded (query info omits growing ones)."""
        infos = utility.get_query_segment_info(self.collection.name, using=self.alias,
                                               timeout=self.timeout)
        ready = {int(i.segmentID): int(i.num_rows) for i in infos
                 if i.state != common_pb2.Growing
                 and (i.index_name or int(i.num_rows) < _MIN_INDEXED_ROWS)}
        flushed = self.collection._get_connection().get_persistent_segment_infos(  # noqa: SLF001
            self.collection.name, timeout=self.timeout)
        if any(int(f.segmentID) not in ready for f in flushed
               if f.state == common_pb2.Flushed and int(f.num_rows) > 0):
            return False
        rows = self._query("id != 0", ("count(*)",), "count", consistency="Strong")
        return sum(ready.values()) >= int(rows[0]["count(*)"]) if rows else True

    def _free_ids(self, keys: Sequence[str], generations: dict[str, int]) -> dict[str, int]:
        """An id per key that no other key's row or tombstone holds."""
        chosen: dict[str, int] = {}
        salts = dict.fromkeys(keys, 0)
        pending = list(keys)
        while pending:
            wanted = {k: item_id(k, generations.get(k, 0), salts[k]) for k in pending}
            taken = self.rows_of_ids(list(wanted.values()), ("id", "key"),
                                     "id check before an add")
            owner = {abs(int(i)): str(r["key"]) for i, r in taken.items()}
            uses = Counter(wanted.values())
            collided = [k for k, i in wanted.items() if owner.get(i, k) != k or uses[i] > 1]
            for key in pending:
                if key not in collided:
                    chosen[key] = wanted[key]
            for key in collided:
                salts[key] += 1
            pending = collided
        return chosen

    def delete(self, item_id: int) -> bool | None:
        """True: deleted now; False: no such item; None: it was deleted before."""
        rows = self.rows_of_ids([item_id], ("id", "key"), "item read before a delete")
        row, tomb = rows.get(item_id), rows.get(-item_id)
        if tomb is not None:
            if row is not None:
                self._delete_rows([item_id])  # left behind by a kill or a racing add
            return None
        if row is None:
            return False
        # Tombstone first: a kill between the two steps leaves the item deleted, never alive.
        data = [[-item_id], [str(row["key"])], [""], [{}], [time.time()],
                np.zeros((1, self.settings.dim), dtype=np.float32)]
        self._upsert(data, "delete")
        self._delete_rows([item_id])
        self._await_visible([item_id], "delete")
        self.spaces.forget(item_id)
        return True

    def update(self, item_id: int, path: str | None, meta: dict[str, Any] | None
               ) -> Record | None:
        """Rewrite a live item's row with a new path and/or meta (None keeps it); the record
        after, or None when not live. A delete racing it wins: its tombstone makes the
        rewritten row a ghost."""
        rows = self.rows_of_ids([item_id], FIELDS, "item read before an update")
        row = rows.get(item_id)
        if row is None or -item_id in rows:
            return None
        new_path = str(row["path"]) if path is None else path
        new_meta = dict(row["meta"] or {}) if meta is None else meta
        created = float(row["created_at"])
        vector = np.asarray(row["vector"], dtype=np.float32).reshape(1, -1)
        data = [[item_id], [str(row["key"])], [new_path], [new_meta], [created], vector]
        if builtin_vector(vector) is None:  # a placeholder stays in its partition
            self._upsert(data, "update", SPACE_ONLY)
        else:
            self._upsert(data, "update")
            self._rewrote(item_id, vector, new_path, new_meta)
        self._await_visible([item_id], "update")
        return Record(item_id, str(row["key"]), new_path, new_meta, int(created * 1e6), created,
                      False)

    def _upsert(self, data: list[Any], what: str, partition: str | None = None) -> None:
        try:
            self.collection.upsert(data, partition_name=partition, timeout=self.timeout)
        except _FAILURES as exc:
            raise MilvusUnavailable(self.uri, what, exc, stored=None) from exc

    def _space_only_partition(self) -> str:
        """:data:`SPACE_ONLY`, created on first use (Milvus loads a partition made in a loaded
        collection)."""
        if self._space_only:
            return SPACE_ONLY
        try:
            if not self.collection.has_partition(SPACE_ONLY, timeout=self.timeout):
                try:
                    self.collection.create_partition(SPACE_ONLY, timeout=self.timeout)
                except MilvusException:
                    # Another replica created it first.
                    if not self.collection.has_partition(SPACE_ONLY, timeout=self.timeout):
                        raise
        except _FAILURES as exc:
            raise MilvusUnavailable(self.uri, "add", exc, stored=False) from exc
        self._space_only = True
        return SPACE_ONLY

    def _delete_rows(self, ids: Sequence[int]) -> None:
        try:
            self.collection.delete(f"id in {_ints(ids)}", timeout=self.timeout)
        except _FAILURES as exc:
            raise MilvusUnavailable(self.uri, "delete", exc, stored=None) from exc

    def _await_visible(self, ids: Sequence[int], what: str) -> None:
        """A Strong read of what was just written: it returns once Milvus serves reads at a
        time past the write, so the acknowledgement implies visibility everywhere."""
        for part in _chunks(list(ids)):
            try:
                self.collection.query(f"id in {_ints(part)}", output_fields=["id"],
                                      timeout=self.timeout, consistency_level="Strong")
            except _FAILURES as exc:
                raise MilvusUnavailable(self.uri, f"{what} (visibility check)", exc,
                                        stored=None) from exc

    # -- search -----------------------------------------------------------------------------------

    def search_candidates(self, queries: np.ndarray, limit: int, params: dict[str, Any],
                          exclude: Sequence[int], where: str = ""
                          ) -> list[list[tuple[int, float]]]:
        """Milvus's top ``limit`` (id, score) per query, tombstones and ``exclude`` filtered,
        among the rows ``where`` (an expression: filters.milvus_expr) holds for."""
        expr = "id > 0"
        if exclude:
            expr += f" and id not in {_ints(exclude)}"
        if where:
            expr += f" and ({where})"
        try:
            results = self.collection.search(
                queries, "vector", {"metric_type": "IP", "params": params}, limit=limit,
                expr=expr, partition_names=BUILT_IN, timeout=self.timeout,
                consistency_level="Eventually",
            )
        except _FAILURES as exc:
            raise MilvusUnavailable(self.uri, "search", exc, stored=True) from exc
        return [list(zip(hits.ids, hits.distances, strict=True)) for hits in results]

    def count_where(self, where: str) -> int:
        """How many rows with a built-in vector ``where`` holds for (counted by Milvus: no ids
        sent back)."""
        rows = self._query(f"id > 0 and ({where})", ("count(*)",), "filter count",
                           partitions=BUILT_IN)
        return int(rows[0]["count(*)"]) if rows else 0

    def vectors_where(self, where: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of the rows with a built-in vector ``where`` holds for, in one query
        decoded as numpy (:meth:`_query`): for an expression known to hold for few rows."""
        rows = self._query(f"id > 0 and ({where})", ("id", "vector"), "exact search",
                           partitions=BUILT_IN)
        ids = np.fromiter((int(r["id"]) for r in rows), dtype=np.int64, count=len(rows))
        if not rows:
            return ids, np.zeros((0, self.settings.dim), dtype=np.float32)
        return ids, np.vstack([r["vector"] for r in rows]).astype(np.float32, copy=False)

    def scan_rows(self, fields: Sequence[str], batch: int = 4096) -> Iterable[dict[str, Any]]:
        """``fields`` of every row with a positive id, a batch at a time (facets)."""
        try:
            iterator = self.collection.query_iterator(
                batch_size=batch, expr="id > 0", output_fields=list(fields),
                timeout=self.timeout, consistency_level="Eventually",
            )
            while rows := iterator.next():
                yield from rows
            iterator.close()
        except _FAILURES as exc:
            raise MilvusUnavailable(self.uri, "scan", exc, stored=True) from exc

    def scan(self, batch: int = 4096, where: str = "") -> Iterable[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) of every row with a built-in vector (and ``where``), a batch at a
        time (exact search)."""
        try:
            iterator = self.collection.query_iterator(
                batch_size=batch, expr=f"id > 0 and ({where})" if where else "id > 0",
                output_fields=["id", "vector"], partition_names=BUILT_IN,
                timeout=self.timeout, consistency_level="Eventually",
            )
            while True:
                rows = iterator.next()
                if not rows:
                    iterator.close()
                    return
                ids = np.fromiter((int(r["id"]) for r in rows), dtype=np.int64, count=len(rows))
                yield ids, np.asarray([r["vector"] for r in rows], dtype=np.float32)
        except _FAILURES as exc:
            raise MilvusUnavailable(self.uri, "exact search", exc, stored=True) from exc

