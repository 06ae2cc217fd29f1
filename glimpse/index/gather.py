"""Gathering concurrent searches into one backend call, for both backends.

Worker threads take the searches queued when they take work, group those that can share a call
(same nprobe and exactness for Faiss; for Milvus the same k and excluded ids too), and hand each
group to the backend as one call. A lone search waits for nothing. Faiss gathers on one thread
in front of a GPU (one owner thread anyway); Milvus on a few, since its CPU per call is mostly
fixed (proxy, query node, reduce), so fewer calls cut its CPU per search.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Search:
    """One queued search request."""

    queries: np.ndarray  # unit query vectors, one per row
    k: int
    nprobe: int | None
    exact: bool
    exclude: tuple[int, ...] = ()
    # Faiss: turns this search's rows of the group's (scores, ids) into its answer.
    finish: Callable[[np.ndarray, np.ndarray], Any] | None = None
    future: Future[Any] = field(default_factory=Future, compare=False)


def by_breadth(search: Search) -> Hashable:
    """The group key of searches that can share a Faiss call (k is cut per search after)."""
    return (search.nprobe, search.exact)


def by_everything(search: Search) -> Hashable:
    """The group key of searches that can share a Milvus call."""
    return (search.k, search.nprobe, search.exact, search.exclude)


# One group's searches -> one answer per search, or the exception that search alone gets.
RunGroup = Callable[[Sequence[Search]], Sequence[Any]]


class SearchGatherer:
    """``threads`` workers running queued searches through ``run`` in groups (``key``)."""

    def __init__(self, run: RunGroup, *, key: Callable[[Search], Hashable] = by_breadth,
                 threads: int = 1, max_rows: int = 512, name: str = "index-search") -> None:
        self.run = run
        self.key = key
        self.max_rows = max_rows
        self.calls = 0
        self.requests = 0
        self._queue: queue.SimpleQueue[Search | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{n}", daemon=True)
                         for n in range(threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, search: Search) -> Future[Any]:
        """Queue ``search``; its future resolves on a worker thread (the event loop can await
        it without a thread of its own)."""
        self._queue.put(search)
        return search.future

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(10)

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            rows = len(first.queries)
            while rows < self.max_rows:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # a stop for this or another worker: after the batch
                    break
                batch.append(item)
                rows += len(item.queries)
            groups: dict[Hashable, list[Search]] = {}
            for item in batch:
                groups.setdefault(self.key(item), []).append(item)
            for searches in groups.values():
                self._run_group(searches)

    def _run_group(self, searches: list[Search]) -> None:
        # A caller that stopped waiting cancelled its future: it is not run, and the rest can no
        # longer be cancelled, so setting their answers cannot raise and end this worker.
        searches = [s for s in searches if s.future.set_running_or_notify_cancel()]
        if not searches:
            return
        self.calls += 1
        self.requests += len(searches)
        try:
            answers = self.run(searches)
        except BaseException as exc:  # noqa: BLE001 - each waiting request gets the error
            for search in searches:
                search.future.set_exception(exc)
            return
        for search, answer in zip(searches, answers, strict=True):
            if isinstance(answer, BaseException):
                search.future.set_exception(answer)
            else:
                search.future.set_result(answer)
