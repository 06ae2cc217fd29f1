"""RELIABILITY.md #4: recall@10 against exact search, before and after a restart.

A trained IVF-PQ index (with re-ranking) over clustered vectors. The same 100 queries are run
before and after (a) a graceful restart, (b) a kill -9 after a snapshot, (c) a kill -9 with
rows written after the snapshot (replayed at start). Figure: recall@10 at each point, which
must be identical, and the hits themselves identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.reliability._services import DIM, IndexAPI, index_process, wait_until


def _clustered(n: int, rng: np.random.Generator, centers: np.ndarray) -> np.ndarray:
    picks = centers[rng.integers(0, len(centers), n)]
    m = picks + 0.35 * rng.standard_normal((n, DIM)).astype(np.float32) / np.sqrt(DIM)
    return (m / np.linalg.norm(m, axis=1, keepdims=True)).astype(np.float32)


def _ids(results: list[list[dict[str, Any]]]) -> list[list[int]]:
    return [[h["id"] for h in hits] for hits in results]


def _recall(got: list[list[int]], truth: list[list[int]]) -> float:
    return float(np.mean([len(set(g) & set(t)) / len(t) for g, t in zip(got, truth,
                                                                         strict=True)]))


@pytest.mark.slow
@pytest.mark.timeout(900)  # restarts take seconds each on a loaded machine
def test_recall_identical_across_restarts(tmp_path: Path, figure: Any) -> None:
    rng = np.random.default_rng(4)
    centers = rng.standard_normal((40, DIM)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    data = _clustered(4000, rng, centers)
    queries = _clustered(100, rng, centers)
    proc = index_process(tmp_path, tmp_path / "data", INDEX_TRAIN_THRESHOLD="2000")
    proc.start(90)
    figures: dict[str, Any] = {}
    try:
        with IndexAPI(proc.url) as api:
            for s in range(0, len(data), 500):
                api.add([f"r{i}" for i in range(s, s + 500)], data[s : s + 500])
            wait_until(lambda: api.stats()["kind"] != "flat" and not api.stats()["training"],
                       timeout=120, interval=0.5, what="IVF-PQ training")
            stats = api.stats()
            truth = _ids(api.search(queries, k=10, exact=True))
            before = _ids(api.search(queries, k=10))
            figures.update(kind=stats["kind"], factory=stats["factory"],
                           nprobe=stats.get("nprobe"), recall_before=_recall(before, truth))
            assert api.snapshot().status_code == 200

        proc.stop()
        proc.start(90)
        with IndexAPI(proc.url) as api:
            assert api.stats()["kind"] == stats["kind"]
            after_graceful = _ids(api.search(queries, k=10))

        proc.kill()
        proc.start(90)
        with IndexAPI(proc.url) as api:
            after_kill = _ids(api.search(queries, k=10))
            # Rows written after the snapshot, then a crash: they are replayed at start.
            extra = _clustered(300, rng, centers)
            api.add([f"x{i}" for i in range(300)], extra)
            truth2 = _ids(api.search(queries, k=10, exact=True))
            before2 = _ids(api.search(queries, k=10))
        proc.kill()
        proc.start(90)
        with IndexAPI(proc.url) as api:
            after_replay = _ids(api.search(queries, k=10))
            truth2_after = _ids(api.search(queries, k=10, exact=True))
            retrained = api.stats()["factory"] != stats["factory"]
    finally:
        proc.kill()
    figures.update(
        recall_after_graceful=_recall(after_graceful, truth),
        recall_after_kill9=_recall(after_kill, truth),
        recall_before_replay=_recall(before2, truth2),
        recall_after_kill9_replay=_recall(after_replay, truth2),
        retrained_at_start=retrained,
    )
    figure(**figures)
    assert figures["recall_before"] > 0.5, figures  # a real approximate index, not noise
    assert after_graceful == before
    assert after_kill == before
    assert truth2_after == truth2
    assert after_replay == before2
