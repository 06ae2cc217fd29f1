"""The index service on Milvus beside the Faiss backend, on the same data, in one run.

For each backend, through the index service's HTTP API with its default settings: add rate
(batches of 1,000 from one client), time until the approximate index is built, recall@10
against exact search on the stored vectors, single-query latency (p50, one client), and
queries/s with 8 clients. Then, Milvus only: 8 clients over one index service replica and over
two on the same collection, alternated for --rounds pairs. The CPU of every process involved
(Milvus, the index services, the client) is reported per run, as % of a core and in ms per
search, since on a small machine they all share the same cores; from it, the most two replicas
can give over one on this machine.

    python bench/bench_index.py --backend milvus                 # 50,000 x 384, synthetic
    python bench/bench_index.py --backend milvus --base data/real/docstrings.npy \\
        --queries data/real/docstrings_queries.npy                 # bench/real_sets.py output
    python bench/bench_index.py --backend milvus --milvus-uri http://host:19530

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

from bench.common import (  # noqa: E402
    KeepAliveClient,
    read_vectors,
    recall,
    search_clients,
    synthetic,
)
from glimpse.contracts.vectors import encode_vector  # noqa: E402
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
def cpu_meter(pids: dict[str, int], out: dict[str, Any], requests: int = 0) -> Iterator[None]:
    """CPU seconds each named process (and the client) used over the block, as % of one core
    and, given the requests made, in ms per request."""
    before = {name: _cpu([pid]) for name, pid in pids.items()}
    client = time.process_time()
    start = time.perf_counter()
    yield
    wall = time.perf_counter() - start
    used = {name: _cpu([pid]) - before[name] for name, pid in pids.items()}
    used["client"] = time.process_time() - client
    out["cpu_pct"] = {name: round(100 * s / wall) for name, s in used.items()}
    out["cpu_pct_total"] = round(100 * sum(used.values()) / wall)
    if requests:
        out["cpu_ms_per_request"] = {name: round(1000 * s / requests, 2)
                                     for name, s in used.items()}


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
    from pymilvus.grpc_gen import common_pb2

    connections.connect(alias="bench", uri=uri)
    try:
        start = time.perf_counter()
        Collection(collection, using="bench").flush()

        def indexed() -> bool:
            info = utility.index_building_progress(collection, using="bench")
            return int(info.get("indexed_rows", 0)) >= rows

        wait_for(indexed, 1800, "Milvus did not index the collection")

        def served_indexed() -> bool:
            # Indexed is not yet served: until the query node loads the indexed sealed
            # segments, searches run on growing segments (Milvus's interim IVF index, lower
            # recall) and Milvus spends CPU on the hand-off, both of which skewed the figures.
            infos = utility.get_query_segment_info(collection, using="bench")
            sealed = [i for i in infos if i.index_name and i.state != common_pb2.Growing]
            return sum(int(i.num_rows) for i in sealed) >= rows and len(sealed) == len(infos)

        wait_for(served_indexed, 600, "Milvus did not load the indexed segments")
        return time.perf_counter() - start
    finally:
        connections.disconnect("bench")


def settle(pid: int | None, timeout: float = 120.0) -> float:
    """Wait until Milvus's own CPU falls under 10% of a core over 2 s (compaction, index loads
    and hand-offs after the build), so the searches' CPU is the searches'."""
    start = time.perf_counter()
    while pid is not None and time.perf_counter() - start < timeout:
        before = _cpu([pid])
        time.sleep(2.0)
        if _cpu([pid]) - before < 0.2:
            break
    return time.perf_counter() - start


def measure(name: str, urls: list[str], pids: dict[str, int], base_ids: np.ndarray,
            queries: np.ndarray, truth_rows: np.ndarray, requests: int, say: Callable[[str], None]
            ) -> dict[str, Any]:
    out: dict[str, Any] = {}
    found = search_ids(urls[0], queries, 10)
    out["recall_at_10"] = round(recall(found, base_ids[truth_rows], 10), 4)
    bodies = [json.dumps({"vectors": [encode_vector(q)], "k": 10}).encode() for q in queries]
    out["p50_ms_1_client"] = round(single_p50(urls[0], bodies, min(requests, 300)), 2)
    per_client = max(1, requests // 8)
    with cpu_meter(pids, out, 8 * per_client):
        run = search_clients(urls[:1], bodies, 8, per_client)
    out.update({f"{k}_8_clients": round(v, 2) for k, v in run.items()})
    say(f"{name}: recall@10 {out['recall_at_10']:.3f}  p50 {out['p50_ms_1_client']:.1f} ms  "
        f"8 clients {run['qps']:.0f} q/s (p50 {run['p50_ms']:.1f} ms, errors "
        f"{run['errors']:.0f}), CPU % of a core: {out['cpu_pct']}, CPU ms per search: "
        f"{out['cpu_ms_per_request']}")
    return out


def replica_rounds(one: str, two: str, bodies: list[bytes], pids: dict[str, int],
                   requests: int, rounds: int, say: Callable[[str], None]) -> dict[str, Any]:
    """8 clients over one replica, then over two, ``rounds`` times alternated (the machine's
    other load changes between runs; a pair measured back to back shares most of it)."""
    per_client = max(1, requests // 8)
    runs: list[dict[str, Any]] = []
    for n in range(rounds):
        pair: dict[str, Any] = {}
        for label, urls in (("1 replica", [one]), ("2 replicas", [one, two])):
            meter: dict[str, Any] = {}
            load = os.getloadavg()[0]
            with cpu_meter(pids, meter, 8 * per_client):
                run = search_clients(urls, bodies, 8, per_client)
            pair[label] = {**{k: round(v, 2) for k, v in run.items()}, **meter,
                           "load_before": round(load, 1)}
            say(f"milvus, round {n + 1}, 8 clients over {label}: {run['qps']:.0f} q/s (p50 "
                f"{run['p50_ms']:.1f} ms, errors {run['errors']:.0f}); CPU % of a core "
                f"{meter['cpu_pct']} (total {meter['cpu_pct_total']}); CPU ms per search "
                f"{meter['cpu_ms_per_request']}; load average before {load:.1f}")
        pair["ratio"] = round(pair["2 replicas"]["qps"] / pair["1 replica"]["qps"], 2)
        say(f"milvus, round {n + 1}: 2 replicas / 1 replica = {pair['ratio']:.2f}x")
        runs.append(pair)
    ratios = sorted(r["ratio"] for r in runs)
    one_ms = runs[0]["1 replica"]["cpu_ms_per_request"]
    replica, milvus_ms, client = one_ms["index"], one_ms.get("milvus", 0.0), one_ms["client"]
    # Two replicas can beat one only where one replica is the limit: its GIL holds it to one
    # core, 1000/P q/s. All the processes together on N cores are capped at N*1000/(P+M+C).
    cores = os.cpu_count() or 1
    gil = 1000 / replica
    shared = cores * 1000 / (replica + milvus_ms + client)
    bound = min(2 * gil, shared) / min(gil, shared)
    say(f"milvus: 2 replicas / 1 replica over {rounds} rounds: {ratios} (median "
        f"{statistics.median(ratios):.2f}x). CPU per search in round 1 on one replica: replica "
        f"P={replica} ms, Milvus M={milvus_ms} ms, client C={client} ms; one replica's GIL cap "
        f"1000/P = {gil:.0f} q/s, all on {cores} cores {cores}*1000/(P+M+C) = {shared:.0f} q/s: "
        f"two replicas can give at most {bound:.2f}x here; with Milvus and the client on cores "
        f"of their own, min(2, (cores for Milvus)*P/M)x")
    return {"rounds": runs, "ratios": ratios, "ratio": statistics.median(ratios),
            "bound": round(bound, 2), "gil_cap_qps": round(gil), "cores_cap_qps": round(shared)}


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
    ap.add_argument("--milvus-index-type", default="",
                    help="INDEX_MILVUS_INDEX_TYPE (default: the setting's, HNSW)")
    ap.add_argument("--milvus-search-calls", default="",
                    help="INDEX_MILVUS_SEARCH_CALLS (default: the setting's, 2; 0 = no gathering)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternated runs of 8 clients over one and two replicas")
    ap.add_argument("--replica-requests", type=int, default=2400,
                    help="requests per 8-client run in the replica rounds")
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
        with ServiceProcess("glimpse.index.main", env, work / "faiss.log") as proc:
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
        if args.milvus_index_type:
            env["INDEX_MILVUS_INDEX_TYPE"] = args.milvus_index_type
        if args.milvus_search_calls:
            env["INDEX_MILVUS_SEARCH_CALLS"] = args.milvus_search_calls
        with ServiceProcess("glimpse.index.main", env, work / "m1.log") as one:
            assert one.proc is not None
            rss_empty = _rss(milvus_pid)
            ids, rate = add_all(one.url, base)
            build = seal_and_index(uri, collection, len(base))
            search_ids(one.url, queries[:100], 10)  # the sealed segment and its index loaded
            settle(milvus_pid)
            rss_per_vector = (_rss(milvus_pid) - rss_empty) / len(base) if milvus_pid else None
            stats = httpx.get(one.url + "/v1/stats", timeout=30).json()
            say(f"milvus: add {rate:.0f} items/s; flush + index {build:.1f} s "
                f"({stats['factory']}, nprobe {stats['nprobe']}, ef {stats['ef']}, rerank "
                f"{stats['rerank']}); Milvus RSS growth {rss_per_vector or 0:.0f} B per vector")
            pids = {"index": one.proc.pid}
            if milvus_pid:
                pids["milvus"] = milvus_pid
            out = measure("milvus", [one.url], pids, ids, queries, truth_rows,
                          args.http_requests, say)
            if stats["rerank"]:
                # The same collection without the re-rank: what IVF_PQ's own scores find.
                with ServiceProcess("glimpse.index.main", {**env, "INDEX_RERANK": "0"},
                                    work / "m0.log") as bare:
                    found = search_ids(bare.url, queries, 10)
                    out["recall_at_10_without_rerank"] = round(
                        recall(found, ids[truth_rows], 10), 4)
                say(f"milvus: recall@10 without the re-rank (INDEX_RERANK=0): "
                    f"{out['recall_at_10_without_rerank']:.3f}")
            results["milvus"] = {"add_per_s": round(rate), "build_s": round(build, 1),
                                 "factory": stats["factory"],
                                 "rss_bytes_per_vector": rss_per_vector, **out}
            with ServiceProcess("glimpse.index.main", env, work / "m2.log") as two:
                assert two.proc is not None
                bodies = [json.dumps({"vectors": [encode_vector(q)], "k": 10}).encode()
                          for q in queries]
                results["milvus_replicas"] = replica_rounds(
                    one.url, two.url, bodies, {**pids, "index2": two.proc.pid},
                    args.replica_requests, args.rounds, say)
                stats = httpx.get(one.url + "/v1/stats", timeout=30).json()
                if stats.get("gathered_calls"):
                    say(f"milvus: replica 1 sent {stats['gathered_requests']} searches in "
                        f"{stats['gathered_calls']} Milvus calls "
                        f"(INDEX_MILVUS_SEARCH_CALLS={stats['search_calls']})")
    finally:
        if milvus is not None:
            milvus.stop()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
