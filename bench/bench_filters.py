#!/usr/bin/env python3
"""Filtered search on a real embedding set: recall@10 against the exact filtered top 10, and
filtered p50 latency against unfiltered, at selectivities 50 %, 5 %, 0.5 % and 0.05 %.

Each item gets a folder at random, nested so that one folder prefix keeps each selectivity:
``a/`` holds 50 % of the items, ``a/b/`` 5 %, ``a/b/c/`` 0.5 %, ``a/b/c/d/`` 0.05 %. The items
are added to the Faiss backend in-process, which trains its IVF index with the service's rules
(what a collection past INDEX_TRAIN_THRESHOLD has); searches run one query at a time, first
in-process (``submit_search_records``, what the HTTP route calls), then through the index
service as a process (HTTP, base64 vectors) on the same data dir, loaded from its snapshot.
Each query runs every case back to back, ``--rounds`` times over the queries; in-process, the
CPU time per search is given too (it hardly moves with the load of other processes).
Ground truth: numpy over the stored (float16-rounded) vectors of the matching items.

    python bench/bench_filters.py --base data/real/docstrings.npy \\
        --queries data/real/docstrings_queries.npy          # bench/real_sets.py output

Rows are appended to bench/results/bench_filters.csv.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import append_rows, real_set, real_set_parser, recall  # noqa: E402
from glimpse.contracts.filters import SearchFilters  # noqa: E402
from glimpse.contracts.vectors import encode_vector  # noqa: E402
from glimpse.index.config import Settings  # noqa: E402
from glimpse.index.service import IndexService  # noqa: E402
from glimpse.index.store import NewItem  # noqa: E402
from tests.support.procs import ServiceProcess  # noqa: E402

OUT = REPO / "bench" / "results" / "bench_filters.csv"
# (share of the items, folder prefix that keeps exactly the items at least this deep)
LEVELS = [(0.5, "a"), (0.05, "a/b"), (0.005, "a/b/c"), (0.0005, "a/b/c/d")]


def folders(n: int, seed: int) -> list[str]:
    """Each item's folder: depth = how many of the LEVELS' shares a uniform draw falls under."""
    draws = np.random.default_rng(seed).random(n)
    out = []
    for u in draws:
        depth = sum(1 for share, _ in LEVELS if u < share)
        out.append("/".join("abcd"[:depth]) or "z")
    return out


Case = tuple[str, float, dict[str, Any] | None, list[np.ndarray]]


def measure(search: Callable[[np.ndarray, dict[str, Any] | None], list[int]],
            queries: np.ndarray, cases: list[Case], rounds: int, cpu: bool
            ) -> list[tuple[float, float, float]]:
    """(recall@10, p50 ms, p50 CPU ms of this process, NaN unless ``cpu``) per case, one query
    at a time. Each query runs every case back to back, ``rounds`` times over the queries, so
    the load of other processes, which moves over seconds, weighs on the unfiltered baseline
    and the filters alike; CPU time hardly moves with it."""
    found: list[list[list[int]]] = [[] for _ in cases]
    times: list[list[float]] = [[] for _ in cases]
    used: list[list[float]] = [[] for _ in cases]
    for round_ in range(rounds):
        for q in queries:
            for c, (_name, _share, body, _truth) in enumerate(cases):
                start, clock = time.perf_counter(), time.process_time()
                got = search(q, body)
                times[c].append(time.perf_counter() - start)
                used[c].append(time.process_time() - clock)
                if round_ == 0:
                    found[c].append(got)
    return [(recall(found[c], truth, 10), statistics.median(times[c]) * 1000,
             statistics.median(used[c]) * 1000 if cpu else float("nan"))
            for c, (_, _, _, truth) in enumerate(cases)]


def main(argv: list[str] | None = None) -> int:
    ap = real_set_parser(__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)

    base, queries = real_set(args)
    n, dim = base.shape
    stored = base.astype(np.float16).astype(np.float32)
    paths = [f"{folder}/{i}.txt" for i, folder in enumerate(folders(n, args.seed))]
    work = Path(tempfile.mkdtemp(prefix="bench-filters-"))
    settings = Settings(data_dir=work / "index", dim=dim, snapshot_interval_s=0,
                        snapshot_every_writes=0)
    service = IndexService(settings)
    service.open()
    added: list[int] = []
    for start in range(0, n, 4096):
        part = range(start, min(n, start + 4096))
        added += [o.id for o in service.add([NewItem(f"k{i}", paths[i], {}, stored[i])
                                             for i in part])]
    id_of = np.asarray(added, dtype=np.int64)
    service.rebuild(None, wait=True)
    assert service.index is not None
    factory = service.index.live.factory

    cases: list[Case] = []
    scores = queries @ stored.T
    cases.append(("none", 1.0, None, [id_of[np.argsort(-s)[:10]] for s in scores]))
    for share, prefix in LEVELS:
        allowed = np.asarray([i for i, p in enumerate(paths) if p.startswith(prefix + "/")])
        truth = [id_of[allowed[np.argsort(-s[allowed])[:10]]] for s in scores]
        cases.append((f"{share * 100:g} %", len(allowed) / n, {"folder": [prefix]}, truth))

    def in_process(q: np.ndarray, body: dict[str, Any] | None) -> list[int]:
        f = SearchFilters.model_validate(body) if body else None
        rows = service.submit_search_records(q[None], 10, filters=f).result()
        return [h["id"] for h in rows[0]]

    results: list[tuple[str, str, float, float, float, float]] = []

    def report(via: str, search: Callable[[np.ndarray, dict[str, Any] | None], list[int]]
               ) -> None:
        for (name, share, _, _), (r, p50, cpu) in zip(
                cases, measure(search, queries, cases, args.rounds, via == "in-process"),
                strict=True):
            results.append((via, name, share, r, p50, cpu))
            print(f"{via:<10} {name:>8} ({share:.4%}): recall@10 {r:.3f}, p50 {p50:.2f} ms"
                  + ("" if np.isnan(cpu) else f", CPU p50 {cpu:.3f} ms"), flush=True)

    report("in-process", in_process)
    service.snapshot()
    service.close()

    proc = ServiceProcess("glimpse.index.main", {
        "INDEX_DATA_DIR": str(settings.data_dir), "INDEX_DIM": str(dim),
        "INDEX_SNAPSHOT_INTERVAL_S": "0", "INDEX_SNAPSHOT_EVERY_WRITES": "0"},
        work / "index.log")
    proc.start(timeout=600)
    try:
        with httpx.Client(base_url=proc.url, timeout=60) as client:
            assert client.get("/v1/stats").json()["factory"] == factory

            def http(q: np.ndarray, body: dict[str, Any] | None) -> list[int]:
                payload: dict[str, Any] = {"vectors": [encode_vector(q)], "k": 10}
                if body:
                    payload["filters"] = body
                answer = client.post("/v1/search", content=json.dumps(payload),
                                     headers={"content-type": "application/json"})
                answer.raise_for_status()
                return [h["id"] for h in answer.json()["results"][0]]

            report("HTTP", http)
    finally:
        proc.stop()

    if args.no_write:
        return 0
    what = f"filtered search, Faiss {factory}, {args.base.stem} {n}x{dim}, {{}}, 1 client"
    rows: list[dict[str, Any]] = []
    unfiltered = {via: (p50, cpu) for via, name, _, _, p50, cpu in results if name == "none"}
    for via, name, _share, r, p50, cpu in results:
        base_row = {"variant": via, "note": args.note}
        label = "unfiltered" if name == "none" else f"folder keeps {name}"
        rows.append({**base_row, "what": what.format(f"recall@10, {label}"),
                     "value": f"{r:.3f}", "unit": "recall"})
        # CPU time per search: in-process only (through HTTP it is the service's).
        for metric, value, ref in [("p50", p50, unfiltered[via][0])] + (
                [("CPU p50", cpu, unfiltered[via][1])] if via == "in-process" else []):
            rows.append({**base_row, "what": what.format(f"{metric}, {label}"),
                         "value": f"{value:.3f}", "unit": "ms"})
            if name != "none":
                rows.append({**base_row, "what": what.format(f"{metric} over unfiltered, {label}"),
                             "value": f"{value / ref:.2f}", "unit": "ratio"})
    append_rows(OUT, rows, "python bench/bench_filters.py " + " ".join(argv or sys.argv[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
