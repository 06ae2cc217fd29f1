"""What the HTTP API needs of an index backend (INDEX_BACKEND picks one in main.py).

Both ``IndexService`` (SQLite + Faiss in this process) and ``MilvusIndexService`` (a Milvus
collection) offer it; every method blocks, and the routes call them from worker threads.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from glimpse.contracts.filters import SearchFilters
from glimpse.index.config import Settings
from glimpse.index.store import AddOutcome, NewItem, Record

if TYPE_CHECKING:
    from glimpse.index.service import SnapshotResult

Records = list[list[dict[str, Any]]]


class ItemReader(Protocol):
    """The item lookups the routes answer from the backend's store."""

    def missing_keys(self, keys: Sequence[str]) -> list[str]: ...

    def live_ids(self, keys: Sequence[str]) -> dict[str, int]: ...

    def get(self, item_id: int) -> Record | None: ...

    def get_vector(self, item_id: int) -> np.ndarray | None: ...

    def page(self, after: int, limit: int) -> list[tuple[Record, np.ndarray]]:
        """The live items past id ``after``, in id order, with their vectors."""


class IndexBackend(Protocol):
    """An index the routes can serve: writes, searches, item reads, ops and readiness."""

    @property
    def settings(self) -> Settings: ...

    @property
    def ready(self) -> threading.Event:
        """Set once loaded (Faiss) or connected (Milvus)."""

    @property
    def waiting_for(self) -> str | None:
        """Why the backend is not ready yet while it keeps trying (Milvus unreachable)."""

    @property
    def training(self) -> bool:
        """A background training is running (what /readyz reports)."""

    @property
    def store(self) -> ItemReader | None:
        """The items; None before ``open`` (Faiss)."""

    def open(self) -> None: ...

    def close(self) -> None: ...

    def add(self, items: Sequence[NewItem], space: str | None = None) -> list[AddOutcome]:
        """Add items; a named ``space`` only where the built-in one is optional."""

    def delete(self, item_id: int) -> bool: ...

    def update(self, item_id: int, path: str | None, meta: dict[str, Any] | None
               ) -> Record | None:
        """Set a live item's path and/or meta (None keeps it); its record, None if not live."""

    def submit_search_records(
        self, queries: np.ndarray, k: int, *, nprobe: int | None = None, exact: bool = False,
        exclude: Sequence[int] = (), filters: SearchFilters | None = None,
    ) -> Future[Records]: ...

    # Named spaces (spaces.py): another model's vectors over the same items, one active.

    def space_of(self, name: str | None) -> tuple[str, int]:
        """The space ``name`` (the active one for None) and its dimension; 404 if unknown."""

    def list_spaces(self) -> list[dict[str, Any]]: ...

    def create_space(self, name: str, dim: int) -> None: ...

    def add_space_vectors(self, name: str, ids: Sequence[int], vectors: np.ndarray
                          ) -> dict[str, list[int]]:
        """Unit float16 ``vectors`` of existing ``ids``; the ids by outcome (added, exists,
        missing)."""

    def space_pending(self, name: str, after: int, limit: int) -> dict[str, Any]:
        """{"items": [{id, key, path}] of live items past ``after`` with no vector in the
        space, in id order; "done": items with one; "total": live items}."""

    def space_vector(self, name: str | None, item_id: int) -> tuple[str, np.ndarray | None]:
        """The space ``name`` (the active one for None) and a live item's stored vector in
        it (None: not live, or no vector there yet)."""

    def space_vectors(self, name: str | None, ids: Sequence[int]
                      ) -> tuple[str, dict[int, np.ndarray]]:
        """The space ``name`` (the active one for None) and the stored vectors it holds for
        the live items among ``ids`` (an item without one there is left out)."""

    def activate_space(self, name: str) -> None: ...

    def drop_space(self, name: str) -> None: ...

    def submit_space_search(
        self, name: str, queries: np.ndarray, k: int, *, nprobe: int | None = None,
        exact: bool = False, exclude: Sequence[int] = (), filters: SearchFilters | None = None,
        detail: int | None = None,
    ) -> Future[Records]: ...

    def submit_words_search(
        self, name: str, queries: np.ndarray, k: int, words: str, words_k: int, *,
        nprobe: int | None = None, exact: bool = False, exclude: Sequence[int] = (),
        filters: SearchFilters | None = None, detail: int | None = None,
    ) -> Future[tuple[Records, list[dict[str, Any]]]]:
        """:meth:`submit_space_search` and the top ``words_k`` keyword hits of ``words``
        (keywords.py), as one future."""

    def rebuild(self, factory: str | None, wait: bool) -> tuple[bool, str]: ...

    def snapshot(self) -> SnapshotResult: ...

    def tune(self, target: float, sample: int, k: int = 10, apply: bool = True
             ) -> dict[str, Any]: ...

    def facets(self) -> dict[str, Any]: ...

    def stats(self) -> dict[str, Any]: ...
