"""Benchmark of the index service, side by side in one run.

Builds an index of N vectors through the service's own code (SQLite store, then IVF-PQ training
with the automatic rules), then prints: add and training time; recall@1 and @10 against exact
search at several nprobe values, with and without re-rank, next to raw Faiss on the same index;
queries/s in-process (batched and one at a time); a restart of the service as a real process
(time to ready, resident bytes per vector); queries/s and latency over HTTP (base64 vectors)
with 1 and 8 clients, with the gathering of concurrent searches on and off; the ratio of HTTP to
in-process; and the low-memory setting (re-rank from SQLite).

    python bench/bench_index.py                      # 1,000,000 x 512 synthetic, clustered
    python bench/bench_index.py -n 200000            # smaller
    python bench/bench_index.py --base sift_base.fvecs --queries sift_query.fvecs \\
        --truth sift_groundtruth.ivecs                 # texmex SIFT1M / Deep1M, or .npy files

Synthetic vectors are clustered with a decaying spectrum and unit length; they are not CLIP
embeddings, so recall numbers on real data differ (run it on your own .npy).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# The service's own setting (glimpse/index/__init__.py), before Faiss loads OpenMP, so the
# in-process numbers run like the service does.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import faiss  # noqa: E402
import httpx  # noqa: E402
import psutil  # noqa: E402

from bench import service_vs_raw  # noqa: E402
from bench.common import (  # noqa: E402
    http_clients,
    one_at_a_time,
    read_vectors,
    recall,
    synthetic,
    timed,
)
from glimpse.contracts.vectors import encode_vector  # noqa: E402
from glimpse.index.config import Settings  # noqa: E402
from glimpse.index.service import TUNE_TARGET, IndexService  # noqa: E402
from glimpse.index.store import NewItem  # noqa: E402
from tests.support.procs import ServiceProcess  # noqa: E402

# -- data ------------------------------------------------------------------------------------


def start_process(data_dir: Path, dim: int, log: Path, **env: str
                  ) -> tuple[ServiceProcess, float, float]:
    """Start the service as uvicorn; (process, seconds to /readyz, RSS bytes once ready)."""
    base = {"INDEX_DATA_DIR": str(data_dir), "INDEX_DIM": str(dim),
            "INDEX_SNAPSHOT_INTERVAL_S": "0", "INDEX_SNAPSHOT_EVERY_WRITES": "0"}
    proc = ServiceProcess("glimpse.index.main", {**base, **env}, log)
    start = time.perf_counter()
    proc.start(timeout=600)
    ready = time.perf_counter() - start
    assert proc.proc is not None
    rss = psutil.Process(proc.proc.pid).memory_info().rss
    return proc, ready, rss


def rss_of(proc: ServiceProcess) -> int:
    assert proc.proc is not None
    return int(psutil.Process(proc.proc.pid).memory_info().rss)


# -- the run ---------------------------------------------------------------------------------


def _backend_arg() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--backend", choices=("faiss", "milvus"), default="faiss",
                    help="milvus: both backends side by side (bench/bench_milvus.py)")
    return ap


def main(argv: list[str] | None = None) -> int:
    # --backend milvus: the Faiss and Milvus backends side by side (bench/bench_milvus.py,
    # which has its own options).
    backend, rest = _backend_arg().parse_known_args(argv)
    if backend.backend == "milvus":
        from bench.bench_milvus import main as bench_milvus

        return bench_milvus(rest)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 parents=[_backend_arg()])
    ap.add_argument("-n", type=int, default=1_000_000, help="vectors to index (synthetic)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries-n", type=int, default=500, help="queries (synthetic)")
    ap.add_argument("--clusters", type=int, default=0,
                    help="synthetic clusters (0: n/10000, at least 10)")
    ap.add_argument("--base", type=Path, help=".npy/.fvecs of the vectors to index")
    ap.add_argument("--queries", type=Path, help=".npy/.fvecs of the queries")
    ap.add_argument("--truth", type=Path, help=".ivecs/.npy exact neighbours (row numbers)")
    ap.add_argument("--factory", help="force a Faiss factory string (default: the rules)")
    ap.add_argument("--nprobes", default="4,8,16,32,64,128")
    ap.add_argument("--http-requests", type=int, default=300, help="requests per HTTP run")
    ap.add_argument("--data-dir", type=Path, help="keep the index here (default: a temp dir)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    ap.add_argument("--restart-only", action="store_true",
                    help="reuse the index a previous run kept in --data-dir: snapshot it with "
                    "this code, then only the restart and low-memory rows")
    ap.add_argument("--max-bytes-per-vector", type=float,
                    help="INDEX_MAX_BYTES_PER_VECTOR of the structure choice (default: the "
                    "service's)")
    ap.add_argument("--raw", choices=("auto", "on", "off"), default="auto",
                    help="the best raw Faiss configuration at the service's recall, and exact "
                    "search against IndexFlatIP (auto: on up to 200k vectors)")
    ap.add_argument("--in-process-only", action="store_true",
                    help="skip the restarts, HTTP and low-memory rows")
    args = ap.parse_args(argv)
    if args.restart_only:
        if not args.data_dir or not args.data_dir.exists():
            ap.error("--restart-only needs the --data-dir of a previous run")
        return restart_only(args)

    out: dict[str, Any] = {"cpus": os.cpu_count(), "faiss": faiss.__version__,
                           "load_avg_at_start": os.getloadavg()[0]}

    def say(line: str) -> None:
        print(line, flush=True)

    # Data.
    if args.base:
        # Copies: a memory-mapped .npy is read-only.
        base = np.array(read_vectors(args.base), dtype=np.float32)
        base /= np.linalg.norm(base, axis=1, keepdims=True)
        queries = np.array(read_vectors(args.queries), dtype=np.float32)
    else:
        clusters = args.clusters or max(10, args.n // 10000)
        base, t_gen = timed(lambda: synthetic(args.n, args.dim, 1, clusters))
        queries = synthetic(args.queries_n, args.dim, 2, clusters)
        say(f"data: {args.n} x {args.dim} synthetic ({clusters} clusters) in {t_gen:.1f}s")
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    n, dim = base.shape
    out.update(n=n, dim=dim, queries=len(queries))

    tmp = Path(tempfile.mkdtemp(prefix="bench-index-"))
    data_dir = args.data_dir or tmp / "index"
    if data_dir.exists():
        shutil.rmtree(data_dir)
    # Tuning on (unless a factory is forced): the training then chooses the structure itself,
    # as a service left to its defaults does.
    extra = ({"max_bytes_per_vector": args.max_bytes_per_vector}
             if args.max_bytes_per_vector else {})
    settings = Settings(data_dir=data_dir, dim=dim, train_threshold=n + 1,
                        autotune=args.factory is None, snapshot_interval_s=0,
                        snapshot_every_writes=0, factory=args.factory, **extra)
    raw = args.raw == "on" or (args.raw == "auto" and n <= 200_000)
    service = IndexService(settings)
    service.open()
    assert service.index is not None and service.store is not None
    index = service.index

    # Add through the service (SQLite commit per batch of 4096, then the exact index).
    def add_all() -> None:
        stored = base.astype(np.float16)
        for start in range(0, n, 4096):
            part = stored[start : start + 4096]
            service.add([NewItem(f"k{start + i}", f"img/{start + i}.jpg", {}, part[i])
                         for i in range(len(part))])

    _, t_add = timed(add_all)
    say(f"add {n} through the service (SQLite + exact index): {t_add:.1f}s "
        f"({n / t_add:,.0f} vectors/s)")
    out["add_s"] = t_add
    stored32 = base.astype(np.float16).astype(np.float32)
    if raw:
        # Below the threshold the live index is the flat one.
        flat = service_vs_raw.exact_vs_flat(lambda q: index.search_raw(q, 10), stored32,
                                            queries[:100])
        say(f"exact, flat index below the threshold: service {flat['service_ms']:.3f} ms, "
            f"IndexFlatIP {flat['flat_ms']:.3f} ms one query at a time (x{flat['ratio']:.2f})")
        out["exact_flat"] = flat

    # Train with the rules (or the forced factory), catch up, swap.
    _, t_train = timed(lambda: service.rebuild(args.factory, wait=True))
    live = index.live
    say(f"train + add to {live.factory}: {t_train:.1f}s "
        f"(training, or choosing among candidates, {index.last_training['train_s']:.1f}s)")
    out.update(factory=live.factory, train_total_s=t_train,
               train_s=index.last_training["train_s"], nlist=live.nlist)
    structure = service.stats().get("structure")
    if structure:
        say(f"structure: {structure['chosen']}: {structure['why']}")
        for c in structure["candidates"]:
            say(f"  candidate {c}")
        out["structure"] = structure

    # Exact ground truth over the stored (float16) vectors, via the service's exact scan.
    if args.truth:
        truth_rows = np.asarray(read_vectors(args.truth))[:, :10]
        truth = truth_rows + 1  # row i is item id i + 1
    else:
        (_, truth), t_truth = timed(lambda: index.search_raw(queries, 10, exact=True))
        say(f"exact ground truth for {len(queries)} queries: {t_truth:.1f}s")
        out["exact_batched_qps"] = len(queries) / t_truth

    # Recall and speed at several nprobe values, raw Faiss beside the service's search.
    nprobes = [p for p in (int(v) for v in args.nprobes.split(","))
               if live.hnsw or p <= (live.nlist or 1)]
    rule_nprobe = index.nprobe_for(live, None)
    if rule_nprobe not in nprobes:
        nprobes = sorted({*nprobes, rule_nprobe})
    say("")
    say("| nprobe | rerank | recall@1 | recall@10 | ms/query batched | raw Faiss recall@10 |")
    say("|---:|---:|---:|---:|---:|---:|")
    rows = []
    for nprobe in nprobes:
        # The service's parameters (nprobe, and efSearch of an HNSW coarse quantizer).
        raw_ids = live.index.search(queries, 10, params=live.search_params(nprobe))[1]
        for rerank in (0, settings.rerank):
            found, t = timed(lambda nprobe=nprobe, rerank=rerank: index.search_ids(
                queries, 10, nprobe, rerank))
            row = {"nprobe": nprobe, "rerank": rerank, "r1": recall(found, truth, 1),
                   "r10": recall(found, truth, 10), "ms": t * 1000 / len(queries),
                   "raw_r10": recall(raw_ids, truth, 10)}
            rows.append(row)
            say(f"| {nprobe}{' (rule)' if nprobe == rule_nprobe else ''} | {rerank} | "
                f"{row['r1']:.3f} | {row['r10']:.3f} | {row['ms']:.3f} | {row['raw_r10']:.3f} |")
    out["recall"] = rows

    # The service at its chosen structure and defaults next to the best raw Faiss setting that
    # reaches the same recall, and exact search next to IndexFlatIP (bench/service_vs_raw.py).
    if raw:
        point = service_vs_raw.service_point(service, queries, truth)
        exact = service_vs_raw.exact_vs_flat(lambda q: index.search_raw(q, 10, exact=True),
                                             stored32, queries[:100])
        truth_rows = np.where(truth > 0, truth - 1, -1)
        best, in_budget = service_vs_raw.raw_pair(
            stored32, queries[:300], truth_rows[:300], point["recall"],
            service.settings.max_bytes_per_vector, say=say)
        service_vs_raw.rematch(lambda q: index.search_raw(q, 10), point, [best, in_budget],
                               queries[:100])
        index.limit_threads()
        service_vs_raw.report_table(point, best, exact, out.get("exact_flat"), say=say,
                                    raw_in_budget=in_budget)
        out["versus_raw"] = {
            "service": {k: v for k, v in point.items() if k != "structure"},
            "raw": {k: v for k, v in best.items() if k != "sweep"},
            "raw_in_budget": {k: v for k, v in (in_budget or {}).items() if k != "sweep"},
            "exact": exact}

    # Tuning (what the service runs after each training) on its own held-out vectors.
    target = TUNE_TARGET
    # (Not applied after a structure choice: the run goes on with the service's own choice.)
    tuned, t_tune = timed(lambda: service.tune(target, 300, apply=not structure))
    say(f"\ntuning to recall@10 {target} on 300 held-out stored vectors ({t_tune:.1f}s): "
        f"nprobe {tuned['nprobe']}, "
        f"rerank {tuned['rerank']}, recall@10 {tuned['recall_at_k']:.3f} "
        f"(reached {tuned['reached']})")
    found = index.search_raw(queries, 10)[1]
    out["tuned"] = {k: tuned[k] for k in ("nprobe", "rerank", "recall_at_k", "reached")}
    out["tuned"]["query_recall10"] = recall(found, truth, 10)
    say(f"default search after tuning, on the benchmark queries: recall@1 "
        f"{recall(found, truth, 1):.3f}, recall@10 {out['tuned']['query_recall10']:.3f}")

    # In-process speed at the defaults, next to raw Faiss (PQ only, no re-rank) one at a time.
    params = live.search_params(index.nprobe_for(live, None))
    sample = queries[: min(300, len(queries))]
    raw_qps, raw_p50 = one_at_a_time(lambda q: live.index.search(q, 10, params=params), sample)
    ours_qps, ours_p50 = one_at_a_time(lambda q: index.search_raw(q, 10), sample)
    svc_qps, svc_p50 = one_at_a_time(lambda q: service.search(q, 10), sample)
    _, t_batch = timed(lambda: index.search_raw(queries, 10))
    say(f"\nin-process, one at a time: raw Faiss (no re-rank) {raw_qps:,.0f} q/s "
        f"(p50 {raw_p50:.2f} ms); VectorIndex.search_raw {ours_qps:,.0f} q/s "
        f"(p50 {ours_p50:.2f} ms); IndexService.search {svc_qps:,.0f} q/s "
        f"(p50 {svc_p50:.2f} ms)")
    say(f"in-process, batched ({len(queries)} queries per call): "
        f"{len(queries) / t_batch:,.0f} q/s")
    out.update(raw_one_qps=raw_qps, ours_one_qps=ours_qps, ours_one_p50_ms=ours_p50,
               service_one_qps=svc_qps, batched_qps=len(queries) / t_batch)

    snap, t_snap = timed(service.snapshot)
    say(f"snapshot: {snap.bytes / 1e6:.1f} MB in {t_snap:.2f}s "
        f"({snap.bytes / n:.1f} B/vector in the Faiss index)")
    out.update(snapshot_bytes=snap.bytes, snapshot_s=t_snap)
    service.close()
    if args.in_process_only:
        return _finish(args, out, tmp, say)

    # An empty service's RSS: the baseline to subtract for bytes per vector.
    empty_dir = tmp / "empty"
    proc, _, rss_empty = start_process(empty_dir, dim, tmp / "empty.log")
    proc.stop()
    out["rss_empty"] = rss_empty

    # Restart as a real process: load the snapshot, never train.
    results_http = {}
    for label, env in (("restart", {}),):
        proc, ready_s, _ = start_process(data_dir, dim, tmp / "index.log", **env)
        try:
            with httpx.Client(base_url=proc.url, timeout=60) as client:
                stats = client.get("/v1/stats").json()
            http_clients(proc.url, queries[:20], 1, 20, 10)  # warm up
            rss = rss_of(proc)
            one = http_clients(proc.url, queries, 1, args.http_requests, 10)
            eight = http_clients(proc.url, queries, 8, max(1, args.http_requests // 8) * 4, 10)
        finally:
            proc.stop()
        results_http[label] = {"ready_s": ready_s, "load_s": stats["load"]["took_s"],
                               "rss": rss, "one": one, "eight": eight}
        say(f"\nrestart ({label}): ready in {ready_s:.1f}s (index load {stats['load']['took_s']}s,"
            f" kind {stats['kind']}, no training: {stats['last_training'] is None}); RSS "
            f"{rss / 1e6:.0f} MB = {rss / n:.0f} B/vector, {(rss - rss_empty) / n:.0f} B/vector "
            f"above an empty service")
        say(f"HTTP 1 client: {one['qps']:,.0f} q/s, p50 {one['p50_ms']:.2f} ms, "
            f"p95 {one['p95_ms']:.2f} ms; 8 clients: {eight['qps']:,.0f} q/s, "
            f"p50 {eight['p50_ms']:.2f} ms; errors {one['errors'] + eight['errors']}; the "
            f"client's own CPU {one['client_cpu_ms']:.2f} / {eight['client_cpu_ms']:.2f} ms "
            "per request")
        say(f"ratio HTTP 8 clients / in-process one at a time: {eight['qps'] / ours_qps:.2f}")
    out["http"] = results_http

    # Low-memory setting: vectors stay in SQLite; re-rank reads the candidates from it.
    proc, ready_s, _ = start_process(data_dir, dim, tmp / "lowmem.log",
                                     INDEX_VECTORS_IN_MEMORY="false")
    try:
        with httpx.Client(base_url=proc.url, timeout=120) as client:
            found_rows = []
            for q in queries[:100]:
                r = client.post("/v1/search", json={"vectors": [encode_vector(q)], "k": 10})
                found_rows.append([h["id"] for h in r.json()["results"][0]])
        rss = rss_of(proc)
        one = http_clients(proc.url, queries, 1, min(100, args.http_requests), 10)
    finally:
        proc.stop()
    low_r10 = recall(np.asarray(found_rows), truth[:100], 10)
    say(f"\nlow-memory (INDEX_VECTORS_IN_MEMORY=false): ready in {ready_s:.1f}s; RSS "
        f"{rss / 1e6:.0f} MB = {rss / n:.0f} B/vector, {(rss - rss_empty) / n:.0f} B/vector "
        f"above an empty service; recall@10 {low_r10:.3f}; HTTP 1 client p50 "
        f"{one['p50_ms']:.2f} ms")
    out["low_memory"] = {"ready_s": ready_s, "rss": rss, "recall10": low_r10, "one": one}
    return _finish(args, out, tmp, say)


def _finish(args: argparse.Namespace, out: dict[str, Any], tmp: Path,
            say: Callable[[str], None]) -> int:
    out["load_avg_at_end"] = os.getloadavg()[0]
    say(f"\nload average at start {out['load_avg_at_start']:.1f}, at end "
        f"{out['load_avg_at_end']:.1f} ({os.cpu_count()} cores shared with other work)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=float))
    if not args.data_dir:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def restart_only(args: argparse.Namespace) -> int:
    """The restart rows again on a kept index (same N, same trained index, this code)."""
    out: dict[str, Any] = {"load_avg_at_start": os.getloadavg()[0]}
    tmp = Path(tempfile.mkdtemp(prefix="bench-index-"))
    service = IndexService(Settings(data_dir=args.data_dir, dim=args.dim, autotune=False,
                                    snapshot_interval_s=0, snapshot_every_writes=0))
    service.open()
    assert service.index is not None
    n = service.index.table.count
    clusters = args.clusters or max(10, n // 10000)
    queries = synthetic(100, args.dim, 2, clusters)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth = service.index.search_raw(queries, 10, exact=True)[1]
    snap, t_snap = timed(service.snapshot)
    print(f"n {n}; in-process load {service.load_report['took_s']}s "
          f"(vectors from {service.load_report.get('vectors')}); snapshot with this code: "
          f"{snap.bytes / 1e6:.1f} MB Faiss in {t_snap:.2f}s", flush=True)
    service.close()
    proc, _, rss_empty = start_process(tmp / "empty", args.dim, tmp / "empty.log")
    proc.stop()
    runs = (("restart", {}),
            ("low-memory (INDEX_VECTORS_IN_MEMORY=false)", {"INDEX_VECTORS_IN_MEMORY": "false"}),
            ("vectors file removed: read from SQLite as before", {}))
    for label, env in runs:
        if label.startswith("vectors file removed"):
            manifest = json.loads((args.data_dir / "manifest.json").read_text())
            if manifest.get("vectors_file"):
                (args.data_dir / manifest["vectors_file"]).unlink(missing_ok=True)
        proc, ready_s, _ = start_process(args.data_dir, args.dim, tmp / "index.log", **env)
        try:
            with httpx.Client(base_url=proc.url, timeout=120) as client:
                stats = client.get("/v1/stats").json()
                found = [[h["id"] for h in client.post(
                    "/v1/search", json={"vectors": [encode_vector(q)], "k": 10}
                ).json()["results"][0]] for q in queries]
            rss = rss_of(proc)
        finally:
            proc.stop()
        load = stats["load"]
        r10 = recall(np.asarray(found), truth, 10)
        print(f"restart ({label}): ready in {ready_s:.1f}s (index load {load['took_s']}s, "
              f"vectors from {load.get('vectors')}, kind {stats['kind']}, no training: "
              f"{stats['last_training'] is None}); RSS {rss / 1e6:.0f} MB = {rss / n:.0f} "
              f"B/vector, {(rss - rss_empty) / n:.0f} B/vector above an empty service; "
              f"recall@10 {r10:.3f} (100 queries)", flush=True)
        out[label] = {"ready_s": ready_s, "load": load, "rss": rss, "rss_empty": rss_empty,
                      "recall10": r10}
    out["load_avg_at_end"] = os.getloadavg()[0]
    print(f"load average at start {out['load_avg_at_start']:.1f}, at end "
          f"{out['load_avg_at_end']:.1f} (2 cores shared with other work)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=float))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
