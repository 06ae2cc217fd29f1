"""The search gatherer both backends share (glimpse/index/gather.py)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from glimpse.index.gather import Search, SearchGatherer, by_breadth, by_everything


def _search(rows: int, k: int = 3, nprobe: int | None = None, exclude: tuple[int, ...] = ()
            ) -> Search:
    return Search(np.zeros((rows, 4), dtype=np.float32), k, nprobe, False, exclude)


def test_queued_searches_share_a_call_per_group_and_get_their_own_rows() -> None:
    entered, gate = threading.Event(), threading.Event()
    calls: list[list[int]] = []

    def run(searches: Sequence[Search]) -> list[Any]:
        entered.set()
        gate.wait(5)  # the first call holds the worker until the rest are queued
        calls.append([len(s.queries) for s in searches])
        return [(s.nprobe, len(s.queries)) for s in searches]

    gatherer = SearchGatherer(run)
    try:
        first = gatherer.submit(_search(1))
        assert entered.wait(5)
        rest = [gatherer.submit(_search(n, nprobe=p)) for n, p in
                [(2, None), (3, 8), (4, None), (5, 8)]]
        gate.set()
        assert first.result(5) == (None, 1)
        assert [f.result(5) for f in rest] == [(None, 2), (8, 3), (None, 4), (8, 5)]
    finally:
        gatherer.close()
    # A lone first search, then one call per breadth for the four that queued meanwhile.
    assert calls == [[1], [2, 4], [3, 5]]
    assert (gatherer.calls, gatherer.requests) == (3, 5)


def test_one_search_failing_fails_only_itself_and_a_failed_call_fails_its_group() -> None:
    def run(searches: Sequence[Search]) -> list[Any]:
        if any(s.k == 0 for s in searches):
            raise RuntimeError("the call failed")
        return [ValueError("this one") if s.k == 2 else s.k for s in searches]

    gatherer = SearchGatherer(run, threads=2)
    try:
        assert gatherer.submit(_search(1, k=3)).result(5) == 3
        with pytest.raises(ValueError, match="this one"):
            gatherer.submit(_search(1, k=2)).result(5)
        with pytest.raises(RuntimeError, match="the call failed"):
            gatherer.submit(_search(1, k=0)).result(5)
    finally:
        gatherer.close()


def test_group_keys() -> None:
    a, b = _search(1, k=3, exclude=(1,)), _search(2, k=5)
    assert by_breadth(a) == by_breadth(b)  # Faiss cuts k per search after one call
    assert by_everything(a) != by_everything(b)  # Milvus's call takes k and the exclusions


def test_a_cancelled_search_is_skipped_and_the_worker_lives_on() -> None:
    """A caller that stops waiting cancels its future (asyncio.wrap_future does): one queued is not
    run, one already running keeps its answer, and the worker keeps serving."""
    entered, gate = threading.Event(), threading.Event()
    ran: list[int] = []

    def run(searches: Sequence[Search]) -> list[Any]:
        entered.set()
        gate.wait(5)
        ran.extend(s.k for s in searches)
        return [s.k for s in searches]

    gatherer = SearchGatherer(run)
    try:
        running = gatherer.submit(_search(1, k=1))
        assert entered.wait(5)
        queued = gatherer.submit(_search(1, k=2))
        assert queued.cancel()
        assert not running.cancel()  # already running: it is answered
        gate.set()
        assert running.result(5) == 1
        assert gatherer.submit(_search(1, k=3)).result(5) == 3
    finally:
        gatherer.close()
    assert ran == [1, 3]
