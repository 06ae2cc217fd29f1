"""Issue 25 against a live index process: factory strings that crashed Faiss (F6), meta that
could be stored but not served back (F5), keys outside the documented format (F9).

Each bad request must get a 4xx naming the problem, and the same process must still be alive
and answering searches afterwards (``HNSW1`` used to segfault it, ``HNSW0`` to abort it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.reliability._services import IndexAPI, index_process, unit_vectors
from tests.support.procs import ServiceProcess

# Malformed and degenerate strings; the first six are the list.
BAD_FACTORIES = [
    "HNSW1", "HNSW0", "IVF0,Flat", "PQ0", "IVF1,PQ3x8", "OPQ7,IVF4,PQ2",
    "", " ", "garbage", "HNSW", "HNSW-1", "HNSW99999", "IVF,Flat", "IVF-4,Flat",
    "IVF4,PQ0", "IVF4,PQ64x16", "IVF4,PQ8x8fs", "IVF4_HNSW1,Flat", "IVF4000000,Flat",
    "IVF100000,Flat",  # more lists than the 1200 items
    "IVF4,PQ8,RFlat", "OPQ0,IVF4,PQ8", "OPQ8_0,IVF4,PQ8", "IDMap,Flat", "LSH", "PCA32,Flat",
    "IVF4,Flat,Flat", "Flat\x00", "IVF4,PQ8x4fs\n", "x" * 5000,
]


def _alive_and_searching(proc: ServiceProcess, api: IndexAPI, queries: np.ndarray) -> None:
    assert proc.proc is not None and proc.proc.poll() is None, proc.log_tail()
    hits = api.search(queries, 5)
    assert all(len(row) == 5 for row in hits)


@pytest.mark.timeout(300)
def test_bad_factory_strings_are_422_and_the_process_lives(
    start_index: Callable[..., ServiceProcess], figure: Any,
) -> None:
    proc = start_index()
    rng = np.random.default_rng(25)
    x = unit_vectors(1200, rng)
    with IndexAPI(proc.url) as api:
        api.add([f"k{i}" for i in range(len(x))], x)
        refused = 0
        for factory in BAD_FACTORIES:
            for wait in (True, False):
                r = api.rebuild(factory, wait=wait)
                assert r.status_code == 422, (factory, r.status_code, r.text)
                body = r.json()
                assert body["error_type"] == "validation_error" and body["details"] is not None
                assert "factory" in body["error"], body
                refused += 1
            _alive_and_searching(proc, api, x[:3])
        stats = api.stats()
        assert stats["kind"] == "flat" and stats["count"] == 1200 and not stats["training"]

        # A good forced factory still trains, and "auto" goes back to the automatic rule.
        forced = api.rebuild("HNSW16")
        assert forced.status_code == 200, forced.text
        assert api.stats()["factory_override"] == "HNSW16"
        _alive_and_searching(proc, api, x[:3])
        back = api.rebuild("auto")
        assert back.status_code == 200, back.text
        stats = api.stats()
        assert stats["factory_override"] is None and stats["factory"] != "HNSW16"
        _alive_and_searching(proc, api, x[:3])
    figure(bad_factories=len(BAD_FACTORIES), refusals=refused, process_alive=True)


def test_a_bad_index_factory_setting_stops_the_start_with_a_sentence(tmp_path: Path) -> None:
    proc = index_process(tmp_path, tmp_path / "data", INDEX_FACTORY="HNSW1")
    with pytest.raises(RuntimeError, match="exited with"):
        proc.start(60)
    assert "INDEX_FACTORY: HNSW's M (links per node) is 1" in proc.log_tail()
    assert "Segmentation fault" not in proc.log_tail()


def test_deep_meta_and_odd_keys_are_refused_and_the_index_keeps_serving(
    start_index: Callable[..., ServiceProcess],
) -> None:
    proc = start_index()
    rng = np.random.default_rng(5)
    x = unit_vectors(4, rng)
    deep: dict[str, Any] = {"leaf": 1}
    for _ in range(300):  # F5's reproducer: stored, then every search hitting it failed
        deep = {"a": deep}
    with IndexAPI(proc.url) as api:
        api.add(["a1", "a2"], x[:2])
        r = api.add_raw([{"vector": x[2].tolist(), "key": "deep", "path": "d", "meta": deep}])
        assert r.status_code == 422 and "meta nests" in r.json()["error"], r.text
        r = api.add_raw([{"vector": x[3].tolist(), "key": "../etc/passwd", "path": "p"}])
        assert r.status_code == 422 and "items.0.key" in r.json()["error"], r.text
        too_deep = "[" * 100_000 + "]" * 100_000
        r = api.http.post("/v1/items", content=too_deep,
                          headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, r.text
        assert api.stats()["count"] == 2
        _alive_and_searching_k(api, x[:1], 2)


def _alive_and_searching_k(api: IndexAPI, queries: np.ndarray, k: int) -> None:
    hits = api.search(queries, k)
    assert [len(row) for row in hits] == [k] * len(queries)


def test_bad_factories_through_the_gateway_admin_route(stack: Any, writer: Any) -> None:
    """F6 as it was found: through the gateway's /admin/index/rebuild, with the write key."""
    for factory in BAD_FACTORIES[:6]:
        r = writer.post("/admin/index/rebuild", json={"factory": factory, "wait": True})
        assert r.status_code == 422, (factory, r.status_code, r.text)
        assert r.json()["error_type"] == "validation_error" and "factory" in r.json()["error"]
    assert stack.index.proc.poll() is None, stack.index.log_tail()
    with IndexAPI(stack.index.url) as api:
        assert api.stats()["training"] is False
