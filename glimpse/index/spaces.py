"""Named spaces of the Faiss backend: another model's vectors over the same items.

The items (ids, keys, paths, meta) are shared; a space holds one vector per item, of its own
dimension, in the store's ``space_vectors`` table, and its own ``VectorIndex`` (an exact index
while small, trained past the threshold like the built-in one). The built-in space, named
``default``, is the items' own vectors (INDEX_DIM): it is always there and cannot be dropped.
One space is active: the one a search without a space name is answered from; switching it is
one committed setting and one assignment, so every search sees the old space or the new one.

Spaces are durable through the store (SQLite): at start each is rebuilt from its vectors
there; they have no Faiss snapshot of their own.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glimpse.contracts.errors import ErrorType, GlimpseError
from glimpse.index.live import LiveIndex, build_empty
from glimpse.index.store import Changes, Store

BUILTIN = "default"
ACTIVE_KEY = "active_space"
#: A space's name: what Milvus accepts in a collection name, too.
NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_]{0,62}$"
_NAME = re.compile(NAME_PATTERN)
MAX_DIM = 4096


def check_new_space(name: str, dim: int, existing: dict[str, int]) -> None:
    """Refuse a space that cannot be created, with a sentence naming the problem."""
    if not _NAME.fullmatch(name):
        raise GlimpseError(
            ErrorType.validation_error,
            f"Space name {name!r} is not valid: 1 to 63 letters, digits or '_', starting with "
            "a letter.",
        )
    if not 1 <= dim <= MAX_DIM:
        raise GlimpseError(ErrorType.validation_error,
                           f"dim is {dim}; it must be between 1 and {MAX_DIM}.")
    if name == BUILTIN or name in existing:
        have = existing.get(name)
        raise GlimpseError(ErrorType.conflict, f"Space {name!r} exists already"
                           + (f" with dim {have}." if have is not None else " (built in)."))


def unknown_space(name: str, names: Sequence[str]) -> GlimpseError:
    return GlimpseError(ErrorType.not_found,
                        f"No space named {name!r}; the spaces are: {', '.join(names)}.")


class SpaceStore:
    """The store as a ``VectorIndex`` reads it, for one named space's vectors."""

    def __init__(self, store: Store, name: str, dim: int) -> None:
        self.base, self.name, self.dim = store, name, dim

    @property
    def path(self) -> Path:  # filters.py reads the items' meta from the same file
        return self.base.path

    def max_id(self) -> int:
        return self.base.max_id()

    def iter_live(self, max_seq: int | None = None, chunk: int = 65_536
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self.base.space_iter_live(self.name, self.dim, max_seq, chunk)

    def iter_live_ids(self, chunk: int = 65_536) -> Iterator[np.ndarray]:
        for ids, _ in self.iter_live(chunk=chunk):
            yield ids

    def changes_since(self, seq: int) -> Changes:
        return self.base.space_changes_since(self.name, self.dim, seq)

    def vectors_of(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        return self.base.space_vectors_of(self.name, ids)

    def get_vector(self, item_id: int) -> np.ndarray | None:
        found = self.vectors_of([item_id]).get(item_id)
        return None if found is None else found.astype(np.float32)


@dataclass
class Space:
    """One named space as the service holds it: its store view and its index (``index`` is a
    ``VectorIndex``; typed loosely to keep this module free of the service's imports)."""

    name: str
    dim: int
    view: SpaceStore
    index: Any


def load_index(index: Any, view: SpaceStore, seq: int) -> None:
    """Fill a fresh ``VectorIndex`` exactly from the space's vectors in the store."""
    index.load_table()
    flat = build_empty("Flat", view.dim)
    for ids, vectors in view.iter_live():
        flat.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
    index.install(LiveIndex(flat, "Flat"), seq)


class ActiveSpace:
    """The name of the active space: committed to the store, then swapped in one assignment."""

    def __init__(self, store: Store, names: Sequence[str]) -> None:
        self._lock = threading.Lock()
        saved = store.info(ACTIVE_KEY)
        self.name: str = saved if saved is not None and saved in names else BUILTIN

    def set(self, store: Store, name: str) -> None:
        with self._lock:
            store.set_info(ACTIVE_KEY, name)
            self.name = name
