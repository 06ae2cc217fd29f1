"""Named spaces on INDEX_BACKEND=milvus: a collection per space, beside the items' collection.

A space's collection ``<collection>__<space>`` holds (id, vector) rows of its own dimension;
ids, keys, paths and meta stay in the items' collection, which every search reads for its
hits, so a hit whose item was deleted (a tombstone, milvus_store.py) is never answered. The
spaces and the active one are rows of a small registry collection ``<collection>_spaces``,
so every replica sees the same ones; a replica reads the active space again at most once a
second (an activation made on another replica reaches it within that second).

Filters on a space are applied to its candidates (``k × 4`` plus spares), after the search:
a filter that keeps few items may answer fewer than ``k`` hits there.

Items may be added into a named space alone (``MilvusIndexService.add`` with a space: a
confirmed migration away from the built-in space); their rows in the items' collection then
hold a placeholder that built-in searches never read (milvus_store.py).

One file, just over 400 lines: the registry, the per-space collections and their search share the
registry's cached view of the active space.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from pymilvus import Collection, CollectionSchema, DataType, FieldSchema, MilvusException, utility

from glimpse.contracts.errors import ErrorType, GlimpseError
from glimpse.contracts.filters import SearchFilters
from glimpse.index.config import MilvusSettings, Settings
from glimpse.index.filters import matches
from glimpse.index.milvus_store import (
    _FAILURES,
    MilvusStore,
    MilvusUnavailable,
    _chunks,
    _ints,
    builtin_vector,
    plan_index,
)
from glimpse.index.spaces import BUILTIN, check_new_space, unknown_space

Records = list[list[dict[str, Any]]]

_ACTIVE_ROW = "#active"  # no space is named so: names start with a letter
_NAME_BYTES = 80
_ACTIVE_TTL_S = 1.0
# Candidates per wanted hit when filters are applied after the search.
_FILTER_SPREAD = 4
_SPARE = 16


class MilvusSpaces:
    """The spaces of one items' collection; every method blocks on gRPC."""

    def __init__(self, store: MilvusStore, settings: Settings, milvus: MilvusSettings) -> None:
        self.store, self.settings, self.milvus = store, settings, milvus
        self.base = milvus.collection
        self._registry: Collection | None = None
        self._collections: dict[str, Collection] = {}
        self._lock = threading.Lock()
        self._active: tuple[str, float] | None = None

    # -- the registry -----------------------------------------------------------------------------

    def _failed(self, what: str, exc: BaseException, stored: bool | None) -> MilvusUnavailable:
        return MilvusUnavailable(self.store.uri, what, exc, stored)

    def registry(self) -> Collection:
        with self._lock:
            if self._registry is None:
                self._registry = self._open_or_create(f"{self.base}_spaces", CollectionSchema([
                    FieldSchema("name", DataType.VARCHAR, is_primary=True,
                                max_length=_NAME_BYTES),
                    FieldSchema("dim", DataType.INT64),
                    FieldSchema("value", DataType.VARCHAR, max_length=_NAME_BYTES),
                    # Milvus wants a vector field in every collection.
                    FieldSchema("v", DataType.FLOAT_VECTOR, dim=2),
                ], description="Glimpse named spaces of " + self.base), "v", {
                    "index_type": "FLAT", "metric_type": "IP", "params": {}})
            return self._registry

    def _open_or_create(self, name: str, schema: CollectionSchema, field: str,
                        index: dict[str, Any]) -> Collection:
        alias, timeout = self.store.alias, self.store.timeout
        try:
            if utility.has_collection(name, using=alias, timeout=timeout):
                collection = Collection(name, using=alias)
            else:
                try:
                    collection = Collection(name, schema, using=alias,
                                            consistency_level="Strong", timeout=timeout)
                except MilvusException:
                    # Another replica created it first.
                    collection = Collection(name, using=alias)
            if not collection.has_index():
                collection.create_index(field, index, timeout=max(timeout, 60))
            collection.load(timeout=max(timeout, 60))
        except _FAILURES as exc:
            raise self._failed(f"opening collection {name}", exc, None) from exc
        return collection

    def _rows(self) -> list[dict[str, Any]]:
        try:
            return list(self.registry().query('name != ""', output_fields=["name", "dim", "value"],
                                              timeout=self.store.timeout,
                                              consistency_level="Strong"))
        except _FAILURES as exc:
            raise self._failed("space list", exc, True) from exc

    def spaces(self) -> dict[str, int]:
        return {str(r["name"]): int(r["dim"]) for r in self._rows() if r["name"] != _ACTIVE_ROW}

    def active(self) -> str:
        cached = self._active
        if cached is not None and time.monotonic() - cached[1] < _ACTIVE_TTL_S:
            return cached[0]
        rows = {str(r["name"]): r for r in self._rows()}
        name = str(rows[_ACTIVE_ROW]["value"]) if _ACTIVE_ROW in rows else BUILTIN
        if name != BUILTIN and name not in rows:
            name = BUILTIN
        self._active = (name, time.monotonic())
        return name

    def _put(self, name: str, dim: int, value: str) -> None:
        try:
            self.registry().upsert([[name], [dim], [value], [[1.0, 0.0]]],
                                   timeout=self.store.timeout)
            self.registry().query(f'name == "{name}"', output_fields=["name"],
                                  timeout=self.store.timeout, consistency_level="Strong")
        except _FAILURES as exc:
            raise self._failed("space registry write", exc, None) from exc

    # -- one space's collection -------------------------------------------------------------------

    def _collection_name(self, name: str) -> str:
        return f"{self.base}__{name}"

    def collection(self, name: str, dim: int) -> Collection:
        found = self._collections.get(name)
        if found is not None:
            return found
        plan = plan_index(self.settings.model_copy(update={"dim": dim}), self.milvus)
        collection = self._open_or_create(self._collection_name(name), CollectionSchema([
            FieldSchema("id", DataType.INT64, is_primary=True, auto_id=False),
            FieldSchema("vector", DataType.FLOAT_VECTOR, dim=dim),
        ], description=f"Glimpse space {name!r} of {self.base}"), "vector", {
            "index_type": plan.index_type, "metric_type": "IP", "params": plan.params})
        self._collections[name] = collection
        return collection

    def dim_of(self, name: str | None) -> tuple[str, int]:
        chosen = self.active() if name is None else name
        if chosen == BUILTIN:
            return chosen, self.settings.dim
        spaces = self.spaces()
        if chosen not in spaces:
            raise unknown_space(chosen, [BUILTIN, *spaces])
        return chosen, spaces[chosen]

    def count(self, name: str, dim: int) -> int:
        try:
            rows = self.collection(name, dim).query("id > 0", output_fields=["count(*)"],
                                                    timeout=self.store.timeout,
                                                    consistency_level="Strong")
        except _FAILURES as exc:
            raise self._failed("space count", exc, True) from exc
        return int(rows[0]["count(*)"])

    # -- the operations ---------------------------------------------------------------------------

    def listing(self) -> list[dict[str, Any]]:
        active = self.active()
        out = [{"name": BUILTIN, "dim": self.settings.dim, "count": self.store.builtin_count(),
                "active": active == BUILTIN, "kind": f"milvus_{self.store.plan.index_type.lower()}",
                "built_in": True, "optional": True}]
        for name, dim in self.spaces().items():
            index = self.collection(name, dim).index().params.get("index_type", "")
            out.append({"name": name, "dim": dim, "count": self.count(name, dim),
                        "active": active == name, "kind": f"milvus_{str(index).lower()}",
                        "built_in": False})
        return out

    def create(self, name: str, dim: int) -> None:
        check_new_space(name, dim, self.spaces())
        self.collection(name, dim)
        self._put(name, dim, "")

    def add_vectors(self, name: str, ids: Sequence[int], vectors: np.ndarray
                    ) -> dict[str, list[int]]:
        _, dim = self.dim_of(name)
        collection = self.collection(name, dim)
        wanted = list(dict.fromkeys(int(i) for i in ids))
        rows = self.store.rows_of_ids(wanted, ("id",), "item check before space vectors")
        live = {i for i in wanted if i in rows and -i not in rows}
        have: set[int] = set()
        for part in _chunks(sorted(live)):
            try:
                found = collection.query(f"id in {_ints(part)}", output_fields=["id"],
                                         timeout=self.store.timeout,
                                         consistency_level="Strong")
            except _FAILURES as exc:
                raise self._failed("space vectors read", exc, True) from exc
            have.update(int(r["id"]) for r in found)
        outcome: dict[str, list[int]] = {"added": [], "exists": [], "missing": []}
        new_rows: list[int] = []
        for row, item in enumerate(int(i) for i in ids):
            if item not in live:
                outcome["missing"].append(item)
            elif item in have:
                outcome["exists"].append(item)
            else:
                have.add(item)
                outcome["added"].append(item)
                new_rows.append(row)
        if new_rows:
            data = [outcome["added"], np.asarray(vectors[new_rows], dtype=np.float32)]
            try:
                collection.upsert(data, timeout=self.store.timeout)
                for part in _chunks(outcome["added"]):
                    collection.query(f"id in {_ints(part)}", output_fields=["id"],
                                     timeout=self.store.timeout, consistency_level="Strong")
            except _FAILURES as exc:
                raise self._failed("space vectors write", exc, None) from exc
        return outcome

    def pending(self, name: str, after: int, limit: int) -> dict[str, Any]:
        """Live items past id ``after`` with no vector in ``name`` (in id order: the items'
        collection is read with a query iterator, which walks the primary key)."""
        live, _ = self.store.counts()
        if name == BUILTIN:
            self.dim_of(name)
            return {"items": [], "done": live, "total": live}
        _, dim = self.dim_of(name)
        collection = self.collection(name, dim)
        found: list[dict[str, Any]] = []
        try:
            iterator = self.store.collection.query_iterator(
                batch_size=1000, expr=f"id > {int(after)}", output_fields=["id", "key", "path"],
                timeout=self.store.timeout, consistency_level="Eventually")
            while len(found) < limit:
                rows = iterator.next()
                if not rows:
                    break
                ids = [int(r["id"]) for r in rows]
                dead = {-int(r["id"]) for r in self.store.rows_of_ids(
                    [-i for i in ids], ("id",), "space progress").values()}
                have = {int(r["id"]) for r in collection.query(
                    f"id in {_ints(ids)}", output_fields=["id"], timeout=self.store.timeout,
                    consistency_level="Eventually")}
                found.extend({"id": int(r["id"]), "key": str(r["key"]), "path": str(r["path"])}
                             for r in rows if int(r["id"]) not in have | dead)
            iterator.close()
        except _FAILURES as exc:
            raise self._failed("space progress", exc, True) from exc
        found.sort(key=lambda r: r["id"])
        return {"items": found[:limit], "done": self.count(name, dim), "total": live}

    def vector(self, name: str | None, item_id: int) -> tuple[str, np.ndarray | None]:
        """A live item's vector in the space ``name`` (the active one for None)."""
        chosen, dim = self.dim_of(name)
        if chosen == BUILTIN:
            return chosen, self.store.get_vector(item_id)
        rows = self.store.rows_of_ids([item_id], ("id",), "vector read")
        if item_id not in rows or -item_id in rows:  # never added, or a tombstone
            return chosen, None
        return chosen, self._vectors(self.collection(chosen, dim), [item_id]).get(item_id)

    def activate(self, name: str) -> None:
        self.dim_of(name)
        self._put(_ACTIVE_ROW, 0, name)
        self._active = (name, time.monotonic())

    def drop(self, name: str) -> None:
        self.dim_of(name)
        if name == BUILTIN:
            raise GlimpseError(ErrorType.conflict, f"Space {name!r} is the items' own "
                               "vectors; it cannot be dropped.")
        self._active = None
        if self.active() == name:
            raise GlimpseError(ErrorType.conflict, f"Space {name!r} is active; activate "
                               "another space before dropping it.")
        try:
            self.registry().delete(f'name in ["{name}"]', timeout=self.store.timeout)
            utility.drop_collection(self._collection_name(name), using=self.store.alias,
                                    timeout=self.store.timeout)
        except _FAILURES as exc:
            raise self._failed("space drop", exc, None) from exc
        self._collections.pop(name, None)

    def forget(self, item_id: int) -> None:
        """A deleted item's vectors leave every space (searches skip them anyway: they read
        the item's tombstone)."""
        try:
            if self._registry is None and not utility.has_collection(
                    f"{self.base}_spaces", using=self.store.alias, timeout=self.store.timeout):
                return  # no space was ever made: no registry to create for a delete
        except _FAILURES as exc:
            raise self._failed("space delete", exc, None) from exc
        for name, dim in self.spaces().items():
            try:
                self.collection(name, dim).delete(f"id in [{int(item_id)}]",
                                                  timeout=self.store.timeout)
            except _FAILURES as exc:
                raise self._failed("space delete", exc, None) from exc

    def search(self, name: str, queries: np.ndarray, k: int, *, nprobe: int | None,
               exact: bool, exclude: Sequence[int], filters: SearchFilters | None) -> Records:
        """Top ``k`` live hits per unit query in the space, scored with its exact vectors."""
        _, dim = self.dim_of(name)
        collection = self.collection(name, dim)
        spread = _FILTER_SPREAD if filters is not None else 1
        expr = "id > 0" + (f" and id not in {_ints(exclude)}" if exclude else "")
        try:
            if exact:
                candidates = self._exact(collection, expr, queries, spread * k + _SPARE)
            else:
                index = collection.index().params
                limit = min(16_384, spread * k + _SPARE)
                params = ({"ef": max(nprobe or 128, limit)} if index.get("index_type") == "HNSW"
                          else {"nprobe": nprobe or 16})
                results = collection.search(queries, "vector",
                                            {"metric_type": "IP", "params": params},
                                            limit=limit, expr=expr, timeout=self.store.timeout,
                                            consistency_level="Eventually")
                candidates = [list(hits.ids) for hits in results]
        except _FAILURES as exc:
            raise self._failed("space search", exc, True) from exc
        ids = list(dict.fromkeys(i for row in candidates for i in row))
        items = self.store.rows_of_ids(ids, ("id", "path", "meta"), "search")
        vectors = self._vectors(collection, [i for i in ids if i in items and -i not in items])
        out: Records = []
        for q, row in zip(queries, candidates, strict=True):
            hits = []
            for i in row:
                if i not in vectors:
                    continue
                path, meta = str(items[i]["path"]), items[i]["meta"] or {}
                if filters is not None and not matches(filters, path, meta):
                    continue
                hits.append((float(vectors[i] @ q), i, path, meta))
            hits.sort(key=lambda h: (-h[0], h[1]))
            out.append([{"id": i, "score": s, "path": p, "meta": m} for s, i, p, m in hits[:k]])
        return out

    def _exact(self, collection: Collection, expr: str, queries: np.ndarray, want: int
               ) -> list[list[int]]:
        """The best ``want`` ids per query over every vector of the space, read a batch at a
        time (a query iterator: one query may not answer more than Milvus's result window)."""
        best: list[list[tuple[float, int]]] = [[] for _ in queries]
        iterator = collection.query_iterator(batch_size=4096, expr=expr,
                                             output_fields=["id", "vector"],
                                             timeout=self.store.timeout,
                                             consistency_level="Eventually")
        while rows := iterator.next():
            ids = [int(r["id"]) for r in rows]
            scores = queries.astype(np.float32) @ np.asarray(
                [r["vector"] for r in rows], dtype=np.float32).T
            for n, row in enumerate(scores.tolist()):
                best[n] = sorted(best[n] + list(zip(row, ids, strict=True)), reverse=True)[:want]
        iterator.close()
        return [[i for _, i in row] for row in best]

    def vectors(self, name: str | None, ids: Sequence[int]) -> tuple[str, dict[int, np.ndarray]]:
        """The space ``name`` (the active one for None) and its vectors of the live ``ids``."""
        chosen, dim = self.dim_of(name)
        if chosen == BUILTIN:
            rows = self.store.rows_of_ids(list(ids), ("id", "vector"), "vector read")
            found = {i: builtin_vector(rows[i]["vector"])
                     for i in ids if i in rows and -i not in rows}
            return chosen, {i: v for i, v in found.items() if v is not None}
        return chosen, self._vectors(self.collection(chosen, dim), ids)

    def _vectors(self, collection: Collection, ids: Sequence[int]) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        for part in _chunks(list(ids)):
            try:
                rows = collection.query(f"id in {_ints(part)}", output_fields=["id", "vector"],
                                        timeout=self.store.timeout,
                                        consistency_level="Eventually")
            except _FAILURES as exc:
                raise self._failed("space search", exc, True) from exc
            for r in rows:
                out[int(r["id"])] = np.asarray(r["vector"], dtype=np.float32)
        return out


class MilvusSpacesMixin:
    """The space operations of ``MilvusIndexService`` (backend.py), over ``store.spaces``."""

    store: MilvusStore

    def space_of(self, name: str | None) -> tuple[str, int]:
        return self.store.spaces.dim_of(name)

    def list_spaces(self) -> list[dict[str, Any]]:
        return self.store.spaces.listing()

    def create_space(self, name: str, dim: int) -> None:
        self.store.spaces.create(name, dim)

    def add_space_vectors(self, name: str, ids: Sequence[int], vectors: np.ndarray
                          ) -> dict[str, list[int]]:
        return self.store.spaces.add_vectors(name, ids, vectors)

    def space_pending(self, name: str, after: int, limit: int) -> dict[str, Any]:
        return self.store.spaces.pending(name, after, limit)

    def space_vector(self, name: str | None, item_id: int) -> tuple[str, np.ndarray | None]:
        return self.store.spaces.vector(name, item_id)

    def space_vectors(self, name: str | None, ids: Sequence[int]
                      ) -> tuple[str, dict[int, np.ndarray]]:
        return self.store.spaces.vectors(name, ids)

    def activate_space(self, name: str) -> None:
        self.store.spaces.activate(name)

    def drop_space(self, name: str) -> None:
        self.store.spaces.drop(name)
