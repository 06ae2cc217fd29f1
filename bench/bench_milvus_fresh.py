#!/usr/bin/env python3
"""Milvus recall right after an ingest (issue 26): recall@10 and one-query p50 of the index
service on Milvus while the added rows are still in growing segments, against Milvus's own
answer at that moment (its interim IVF index) and against both once a flush has sealed them and
Milvus serves them indexed.

The embedded Milvus of the `milvus-server` extra runs in a temp dir; the service runs
in-process with its default settings. The seal on idle is held off during the first
measurement (so the fresh window is open for its whole length), then let run.

    python bench/bench_milvus_fresh.py --base data/real/docstrings.npy \\
        --queries data/real/docstrings_queries.npy           # bench/real_sets.py output

Rows are appended to bench/results/bench_milvus_fresh.csv.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import append_rows, real_set, real_set_parser, recall  # noqa: E402
from glimpse.index import milvus_store  # noqa: E402
from glimpse.index.config import MilvusSettings, Settings  # noqa: E402
from glimpse.index.milvus_service import MilvusIndexService  # noqa: E402
from glimpse.index.store import NewItem  # noqa: E402
from tests.support.milvus import EmbeddedMilvus  # noqa: E402

OUT = REPO / "bench" / "results" / "bench_milvus_fresh.csv"


def measure(svc: MilvusIndexService, queries: np.ndarray, truth: np.ndarray
            ) -> dict[str, float]:
    """Service recall and p50 (one query at a time), and Milvus's own ANN recall."""
    times, found = [], []
    for q in queries:
        start = time.perf_counter()
        rows = svc.search_records(q[None], 10)
        times.append(time.perf_counter() - start)
        found.append([h["id"] for h in rows[0]])
    raw = svc.store.search_candidates(queries, 10, svc.search_params(10, None), ())
    return {"service": recall(found, truth, 10), "p50_ms": statistics.median(times) * 1000,
            "milvus": recall([[i for i, _ in row] for row in raw], truth, 10)}


def main(argv: list[str] | None = None) -> int:
    args = real_set_parser(__doc__.splitlines()[0]).parse_args(argv)
    base, queries = real_set(args)
    n, dim = base.shape
    work = Path(tempfile.mkdtemp(prefix="bench-milvus-fresh-"))
    server = EmbeddedMilvus(work / "milvus").start()
    idle = milvus_store.SEAL_IDLE_S
    milvus_store.SEAL_IDLE_S = 1e9  # held off: the window stays open for the first run
    try:
        svc = MilvusIndexService(Settings(backend="milvus", dim=dim, data_dir=work / "d"),
                                 MilvusSettings(uri=server.uri, collection="fresh",
                                                timeout_s=30))
        svc.open()
        ids: list[int] = []
        for start in range(0, n, 1000):
            ids += [o.id for o in svc.add([NewItem(f"k{i}", f"/p/{i}.txt", {}, base[i])
                                           for i in range(start, min(n, start + 1000))])]
        truth = np.asarray(ids)[np.argsort(-(queries @ base.T), axis=1)[:, :10]]
        assert svc.store.fresh_since is not None
        fresh = measure(svc, queries, truth)
        print(f"right after the adds: service {fresh}", flush=True)
        milvus_store.SEAL_IDLE_S = idle
        began = time.perf_counter()
        while svc.store.fresh_since is not None:
            time.sleep(0.2)
        sealed_s = time.perf_counter() - began
        sealed = measure(svc, queries, truth)
        print(f"sealed and served indexed after {sealed_s:.1f} s: {sealed}", flush=True)
        svc.close()
    finally:
        milvus_store.SEAL_IDLE_S = idle
        server.stop()
    if args.no_write:
        return 0
    what = f"Milvus 2.3.5 HNSW, {args.base.stem} {n}x{dim}, {{}}, 1 client"
    common = {"note": args.note}
    rows: list[dict[str, Any]] = []
    for when, m in (("right after the adds", fresh), ("after the seal on idle", sealed)):
        rows.append({**common, "what": what.format(f"recall@10 {when}"), "variant": "glimpse",
                     "value": f"{m['service']:.3f}", "unit": "recall"})
        rows.append({**common, "what": what.format(f"recall@10 {when}"),
                     "variant": "Milvus search alone", "value": f"{m['milvus']:.3f}",
                     "unit": "recall"})
        rows.append({**common, "what": what.format(f"p50 {when}"), "variant": "glimpse",
                     "value": f"{m['p50_ms']:.1f}", "unit": "ms"})
    rows.append({**common, "what": what.format("seal: flush until served indexed"),
                 "variant": "glimpse", "value": f"{sealed_s:.1f}", "unit": "s"})
    append_rows(OUT, rows, "python bench/bench_milvus_fresh.py " + " ".join(argv or sys.argv[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
