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

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from glimpse.index import milvus_store  # noqa: E402
from glimpse.index.config import MilvusSettings, Settings  # noqa: E402
from glimpse.index.milvus_service import MilvusIndexService  # noqa: E402
from glimpse.index.store import NewItem  # noqa: E402
from tests.support.milvus import EmbeddedMilvus  # noqa: E402

OUT = REPO / "bench" / "results" / "bench_milvus_fresh.csv"


def recall(got: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(g[:10]) & set(t.tolist())) / 10
                          for g, t in zip(got, truth, strict=True)]))


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
    return {"service": recall(found, truth), "p50_ms": statistics.median(times) * 1000,
            "milvus": recall([[i for i, _ in row] for row in raw], truth)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, default=REPO / "data/real/docstrings.npy")
    ap.add_argument("--queries", type=Path, default=REPO / "data/real/docstrings_queries.npy")
    ap.add_argument("--n-queries", type=int, default=200)
    ap.add_argument("--note", default="")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    base = np.load(args.base).astype(np.float32)
    queries = np.load(args.queries)[: args.n_queries].astype(np.float32)
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
        start = time.perf_counter()
        while svc.store.fresh_since is not None:
            time.sleep(0.2)
        sealed_s = time.perf_counter() - start
        sealed = measure(svc, queries, truth)
        print(f"sealed and served indexed after {sealed_s:.1f} s: {sealed}", flush=True)
        svc.close()
    finally:
        milvus_store.SEAL_IDLE_S = idle
        server.stop()
    if args.no_write:
        return 0
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=REPO, check=True).stdout.strip()
    what = f"Milvus 2.3.5 HNSW, {args.base.stem} {n}x{dim}, {{}}, 1 client"
    common = {"date": date.today().isoformat(), "commit": commit, "machine": "dev-2core",
              "command": "", "note": args.note}
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
    rows[0]["command"] = "python bench/bench_milvus_fresh.py " + " ".join(argv or sys.argv[1:])
    fields = ["date", "commit", "machine", "what", "variant", "value", "unit", "command",
              "note"]
    new = not OUT.exists()
    with OUT.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} rows -> {OUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
