"""The index service next to raw Faiss on the same vectors and queries, in one run.

Used by ``bench/bench_index.py`` and ``bench/bench_faiss.py tune``. It measures:

* the service's structure (what its training chose, ``/v1/stats`` ``structure``), its recall@10 on
  queries that are not in the index, and its one-query cost in process (``search_raw``, one
  query per call, one OpenMP thread, as the service runs it);
* the best raw Faiss configuration at the same recall: a ``compare`` sweep (IVF-PQ 8-bit and
  4-bit fast-scan with ``RFlat`` refine on the rule's nlist and a quarter of it, ``HNSW32``
  over float32) over nprobe / k_factor / efSearch, batched; the fastest few settings that reach
  the service's recall are then timed one query at a time, and the best is kept;
* exact search: the service's ``"exact": true`` and its flat index below the threshold against
  a plain ``IndexFlatIP`` over the same (float16-rounded) vectors, one query at a time.

One-query costs are the CPU time of the calling thread (``time.thread_time``: Faiss runs a
one-query search on that thread, one OpenMP thread), so another process's load does not count
in it as it does in wall time; the better of two passes, each side measured right after the
other, so what load still does (shared caches, a sibling hyperthread) hits both.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np

from glimpse.index.rules import auto_nlist, auto_pq
from glimpse.index.tuning import recall_at_k

Say = Callable[[str], None]


def one_query_ms(fn: Callable[[np.ndarray], Any], queries: np.ndarray, passes: int = 2) -> float:
    """Mean CPU ms of the calling thread per call of ``fn``, one query per call (the better
    pass), after a warm-up."""
    faiss.omp_set_num_threads(1)
    for q in queries[:10]:
        fn(q[None, :])
    best = math.inf
    for _ in range(passes):
        start = time.thread_time()
        for q in queries:
            fn(q[None, :])
        best = min(best, (time.thread_time() - start) * 1000.0 / len(queries))
    return best


def side_by_side(
    a: Callable[[np.ndarray], Any], b: Callable[[np.ndarray], Any], queries: np.ndarray,
    rounds: int = 2,
) -> tuple[float, float]:
    """One-query ms of ``a`` and ``b``, alternated ``rounds`` times; the best of each."""
    best_a = best_b = math.inf
    for _ in range(rounds):
        best_a = min(best_a, one_query_ms(a, queries, 1))
        best_b = min(best_b, one_query_ms(b, queries, 1))
    return best_a, best_b


def exact_vs_flat(search: Callable[[np.ndarray], Any], stored: np.ndarray, queries: np.ndarray
                  ) -> dict[str, float]:
    """A service exact path against IndexFlatIP over the same float32 rows."""
    flat = faiss.IndexFlatIP(stored.shape[1])
    flat.add(np.ascontiguousarray(stored, dtype=np.float32))
    ours, raw = side_by_side(search, lambda q: flat.search(q, 10), queries)
    return {"service_ms": ours, "flat_ms": raw, "ratio": ours / raw}


def raw_factories(n: int, dim: int) -> list[str]:
    """The raw side's candidates: the same families the service tries, Faiss's own refine."""
    nlist = auto_nlist(n)
    m, nbits = auto_pq(dim, n)
    m4 = max(d for d in range(1, 2 * m + 1) if dim % d == 0)
    lists = [nlist] + ([nlist // 4] if nlist // 4 >= 16 else [])
    out = []
    for nl in lists:
        out += [f"IVF{nl},PQ{m}x{nbits},RFlat", f"IVF{nl},PQ{m4}x4fs,RFlat"]
    return out + ["HNSW32"]


def _train_raw(factory: str, base: np.ndarray) -> faiss.Index:
    index = faiss.index_factory(base.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    inner = faiss.downcast_index(index.base_index) if isinstance(
        faiss.downcast_index(index), faiss.IndexRefine) else index
    ivf = faiss.try_extract_index_ivf(inner)
    if ivf is not None:
        ivf.cp.niter = 10
        pq = faiss.downcast_index(ivf)
        if isinstance(pq, faiss.IndexIVFPQ):
            pq.do_polysemous_training = False  # type: ignore[attr-defined]
    if not index.is_trained:
        nlist = int(ivf.nlist) if ivf is not None else 0
        rows = np.random.default_rng(0).permutation(len(base))[: max(256 * 39, 50 * nlist)]
        index.train(base[np.sort(rows)])
    index.add(base)
    return index


def _params(index: faiss.Index, nprobe: int | None, k_factor: float | None, ef: int | None
            ) -> Any:
    # Keyword construction: Faiss's Python layer then keeps ``inner`` alive with its parent.
    inner: Any = None
    if nprobe is not None:
        inner = faiss.SearchParametersIVF(nprobe=nprobe)
    elif ef is not None:
        inner = faiss.SearchParametersHNSW(efSearch=ef)  # type: ignore[attr-defined]
    if k_factor is None:
        return inner
    return faiss.IndexRefineSearchParameters(k_factor=float(k_factor), base_index_params=inner)


def raw_best(
    base: np.ndarray, queries: np.ndarray, truth: np.ndarray, at_recall: float, *,
    factories: list[str] | None = None, quick: bool = False, say: Say = print,
    max_bytes: float | None = None,
) -> dict[str, Any]:
    """The cheapest one-query raw Faiss setting reaching ``at_recall`` recall@10 (``truth``:
    exact row numbers), from a batched sweep; the five fastest reaching ones are re-timed one
    query at a time. ``max_bytes``: only structures whose bytes per vector, the refine stage's
    float32 copy left out (the service's re-rank vectors are not in its budget either), fit."""
    factories = factories or raw_factories(len(base), base.shape[1])
    rows: list[dict[str, Any]] = []
    keep: dict[str, faiss.Index] = {}
    nprobes = [1, 4, 16, 64] if quick else [1, 2, 4, 8, 16, 32, 64, 128, 256]
    k_factors = [1, 4, 16] if quick else [1, 2, 4, 8, 16, 32, 48]
    efs = [16, 64] if quick else [16, 32, 64, 128, 256]
    for factory in factories:
        started = time.perf_counter()
        index = _train_raw(factory, base)
        build_s = time.perf_counter() - started
        keep[factory] = index
        refine = isinstance(faiss.downcast_index(index), faiss.IndexRefine)
        inner = faiss.downcast_index(index.base_index) if refine else index
        ivf = faiss.try_extract_index_ivf(inner)
        hnsw = isinstance(inner, faiss.IndexHNSW)
        size = len(faiss.serialize_index(index)) / len(base)
        # What the service's budget would count: not the refine stage's float32 vectors.
        budget_size = size - 4 * base.shape[1] if refine else size
        for nprobe in [p for p in nprobes if p <= ivf.nlist] if ivf is not None else [None]:
            for ef in efs if hnsw else [None]:
                for k_factor in k_factors if refine else [None]:
                    params = _params(index, nprobe, k_factor, ef)
                    faiss.omp_set_num_threads(1)
                    start = time.perf_counter()
                    _, found = index.search(queries, 10, params=params)
                    ms = (time.perf_counter() - start) * 1000.0 / len(queries)
                    rows.append({"factory": factory, "nprobe": nprobe, "k_factor": k_factor,
                                 "efSearch": ef, "recall@10": recall_at_k(found, truth, 10),
                                 "batched_ms": ms, "bytes_per_vector": size,
                                 "budget_bytes": budget_size, "build_s": build_s})
        say(f"raw {factory}: built in {build_s:.1f}s, best recall@10 "
            f"{max(r['recall@10'] for r in rows if r['factory'] == factory):.3f}, "
            f"{size:.0f} B/vector ({budget_size:.0f} without a refine copy)")
    return _fastest(rows, keep, queries, at_recall, max_bytes)


def _fastest(rows: list[dict[str, Any]], keep: dict[str, faiss.Index], queries: np.ndarray,
             at_recall: float, max_bytes: float | None) -> dict[str, Any]:
    if max_bytes is not None:
        rows = [r for r in rows if r["budget_bytes"] <= max_bytes]
    if not rows:
        return {}
    reaching = sorted((r for r in rows if r["recall@10"] >= at_recall),
                      key=lambda r: r["batched_ms"])
    if not reaching:
        top = max(rows, key=lambda r: r["recall@10"])
        return {"reached": False, **top, "one_query_ms": None, "sweep": rows}
    timed = []
    for row in reaching[:5]:
        index = keep[row["factory"]]
        params = _params(index, row["nprobe"], row["k_factor"], row["efSearch"])
        ms = one_query_ms(lambda q, index=index, params=params: index.search(q, 10,
                                                                            params=params),
                          queries[:100])
        timed.append({**row, "one_query_ms": ms})
    best = min(timed, key=lambda r: r["one_query_ms"])
    result = {"reached": True, **best, "sweep": rows, "retimed": timed,
              "_index": keep[best["factory"]],
              "_params": _params(keep[best["factory"]], best["nprobe"], best["k_factor"],
                                 best["efSearch"])}
    if max_bytes is None:
        result["_keep"] = keep
    return result


def rematch(service_search: Callable[[np.ndarray], Any], point: dict[str, Any],
            raws: list[dict[str, Any] | None], queries: np.ndarray) -> None:
    """Time the service and each raw winner again, alternated, three rounds, best of each:
    the sweep's timings were taken minutes apart, and on a shared machine minutes apart can
    differ several times over. Updates the ``one_query_ms`` entries in place; the service's is
    its best over all pairings."""
    service_ms = []
    for raw in raws:
        if raw is None or "_index" not in raw:
            continue
        index, params = raw.pop("_index"), raw.pop("_params")
        ours, theirs = side_by_side(service_search,
                                    lambda q, index=index, params=params: index.search(
                                        q, 10, params=params),
                                    queries, rounds=3)
        raw["one_query_ms"] = theirs
        raw["service_ms_beside"] = ours
        service_ms.append(ours)
    if service_ms:
        point["one_query_ms"] = min(service_ms)


def setting(row: dict[str, Any]) -> str:
    parts = [f"{name} {row[name]:g}" for name in ("nprobe", "k_factor", "efSearch")
             if row.get(name) is not None]
    return ", ".join(parts) or "-"


def report_table(service: dict[str, Any], raw: dict[str, Any], exact: dict[str, Any],
                 flat: dict[str, Any] | None, say: Say = print,
                 raw_in_budget: dict[str, Any] | None = None) -> None:
    """The markdown table of one run."""
    say("")
    say("| | structure | setting | recall@10 | one-query CPU ms (in process) | Faiss B/vector |")
    say("|---|---|---|---:|---:|---:|")
    say("(one-query CPU ms of the searching thread: each raw winner and the service timed "
        "alternately, three rounds, best of each)")
    say(f"| service (its choice) | {service['factory']} | nprobe {service['nprobe']}, "
        f"rerank {service['rerank']} | {service['recall']:.3f} | {service['one_query_ms']:.3f} "
        f"| {service['bytes_per_vector']:.1f} |")
    rows = [("raw Faiss, best at ≥ the same recall", raw)]
    if raw_in_budget is not None:
        rows.append(("raw Faiss, best at ≥ the same recall within the service's budget",
                     raw_in_budget))
    for label, found in rows:
        ms = found.get("one_query_ms")
        say(f"| {label} | {found['factory']} | {setting(found)} | {found['recall@10']:.3f} | "
            f"{'-' if ms is None else f'{ms:.3f}'} | {found['bytes_per_vector']:.1f} |")
    raw_ms = raw.get("one_query_ms")
    say(f"| exact: service `\"exact\": true` / IndexFlatIP | | | 1.000 | "
        f"{exact['service_ms']:.3f} / {exact['flat_ms']:.3f} (×{exact['ratio']:.2f}) | |")
    if flat is not None:
        say(f"| exact: service flat index (below threshold) / IndexFlatIP | | | 1.000 | "
            f"{flat['service_ms']:.3f} / {flat['flat_ms']:.3f} (×{flat['ratio']:.2f}) | |")
    if raw_ms:
        say(f"\nservice / best raw one-query cost: ×{service['one_query_ms'] / raw_ms:.2f} "
            f"(target ≤ 2 at recall@10 ≥ 0.95)")
    else:
        say("\nno raw configuration in the sweep reached the service's recall")
    budget_ms = (raw_in_budget or {}).get("one_query_ms")
    if budget_ms:
        say(f"service / best raw within its budget: ×{service['one_query_ms'] / budget_ms:.2f}")


def service_point(service: Any, queries: np.ndarray, truth_ids: np.ndarray) -> dict[str, Any]:
    """The service at its defaults: recall@10 on ``queries`` (truth as item ids), one-query
    cost, what it chose."""
    index = service.index
    found = index.search_raw(queries, 10)[1]
    stats = service.stats()
    structure = stats.get("structure") or {}
    chosen = next((c for c in structure.get("candidates", [])
                   if c["factory"] == stats["factory"] and "skipped" not in c), {})
    ms = one_query_ms(lambda q: index.search_raw(q, 10), queries[:300])
    index.limit_threads()
    snapshot = len(faiss.serialize_index(index.live.index)) / max(1, index.live.ntotal)
    return {"factory": stats["factory"], "nprobe": stats["nprobe"], "rerank": stats["rerank"],
            "recall": recall_at_k(found, truth_ids, 10), "one_query_ms": ms,
            "bytes_per_vector": snapshot, "estimated_bytes": chosen.get("bytes_per_vector"),
            "structure": structure}


def run(base: np.ndarray, queries: np.ndarray, truth: np.ndarray, *, quick: bool = False,
        max_bytes_per_vector: float | None = None, say: Say = print) -> dict[str, Any]:
    """The whole comparison on ``base`` (unit vectors, inner product): an index service in a
    temporary folder, filled, its flat index timed against IndexFlatIP, trained (choosing its
    structure), then measured next to the best raw setting. ``truth``: exact row numbers."""
    import shutil
    import tempfile
    from pathlib import Path

    from glimpse.index.config import Settings
    from glimpse.index.service import IndexService
    from glimpse.index.store import NewItem

    n, dim = base.shape
    stored = np.ascontiguousarray(base, dtype=np.float32).astype(np.float16)
    stored32 = stored.astype(np.float32)
    folder = Path(tempfile.mkdtemp(prefix="service-vs-raw-"))
    extra = {"max_bytes_per_vector": max_bytes_per_vector} if max_bytes_per_vector else {}
    service = IndexService(Settings(data_dir=folder, dim=dim, train_threshold=n + 1,
                                    snapshot_interval_s=0, snapshot_every_writes=0, **extra))
    try:
        service.open()
        for start in range(0, n, 4096):
            part = stored[start : start + 4096]
            service.add([NewItem(f"k{start + i}", f"row/{start + i}", {}, part[i])
                         for i in range(len(part))])
        index = service.index
        assert index is not None
        sample = queries[: 30 if quick else 100]
        flat = exact_vs_flat(lambda q: index.search_raw(q, 10), stored32, sample)
        started = time.perf_counter()
        service.rebuild(None, wait=True)
        say(f"service: chose {index.live.factory} in {time.perf_counter() - started:.1f}s")
        truth_ids = np.where(truth[:, :10] >= 0, truth[:, :10] + 1, -1)  # item id = row + 1
        point = service_point(service, queries, truth_ids)
        exact = exact_vs_flat(lambda q: index.search_raw(q, 10, exact=True), stored32, sample)
        best, in_budget = raw_pair(stored32, queries, truth[:, :10], point["recall"],
                                   service.settings.max_bytes_per_vector, quick=quick, say=say)
        rematch(lambda q: index.search_raw(q, 10), point, [best, in_budget], sample)
        report_table(point, best, exact, flat, say=say, raw_in_budget=in_budget)
        return {"service": point, "raw": best, "raw_in_budget": in_budget, "exact": exact,
                "exact_flat": flat}
    finally:
        service.close()
        shutil.rmtree(folder, ignore_errors=True)


def raw_pair(base: np.ndarray, queries: np.ndarray, truth: np.ndarray, at_recall: float,
             budget: float, *, quick: bool = False, say: Say = print
             ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The best raw setting overall, and the best within ``budget`` bytes per vector when the
    overall one does not fit it (None when it does, or when nothing fits)."""
    best = raw_best(base, queries, truth, at_recall, quick=quick, say=say)
    keep = best.pop("_keep", {})
    if best.get("budget_bytes", 0) <= budget:
        return best, None
    in_budget = _fastest(best["sweep"], keep, queries, at_recall, budget)
    return best, (in_budget or None)
