#!/usr/bin/env python3
"""Filtered search on Milvus: bench/bench_filters.py's measurement (the same nested random
folders, selectivities 50 %, 5 %, 0.5 % and 0.05 %, recall@10 against the exact filtered top 10,
p50 against unfiltered) with the index service's Milvus backend in-process, default settings
(HNSW), on an embedded Milvus in a temp dir.

Two moments: right after the adds, while the rows are still in growing segments (the service
scores its fresh rows exactly beside Milvus's search; a second replica, without them, too),
and once the seal on idle has closed that window and Milvus serves the segments indexed.
Ground truth: numpy over the stored vectors.

    python bench/bench_filters_milvus.py --base data/real/docstrings.npy \\
        --queries data/real/docstrings_queries.npy           # bench/real_sets.py output

Rows are appended to bench/results/bench_filters.csv.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.bench_filters import LEVELS, OUT, Case, folders, measure  # noqa: E402
from bench.common import append_rows, real_set, real_set_parser  # noqa: E402
from glimpse.contracts.filters import SearchFilters  # noqa: E402
from glimpse.index import milvus_service, milvus_store  # noqa: E402
from glimpse.index.config import MilvusSettings, Settings  # noqa: E402
from glimpse.index.milvus_service import MilvusIndexService  # noqa: E402
from glimpse.index.store import NewItem  # noqa: E402
from tests.support.milvus import EmbeddedMilvus  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = real_set_parser(__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--read-rows", type=int, default=milvus_service.READ_ROWS,
                    help="matches read and scored by the service; past it Milvus searches")
    args = ap.parse_args(argv)
    milvus_service.READ_ROWS = args.read_rows

    base, queries = real_set(args)
    n, dim = base.shape
    paths = [f"{folder}/{i}.txt" for i, folder in enumerate(folders(n, args.seed))]
    work = Path(tempfile.mkdtemp(prefix="bench-filters-milvus-"))
    server = EmbeddedMilvus(work / "milvus").start()
    idle = milvus_store.SEAL_IDLE_S
    milvus_store.SEAL_IDLE_S = 1e9  # held off: the window stays open for the first run
    results: list[tuple[str, str, float, float, float]] = []
    try:
        def replica() -> MilvusIndexService:
            svc = MilvusIndexService(Settings(backend="milvus", dim=dim, data_dir=work / "d"),
                                     MilvusSettings(uri=server.uri, collection="filters",
                                                    timeout_s=30))
            svc.open()
            return svc

        svc = replica()
        ids: list[int] = []
        for start in range(0, n, 1000):
            ids += [o.id for o in svc.add([NewItem(f"k{i}", paths[i], {}, base[i])
                                           for i in range(start, min(n, start + 1000))])]
        id_of = np.asarray(ids, dtype=np.int64)
        scores = queries @ base.T
        cases: list[Case] = [("none", 1.0, None, [id_of[np.argsort(-s)[:10]] for s in scores])]
        for share, prefix in LEVELS:
            allowed = np.asarray([i for i, p in enumerate(paths) if p.startswith(prefix + "/")])
            truth = [id_of[allowed[np.argsort(-s[allowed])[:10]]] for s in scores]
            cases.append((f"{share * 100:g} %", len(allowed) / n, {"folder": [prefix]}, truth))

        def report(when: str, on: MilvusIndexService) -> None:
            def search(q: np.ndarray, body: dict[str, Any] | None) -> list[int]:
                f = SearchFilters.model_validate(body) if body else None
                rows = on.submit_search_records(q[None], 10, filters=f).result()
                return [h["id"] for h in rows[0]]

            for (name, share, _, _), (r, p50, _cpu) in zip(
                    cases, measure(search, queries, cases, args.rounds, False), strict=True):
                results.append((when, name, share, r, p50))
                print(f"{when:<22} {name:>8} ({share:.4%}): recall@10 {r:.3f}, "
                      f"p50 {p50:.2f} ms", flush=True)

        assert svc.store.fresh_since is not None
        report("right after the adds", svc)
        # A replica that wrote nothing has no fresh window: Milvus's interim index alone.
        other = replica()
        report("right after the adds, on another replica", other)
        other.close()
        milvus_store.SEAL_IDLE_S = idle
        began = time.monotonic()
        while svc.store.fresh_since is not None:
            if time.monotonic() - began > 900:
                raise SystemExit("the seal on idle did not close the window in 900 s")
            time.sleep(0.5)
        report("after the seal", svc)
        svc.close()
    finally:
        milvus_store.SEAL_IDLE_S = idle
        server.stop()

    if args.no_write:
        return 0
    what = (f"filtered search, Milvus 2.3.5 HNSW, {args.base.stem} {n}x{dim}, {{}}, 1 client, "
            f"reads up to {args.read_rows} matches")
    unfiltered = {when: p50 for when, name, _, _, p50 in results if name == "none"}
    rows: list[dict[str, Any]] = []
    for when, name, _share, r, p50 in results:
        common = {"variant": f"in-process, {when}", "note": args.note}
        label = "unfiltered" if name == "none" else f"folder keeps {name}"
        rows.append({**common, "what": what.format(f"recall@10, {label}"),
                     "value": f"{r:.3f}", "unit": "recall"})
        rows.append({**common, "what": what.format(f"p50, {label}"),
                     "value": f"{p50:.3f}", "unit": "ms"})
        if name != "none":
            rows.append({**common, "what": what.format(f"p50 over unfiltered, {label}"),
                         "value": f"{p50 / unfiltered[when]:.2f}", "unit": "ratio"})
    append_rows(OUT, rows, "python bench/bench_filters_milvus.py "
                + " ".join(argv or sys.argv[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
