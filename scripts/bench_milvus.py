"""The index service on Milvus beside the Faiss backend, on the same data, in one run.

For each backend, through the index service's HTTP API with its default settings: add rate
(batches of 1,000 from one client), time until the approximate index is built, recall@10
against exact search on the stored vectors, single-query latency (p50, one client), and
queries/s with 8 clients. Then, Milvus only: 8 clients over two index service replicas on the
same collection against 8 clients on one. CPU seconds of every process involved (Milvus, the
index services, the client) are reported per run, since on a small machine they all share the
same cores.

    python scripts/bench_index.py --backend milvus                 # 50,000 x 384, synthetic
    python scripts/bench_index.py --backend milvus --base data/real/docstrings.npy \\
        --queries data/real/docstrings_queries.npy                 # scripts/real_sets.py output
    python scripts/bench_index.py --backend milvus --milvus-uri http://host:19530

Without --milvus-uri the embedded Milvus of the `milvus-server` extra runs in a temp dir.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from contracts.vectors import encode_vector  # noqa: E402
from scripts.bench_index import (  # noqa: E402
    KeepAliveClient,
    read_vectors,
    recall,
    search_clients,
    synthetic,
)
from tests.support.procs import ServiceProcess  # noqa: E402

BATCH = 1000


def _cpu(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            times = proc.cpu_times()
            total += times.user + times.system
            for child in proc.children(recursive=True):
                t = child.cpu_times()
                total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _rss(pid: int | None) -> int:
    if pid is None:
        return 0
    proc = psutil.Process(pid)
    return int(proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children()))


@contextmanager
def cpu_meter(pids: dict[str, int], out: dict[str, Any]) -> Iterator[None]:
    """CPU seconds each named process (and the client) used over the block, as % of one core."""
    before = {name: _cpu([pid]) for name, pid in pids.items()}
    client = time.process_time()
    start = time.perf_counter()
    yield
    wall = time.perf_counter() - start
    used = {name: _cpu([pid]) - before[name] for name, pid in pids.items()}
    used["client"] = time.process_time() - client
    out["cpu_pct"] = {name: round(100 * s / wall) for name, s in used.items()}
    out["cpu_pct_total"] = round(100 * sum(used.values()) / wall)


def add_all(url: str, base: np.ndarray) -> tuple[np.ndarray, float]:
    """Add every row in batches; (ids by row, items/s)."""
    ids = np.empty(len(base), dtype=np.int64)
    with httpx.Client(base_url=url, timeout=600) as client:
        start = time.perf_counter()
        for lo in range(0, len(base), BATCH):
            part = base[lo : lo + BATCH]
            body = {"items": [{"vector": encode_vector(v), "path": f"img/{lo + i}.jpg",
                               "key": f"key-{lo + i}"} for i, v in enumerate(part)]}
            r = client.post("/v1/items", json=body)
            r.raise_for_status()
            ids[lo : lo + len(part)] = [item["id"] for item in r.json()["items"]]
        return ids, len(base) / (time.perf_counter() - start)


def search_ids(url: str, queries: np.ndarray, k: int) -> np.ndarray:
    found = np.full((len(queries), k), -1, dtype=np.int64)
    with httpx.Client(base_url=url, timeout=600) as client:
        for lo in range(0, len(queries), 100):
            body = {"vectors": [encode_vector(q) for q in queries[lo : lo + 100]], "k": k}
            r = client.post("/v1/search", json=body)
            r.raise_for_status()
            for j, row in enumerate(r.json()["results"]):
                found[lo + j, : len(row)] = [h["id"] for h in row]
    return found


def single_p50(url: str, bodies: list[bytes], n: int) -> float:
    client = KeepAliveClient(url)
    try:
        for body in bodies[:20]:
            client.post("/v1/search", body)
        times = []
        for i in range(n):
            start = time.perf_counter()
            status, _ = client.post("/v1/search", bodies[i % len(bodies)])
            times.append(time.perf_counter() - start)
            assert status == 200
        return statistics.median(times) * 1000
    finally:
        client.close()


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.perf_counter()
    while not check():
        if time.perf_counter() - start > timeout:
            raise TimeoutError(what)
        time.sleep(0.5)
    return time.perf_counter() - start


def seal_and_index(uri: str, collection: str, rows: int) -> float:
    """Flush (seal the growing segments) and wait until Milvus indexed every row."""
    from pymilvus import Collection, connections, utility

    connections.connect(alias="bench", uri=uri)
    try:
        start = time.perf_counter()
        Collection(collection, using="bench").flush()

        def indexed() -> bool:
            info = utility.index_building_progress(collection, using="bench")
            return int(info.get("indexed_rows", 0)) >= rows

        wait_for(indexed, 1800, "Milvus did not index the collection")
        return time.perf_counter() - start
    finally:
        connections.disconnect("bench")


def measure(name: str, urls: list[str], pids: dict[str, int], base_ids: np.ndarray,
            queries: np.ndarray, truth_rows: np.ndarray, requests: int, say: Callable[[str], None]
            ) -> dict[str, Any]:
    out: dict[str, Any] = {}
    found = search_ids(urls[0], queries, 10)
    out["recall_at_10"] = round(recall(found, base_ids[truth_rows], 10), 4)
    bodies = [json.dumps({"vectors": [encode_vector(q)], "k": 10}).encode() for q in queries]
    out["p50_ms_1_client"] = round(single_p50(urls[0], bodies, min(requests, 300)), 2)
    with cpu_meter(pids, out):
        run = search_clients(urls[:1], bodies, 8, max(1, requests // 8))
    out.update({f"{k}_8_clients": round(v, 2) for k, v in run.items()})
    say(f"{name}: recall@10 {out['recall_at_10']:.3f}  p50 {out['p50_ms_1_client']:.1f} ms  "
        f"8 clients {run['qps']:.0f} q/s (p50 {run['p50_ms']:.1f} ms, errors "
        f"{run['errors']:.0f}), CPU % of a core: {out['cpu_pct']}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=50_000, help="vectors to index (synthetic)")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries-n", type=int, default=500)
    ap.add_argument("--clusters", type=int, default=0, help="synthetic clusters (0: n/100)")
    ap.add_argument("--base", type=Path, help=".npy/.fvecs of the vectors to index")
    ap.add_argument("--queries", type=Path, help=".npy/.fvecs of the queries")
    ap.add_argument("--http-requests", type=int, default=800, help="requests per 8-client run")
    ap.add_argument("--milvus-uri", help="an existing Milvus (default: an embedded one)")
    ap.add_argument("--milvus-index-params", default="",
                    help="JSON for INDEX_MILVUS_INDEX_PARAMS (default: the rule)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = ap.parse_args(argv)

    def say(line: str) -> None:
        print(line, flush=True)

    if args.base is not None:
        # Copies: a .npy is memory-mapped read-only and the rows are normalised below.
        base = np.array(read_vectors(args.base)[: args.n], dtype=np.float32)
        queries = np.array(read_vectors(args.queries)[: args.queries_n], dtype=np.float32)
        data = f"{args.base.name}: {len(base)} x {base.shape[1]}, {len(queries)} queries"
    else:
        clusters = args.clusters or max(1, args.n // 100)
        base = synthetic(args.n, args.dim, seed=1, clusters=clusters)
        queries = synthetic(args.queries_n, args.dim, seed=2, clusters=clusters)
        data = f"synthetic clustered: {len(base)} x {args.dim}, {len(queries)} queries"
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    dim = base.shape[1]
    stored = base.astype(np.float16).astype(np.float32)
    truth_rows = np.argsort(-(queries @ stored.T), axis=1)[:, :10]
    say(f"data: {data}; host: {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB")

    results: dict[str, Any] = {"data": data, "cores": os.cpu_count()}
    work = Path(tempfile.mkdtemp(prefix="bench-milvus-"))
    milvus = None
    try:
        # -- Faiss backend ----------------------------------------------------------------------
        env = {"INDEX_DATA_DIR": str(work / "faiss"), "INDEX_DIM": str(dim),
               # Trained once, on everything (a lower threshold trains on the first rows and
               # retrains later): both backends then index the same rows at once.
               "INDEX_TRAIN_THRESHOLD": str(len(base)),
               "INDEX_SNAPSHOT_INTERVAL_S": "0"}
        with ServiceProcess("index_service.main", env, work / "faiss.log") as proc:
            assert proc.proc is not None
            ids, rate = add_all(proc.url, base)

            def trained() -> bool:
                stats = httpx.get(proc.url + "/v1/stats", timeout=30).json()
                return not stats["training"] and stats["kind"] != "flat"

            build = wait_for(trained, 1800, "Faiss did not train")
            stats = httpx.get(proc.url + "/v1/stats", timeout=30).json()
            say(f"faiss: add {rate:.0f} items/s; IVF-PQ trained {build:.1f} s after the last add "
                f"({stats['factory']}, nprobe {stats['nprobe']}, rerank {stats['rerank']})")
            out = measure("faiss", [proc.url], {"index": proc.proc.pid}, ids, queries,
                          truth_rows, args.http_requests, say)
            results["faiss"] = {"add_per_s": round(rate), "build_s": round(build, 1),
                                "factory": stats["factory"], **out}

        # -- Milvus backend ---------------------------------------------------------------------
        if args.milvus_uri:
            uri, milvus_pid = args.milvus_uri, None
        else:
            from tests.support.milvus import EmbeddedMilvus

            milvus = EmbeddedMilvus(work / "milvus").start()
            uri = milvus.uri
            milvus_pid = milvus._server.server_proc.pid  # noqa: SLF001 - CPU accounting
        collection = f"bench_{int(time.time())}"
        env = {"INDEX_BACKEND": "milvus", "INDEX_MILVUS_URI": uri, "INDEX_DIM": str(dim),
               "INDEX_MILVUS_COLLECTION": collection, "INDEX_MILVUS_TIMEOUT_S": "120"}
        if args.milvus_index_params:
            env["INDEX_MILVUS_INDEX_PARAMS"] = args.milvus_index_params
        with ServiceProcess("index_service.main", env, work / "m1.log") as one:
            assert one.proc is not None
            rss_empty = _rss(milvus_pid)
            ids, rate = add_all(one.url, base)
            build = seal_and_index(uri, collection, len(base))
            search_ids(one.url, queries[:100], 10)  # the sealed segment and its index loaded
            rss_per_vector = (_rss(milvus_pid) - rss_empty) / len(base) if milvus_pid else None
            stats = httpx.get(one.url + "/v1/stats", timeout=30).json()
            say(f"milvus: add {rate:.0f} items/s; flush + index {build:.1f} s "
                f"({stats['factory']}, nprobe {stats['nprobe']}, rerank {stats['rerank']}); "
                f"Milvus RSS growth {rss_per_vector or 0:.0f} B per vector")
            pids = {"index": one.proc.pid}
            if milvus_pid:
                pids["milvus"] = milvus_pid
            out = measure("milvus", [one.url], pids, ids, queries, truth_rows,
                          args.http_requests, say)
            # The same collection without the re-rank: what IVF_PQ's own scores find.
            with ServiceProcess("index_service.main", {**env, "INDEX_RERANK": "0"},
                                work / "m0.log") as bare:
                found = search_ids(bare.url, queries, 10)
                out["recall_at_10_without_rerank"] = round(
                    recall(found, ids[truth_rows], 10), 4)
            say(f"milvus: recall@10 without the re-rank (INDEX_RERANK=0): "
                f"{out['recall_at_10_without_rerank']:.3f}")
            results["milvus"] = {"add_per_s": round(rate), "build_s": round(build, 1),
                                 "factory": stats["factory"],
                                 "rss_bytes_per_vector": rss_per_vector, **out}
            with ServiceProcess("index_service.main", env, work / "m2.log") as two:
                assert two.proc is not None
                bodies = [json.dumps({"vectors": [encode_vector(q)], "k": 10}).encode()
                          for q in queries]
                pids2 = {**pids, "index2": two.proc.pid}
                per_client = max(1, args.http_requests // 8)
                replicas: dict[str, Any] = {}
                for label, urls in (("1 replica", [one.url]), ("2 replicas", [one.url, two.url])):
                    meter: dict[str, Any] = {}
                    with cpu_meter(pids2, meter):
                        run = search_clients(urls, bodies, 8, per_client)
                    replicas[label] = {**{k: round(v, 2) for k, v in run.items()}, **meter}
                    say(f"milvus, 8 clients over {label}: {run['qps']:.0f} q/s (p50 "
                        f"{run['p50_ms']:.1f} ms, errors {run['errors']:.0f}), CPU % of a core: "
                        f"{meter['cpu_pct']} (total {meter['cpu_pct_total']})")
                ratio = replicas["2 replicas"]["qps"] / replicas["1 replica"]["qps"]
                say(f"milvus: 2 replicas / 1 replica = {ratio:.2f}x")
                results["milvus_replicas"] = {**replicas, "ratio": round(ratio, 2)}
    finally:
        if milvus is not None:
            milvus.stop()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
