#!/usr/bin/env python3
"""Faiss parameter study: rerun the experiments behind Glimpse's index defaults on your vectors.

Subcommands (each writes ``<out>/<experiment>_<data>.csv`` and PNG plots, prints a table):

  flat     exact search ("hello Faiss"): ms/query against the number of queries per call
  pq       product quantizer alone: M ∈ {4, 8, 16, 32} × nbits ∈ {6, 7, 8, 9}
  ivfpq    IVF-PQ: nlist ∈ {128 … 4096} × nprobe ∈ {1 … 64}
  compare  any Faiss factory strings (fast-scan "PQ32x4fs", re-ranked ",RFlat"), swept over
           nprobe / re-rank depth (k_factor) / HNSW efSearch; plots the recall-QPS frontier
  gpu      the same searches on CPU and GPU (only with a faiss build that has GPU support)
  tune     the index service's auto-tuner: cheapest nprobe and re-rank depth for a target

Data (``--data``): ``synthetic`` (default: clustered 512-d unit vectors resembling CLIP image
embeddings), ``synthetic-sift`` (128-d SIFT-like), a texmex folder (SIFT1M / Deep1M layout:
``*_base.fvecs`` or ``.bvecs``, ``*_query``, ``*_learn``, ``*_groundtruth.ivecs``), a ``.npy``
file of base vectors (``--queries`` / ``--groundtruth`` optional), or the URL of a running
Glimpse index service, e.g. ``http://localhost:8002``. Missing ground truth is computed with an
exact Faiss index and cached under ``<out>/cache``.

Examples:
  python bench/bench_faiss.py compare --quick
  python bench/bench_faiss.py ivfpq --data ~/data/sift1m
  python bench/bench_faiss.py tune --data http://localhost:8002 --target 0.95
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

# Run as a script, the repository root is not on the path (bench.service_vs_raw needs it).
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import service_vs_raw  # noqa: E402
from glimpse.index.tuning import recall_at_k, tune_search  # noqa: E402

TRUTH_K = 100

# --- data ----------------------------------------------------------------------------------


@dataclass
class Dataset:
    """Base vectors to index, queries, optional training set and ground truth (row ids)."""

    name: str
    base: np.ndarray
    queries: np.ndarray
    metric: str  # "ip" or "l2"
    learn: np.ndarray | None = None
    truth: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def d(self) -> int:
        return int(self.base.shape[1])

    @property
    def faiss_metric(self) -> int:
        return faiss.METRIC_INNER_PRODUCT if self.metric == "ip" else faiss.METRIC_L2

    def training_set(self, at_most: int) -> np.ndarray:
        source = self.learn if self.learn is not None and len(self.learn) else self.base
        if len(source) <= at_most:
            return source
        rows = np.random.default_rng(0).choice(len(source), at_most, replace=False)
        return source[np.sort(rows)]


VECS_TYPES = {".fvecs": "<f4", ".ivecs": "<i4", ".bvecs": "u1"}


def read_vecs(path: Path, count: int | None = None) -> np.ndarray:
    """Read texmex ``.fvecs`` (float32), ``.ivecs`` (int32) or ``.bvecs`` (uint8) rows.

    Each row is a little-endian int32 dimension followed by that many values. The file is
    memory-mapped, so reading the first ``count`` rows of SIFT1B costs only those rows.
    """
    value_type = VECS_TYPES.get(path.suffix.lower())
    if value_type is None:
        raise ValueError(f"{path}: unknown vector file type {path.suffix!r} (fvecs/ivecs/bvecs).")
    size = path.stat().st_size
    if size < 4:
        raise ValueError(f"{path}: {size} bytes, too short for a texmex vector file.")
    dim = int(np.fromfile(path, dtype="<i4", count=1)[0])
    row_bytes = 4 + dim * np.dtype(value_type).itemsize
    if dim <= 0 or size % row_bytes:
        raise ValueError(f"{path}: {size} bytes is not a whole number of {dim}-d rows.")
    rows = size // row_bytes if count is None else min(count, size // row_bytes)
    raw = np.memmap(path, dtype="u1", mode="r", shape=(rows, row_bytes))
    if (np.ascontiguousarray(raw[:, :4]).view("<i4").ravel() != dim).any():
        raise ValueError(f"{path}: rows of varying dimension; not a texmex vector file.")
    return np.ascontiguousarray(raw[:, 4:]).view(value_type).reshape(rows, dim)


def write_vecs(path: Path, rows: np.ndarray) -> None:
    """Write rows in the texmex format its suffix names (the inverse of ``read_vecs``)."""
    rows = np.ascontiguousarray(rows, dtype=VECS_TYPES[path.suffix.lower()])
    header = np.full((len(rows), 1), rows.shape[1], dtype="<i4").view("u1")
    path.write_bytes(np.hstack([header, rows.view("u1").reshape(len(rows), -1)]).tobytes())


def _texmex_file(folder: Path, part: str) -> Path | None:
    for suffix in VECS_TYPES:
        found = sorted(folder.glob(f"*{part}{suffix}"))
        if found:
            return found[0]
    return None


def load_texmex(folder: Path, n: int | None, nq: int | None, metric: str | None) -> Dataset:
    """A SIFT1M / GIST1M / Deep1M style folder: *_base, *_query, *_learn, *_groundtruth."""
    base_file, query_file = _texmex_file(folder, "_base"), _texmex_file(folder, "_query")
    if base_file is None or query_file is None:
        raise SystemExit(f"{folder}: no *_base.fvecs/.bvecs and *_query.fvecs/.bvecs found.")
    base = read_vecs(base_file, n).astype(np.float32)
    queries = read_vecs(query_file, nq).astype(np.float32)
    learn_file = _texmex_file(folder, "_learn")
    learn = read_vecs(learn_file, 100_000).astype(np.float32) if learn_file else None
    notes = [f"texmex folder {folder}"]
    truth = None
    truth_file = _texmex_file(folder, "_groundtruth")
    if truth_file is not None and len(base) == len(read_vecs(base_file)):
        truth = read_vecs(truth_file, len(queries)).astype(np.int64)
    elif truth_file is not None:
        notes.append("ground truth recomputed: --n uses a part of the base")
    # SIFT, GIST and Deep's reference ground truth is L2 (Deep's vectors are unit-norm anyway).
    return Dataset(folder.name, base, queries, metric or "l2", learn, truth, notes)


def _unit_norm(x: np.ndarray) -> bool:
    return bool(np.allclose(np.linalg.norm(x[:1000], axis=1), 1.0, atol=1e-3))


def split_holdout(vectors: np.ndarray, nq: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Take ``nq`` random rows (at most a tenth) out as queries: queries are never indexed."""
    nq = min(nq, max(1, len(vectors) // 10))
    rows = np.random.default_rng(seed).permutation(len(vectors))
    return vectors[np.sort(rows[nq:])], vectors[np.sort(rows[:nq])]


def load_npy(
    path: Path,
    queries_path: Path | None,
    truth_path: Path | None,
    n: int | None,
    nq: int,
    metric: str | None,
    seed: int,
) -> Dataset:
    """Base vectors from a .npy file; queries from another, or held out from the base."""
    vectors = np.load(path, mmap_mode="r")
    if vectors.ndim != 2:
        raise SystemExit(f"{path}: expected a 2-d array of vectors, got shape {vectors.shape}.")
    vectors = np.asarray(vectors[:n] if n else vectors, dtype=np.float32)
    notes = [f".npy file {path}"]
    truth = None
    if queries_path is not None:
        base, queries = vectors, np.load(queries_path).astype(np.float32)[:nq]
        if truth_path is not None and not n:
            truth = np.load(truth_path).astype(np.int64)[: len(queries)]
    else:
        base, queries = split_holdout(vectors, nq, seed)
        notes.append(f"{len(queries)} queries held out of the file")
    guessed = "ip" if _unit_norm(base) else "l2"
    return Dataset(path.stem, base, queries, metric or guessed, None, truth, notes)


def fetch_glimpse(
    url: str,
    *,
    limit: int | None = None,
    client: Any = None,
    max_missing_run: int = 10_000,
) -> tuple[np.ndarray, np.ndarray]:
    """Export a running index service's vectors: (ids, float32 vectors).

    The service has no bulk export, so this reads ``GET /v1/stats`` for the live count and then
    ``GET /v1/items/{id}/vector?encoding=base64`` for ids 1, 2, … until it has them all (deleted
    ids answer 404 and are skipped). One request per vector: fine for a study of ~10⁵ vectors.
    ``client`` is any httpx.Client-like object (a test passes a TestClient of the real app).
    """
    import httpx

    from glimpse.contracts.vectors import decode_vectors

    http = client if client is not None else httpx.Client(base_url=url.rstrip("/"), timeout=30)
    try:
        stats = http.get("/v1/stats")
        stats.raise_for_status()
        live = int(stats.json()["count"])
        wanted = live if limit is None else min(live, limit)
        ids: list[int] = []
        rows: list[Any] = []
        item_id, missing_run = 0, 0
        with tqdm(total=wanted, desc="export", unit="vec", file=sys.stderr) as progress:
            while len(ids) < wanted and missing_run < max_missing_run:
                item_id += 1
                answer = http.get(f"/v1/items/{item_id}/vector", params={"encoding": "base64"})
                if answer.status_code == 404:
                    missing_run += 1
                    continue
                answer.raise_for_status()
                missing_run = 0
                body = answer.json()
                ids.append(int(body["id"]))
                rows.append(body["vector"])
                progress.update(1)
    finally:
        if client is None:
            http.close()
    if not rows:
        raise SystemExit(f"{url}: the index holds no vectors to study.")
    return np.asarray(ids, dtype=np.int64), decode_vectors(rows, None, allow_zero=True)


def load_glimpse(url: str, n: int | None, nq: int, seed: int) -> Dataset:
    ids, vectors = fetch_glimpse(url, limit=n)
    base, queries = split_holdout(vectors, nq, seed)
    notes = [f"{len(ids)} vectors exported from {url}", f"{len(queries)} queries held out"]
    return Dataset("glimpse", base, queries, "ip", None, None, notes)


def synthetic_clip(n: int, nq: int, d: int, seed: int) -> Dataset:
    """Clustered unit vectors with the statistics of CLIP image embeddings.

    Topics hold concepts, concepts hold images; all spread lives in a randomly rotated space
    whose standard deviation decays as 1/√i (so ~150 of 512 directions carry 90 % of the
    variance), and a shared offset puts every vector in a cone, as CLIP's are. For n=100k at
    d=512 this gives a mean cosine of ~0.5 between random pairs and ~0.89 to the nearest
    neighbour, ~0.87 to the 10th.
    """
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.standard_normal((d, d)).astype(np.float32))
    basis = (np.arange(1, d + 1, dtype=np.float32) ** -0.5)[:, None] * rotation
    offset = rng.standard_normal(d).astype(np.float32)
    offset /= np.linalg.norm(offset)
    total = n + nq
    topics = rng.standard_normal((64, d)).astype(np.float32) @ basis
    n_concepts = max(16, min(4096, total // 50))
    concepts = topics[rng.integers(0, len(topics), n_concepts)]
    concepts += 0.6 * rng.standard_normal((n_concepts, d)).astype(np.float32) @ basis
    x = np.empty((total, d), dtype=np.float32)
    for start in range(0, total, 50_000):
        stop = min(total, start + 50_000)
        block = concepts[rng.integers(0, n_concepts, stop - start)]
        block += 0.8 * rng.standard_normal((stop - start, d)).astype(np.float32) @ basis
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        block += offset
        x[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    notes = [f"synthetic CLIP-like: {n} clustered {d}-d unit vectors, inner product"]
    return Dataset(f"clip{d}", x[:n], x[n:], "ip", None, None, notes)


def synthetic_sift(n: int, nq: int, d: int, seed: int) -> Dataset:
    """Non-negative integer-valued clustered vectors, like SIFT descriptors, compared by L2."""
    rng = np.random.default_rng(seed)
    n_centres = max(16, min(4096, (n + nq) // 100))
    centres = np.abs(rng.standard_normal((n_centres, d))).astype(np.float32) * 25
    x = centres[rng.integers(0, n_centres, n + nq)]
    x += 18 * rng.standard_normal(x.shape).astype(np.float32)
    x = np.clip(np.rint(x), 0, 255).astype(np.float32)
    notes = [f"synthetic SIFT-like: {n} clustered {d}-d non-negative integer vectors, L2"]
    return Dataset(f"sift{d}", x[:n], x[n:], "l2", None, None, notes)


def load_dataset(args: argparse.Namespace) -> Dataset:
    source = args.data
    if source in ("synthetic", "synthetic-clip", "synthetic-sift"):
        make = synthetic_sift if source == "synthetic-sift" else synthetic_clip
        data = make(args.n, args.nq, args.d or (128 if make is synthetic_sift else 512), args.seed)
        if args.metric and args.metric != data.metric:
            data.metric = args.metric
            data.name += f"_{args.metric}"
            data.notes.append(f"searched with metric {args.metric} (--metric)")
        return data
    if source.startswith(("http://", "https://")):
        return load_glimpse(source, args.n_given, args.nq, args.seed)
    path = Path(source).expanduser()
    if path.is_dir():
        return load_texmex(path, args.n_given, args.nq, args.metric)
    if path.suffix == ".npy" and path.is_file():
        return load_npy(
            path, args.queries, args.groundtruth, args.n_given, args.nq, args.metric, args.seed
        )
    raise SystemExit(
        f"--data {source!r}: not 'synthetic', 'synthetic-sift', a texmex folder, a .npy file "
        "or the http(s) URL of a Glimpse index service."
    )


def ground_truth(data: Dataset, cache_dir: Path, k: int = TRUTH_K) -> np.ndarray:
    """Exact top-k ids of each query (Faiss flat search), cached by a hash of the data."""
    if data.truth is not None:
        return data.truth
    k = min(k, len(data.base))
    digest = hashlib.blake2b(digest_size=12)
    for part in (data.base, data.queries):
        digest.update(str(part.shape).encode())
        digest.update(np.ascontiguousarray(part).data)
    digest.update(f"{data.metric}:{k}".encode())
    cached = cache_dir / f"gt_{data.name}_{digest.hexdigest()}.npy"
    if cached.is_file():
        data.truth = np.load(cached)
        return data.truth
    exact = faiss.IndexFlat(data.d, data.faiss_metric)
    exact.add(data.base)
    _, truth = exact.search(data.queries, k)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(cached, truth)
    data.truth = truth
    return truth


# --- measuring -----------------------------------------------------------------------------


def timed_search(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    params: faiss.SearchParameters | None = None,
    batch: int | None = None,
) -> tuple[np.ndarray, float]:
    """Ids (nq, k) and wall milliseconds per query, ``batch`` queries per Faiss call."""
    batch = batch or len(queries)
    found = np.empty((len(queries), k), dtype=np.int64)
    start = time.perf_counter()
    for i in range(0, len(queries), batch):
        _, found[i : i + batch] = index.search(queries[i : i + batch], k, params=params)
    return found, (time.perf_counter() - start) * 1000.0 / len(queries)


def quality(found: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    return {
        "recall@1": recall_at_k(found, truth, 1),
        "recall@10": recall_at_k(found, truth, min(10, found.shape[1], truth.shape[1])),
    }


def speed(ms: float) -> dict[str, float]:
    return {"ms_per_query": ms, "qps": 1000.0 / ms if ms > 0 else float("inf")}


def train_and_add(index: faiss.Index, data: Dataset, train_at_most: int) -> dict[str, float]:
    start = time.perf_counter()
    if not index.is_trained:
        index.train(data.training_set(train_at_most))
    trained = time.perf_counter()
    index.add(data.base)
    return {"train_s": trained - start, "add_s": time.perf_counter() - trained}


def search_params(
    nprobe: int | None, k_factor: float | None, ef: int | None
) -> faiss.SearchParameters | None:
    """Per-call parameters: IVF nprobe or HNSW efSearch, inside a refine stage's k_factor."""
    inner: faiss.SearchParameters | None = None
    if nprobe is not None:
        inner = faiss.SearchParametersIVF(nprobe=nprobe)
    elif ef is not None:
        inner = faiss.SearchParametersHNSW(efSearch=ef)
    if k_factor is not None:
        return faiss.IndexRefineSearchParameters(k_factor=float(k_factor), base_index_params=inner)
    return inner


@dataclass
class IndexKind:
    ivf: bool
    refine: bool
    hnsw: bool


def describe_index(index: faiss.Index) -> IndexKind:
    """Which search parameters a factory-built index takes."""
    index = faiss.downcast_index(index)
    refine = isinstance(index, faiss.IndexRefine)
    inner = faiss.downcast_index(index.base_index) if refine else index
    try:
        ivf = faiss.extract_index_ivf(inner) is not None
    except RuntimeError:
        ivf = False
    return IndexKind(ivf=ivf, refine=refine, hnsw=isinstance(inner, faiss.IndexHNSW))


def auto_nlist(n: int) -> int:
    """Power of two nearest 4·√N (the low end of the service's rule), ≥ 39 vectors a list."""
    return max(16, min(2 ** round(math.log2(4 * math.sqrt(max(n, 1)))), max(1, n // 39)))


def default_m(d: int) -> int:
    """PQ sub-quantizers: 32 when d allows it, else d's largest divisor among 16, 8, 4, 2, 1."""
    return next(m for m in (32, 16, 8, 4, 2, 1) if d % m == 0)


def ivf_training_size(args: argparse.Namespace, nlist: int) -> int:
    """Faiss wants ≥ 39 training vectors per list; --quick keeps its small sample anyway."""
    return args.train_size if args.quick else max(args.train_size, 39 * nlist)


def expand_factory(factory: str, data: Dataset, nlist: int) -> str:
    return factory.replace("{nlist}", str(nlist)).replace("{m}", str(default_m(data.d)))


# --- experiments ---------------------------------------------------------------------------

Row = dict[str, Any]


@dataclass
class Experiment:
    """What a run measured, and how to plot it."""

    name: str
    rows: list[Row]
    x: str
    group: str | None = None
    log_x: bool = True
    frontier: bool = False
    skipped: str | None = None
    summary: str | None = None


def run_flat(data: Dataset, truth: np.ndarray, args: argparse.Namespace) -> Experiment:
    index = faiss.IndexFlat(data.d, data.faiss_metric)
    build = train_and_add(index, data, 0)
    nq = len(data.queries)
    grid = [1, 16, nq] if args.quick else [1, 4, 16, 64, 256, nq]
    rows = []
    for batch in tqdm(sorted({min(b, nq) for b in grid}), desc="flat", file=sys.stderr):
        # One query per call is slow to time over all queries; 64 calls tell it just as well.
        count = min(nq, 64 * batch)
        found, ms = timed_search(index, data.queries[:count], 10, batch=batch)
        rows.append(
            {
                "index": "Flat",
                "batch": batch,
                **quality(found, truth[:count]),
                **speed(ms),
                **build,
                "bytes_per_vector": 4 * data.d,
            }
        )
    return Experiment("flat", rows, x="batch")


def run_pq(data: Dataset, truth: np.ndarray, args: argparse.Namespace) -> Experiment:
    rows: list[Row] = []
    grid = [(m, b) for m in args.m if data.d % m == 0 for b in args.nbits]
    training = data.training_set(args.train_size)
    for m, nbits in tqdm(grid, desc="pq", file=sys.stderr):
        name = f"PQ{m}x{nbits}"
        if len(training) < 2**nbits:
            reason = f"{len(training)} training vectors < {2**nbits} centroids"
            rows.append({"index": name, "M": m, "nbits": nbits, "skipped": reason})
            continue
        index = faiss.IndexPQ(data.d, m, nbits, data.faiss_metric)
        build = train_and_add(index, data, args.train_size)
        found, ms = timed_search(index, data.queries, 10)
        rows.append(
            {
                "index": name,
                "M": m,
                "nbits": nbits,
                "code_bytes": index.pq.code_size,
                **quality(found, truth),
                **speed(ms),
                **build,
            }
        )
    return Experiment("pq", rows, x="nbits", group="M", log_x=False)


def run_ivfpq(data: Dataset, truth: np.ndarray, args: argparse.Namespace) -> Experiment:
    m = args.pq_m or default_m(data.d)
    rows: list[Row] = []
    for nlist in tqdm(args.nlist, desc="ivfpq", file=sys.stderr):
        factory = f"IVF{nlist},PQ{m}x{args.pq_nbits}"
        if len(data.base) < 4 * nlist:
            reason = f"{len(data.base)} vectors are too few for {nlist} lists"
            rows.append({"index": factory, "nlist": nlist, "skipped": reason})
            continue
        index = faiss.index_factory(data.d, factory, data.faiss_metric)
        build = train_and_add(index, data, ivf_training_size(args, nlist))
        for nprobe in (p for p in args.nprobe if p <= nlist):
            found, ms = timed_search(index, data.queries, 10, search_params(nprobe, None, None))
            rows.append(
                {
                    "index": factory,
                    "nlist": nlist,
                    "nprobe": nprobe,
                    **quality(found, truth),
                    **speed(ms),
                    **build,
                }
            )
    return Experiment("ivfpq", rows, x="nprobe", group="nlist")


def run_compare(data: Dataset, truth: np.ndarray, args: argparse.Namespace) -> Experiment:
    nlist = args.nlist[0] if args.nlist_given else auto_nlist(len(data.base))
    rows: list[Row] = []
    factories = [expand_factory(f, data, nlist) for f in args.factories]
    for factory in tqdm(factories, desc="compare", file=sys.stderr):
        try:
            index = faiss.index_factory(data.d, factory, data.faiss_metric)
        except RuntimeError as exc:
            reason = f"not a Faiss factory string for d={data.d}: {exc}".splitlines()[0]
            rows.append({"index": factory, "skipped": reason})
            continue
        kind = describe_index(index)
        build = train_and_add(index, data, ivf_training_size(args, nlist if kind.ivf else 0))
        size = len(faiss.serialize_index(index)) / max(1, index.ntotal)
        for nprobe in args.nprobe if kind.ivf else [None]:
            for ef in args.ef if kind.hnsw else [None]:
                for k_factor in args.k_factor if kind.refine else [None]:
                    params = search_params(nprobe, k_factor, ef)
                    found, ms = timed_search(index, data.queries, 10, params)
                    variant = factory if k_factor is None else f"{factory} k_factor={k_factor:g}"
                    rows.append(
                        {
                            "index": factory,
                            "variant": variant,
                            "nprobe": nprobe,
                            "k_factor": k_factor,
                            "efSearch": ef,
                            **quality(found, truth),
                            **speed(ms),
                            "bytes_per_vector": size,
                            **build,
                        }
                    )
    return Experiment("compare", rows, x="nprobe", group="variant", frontier=True)


def gpu_count() -> int:
    if not hasattr(faiss, "StandardGpuResources") or not hasattr(faiss, "get_num_gpus"):
        return 0
    return int(faiss.get_num_gpus())


def run_gpu(data: Dataset, truth: np.ndarray, args: argparse.Namespace) -> Experiment:
    if gpu_count() == 0:
        reason = (
            "this faiss build has no GPU support (faiss-cpu) or sees no GPU; install faiss-gpu "
            "on a machine with an NVIDIA GPU to compare CPU and GPU"
        )
        return Experiment("gpu", [], x="nprobe", skipped=reason)
    resources = faiss.StandardGpuResources()
    nlist = auto_nlist(len(data.base))
    rows: list[Row] = []
    for factory in ("Flat", f"IVF{nlist},PQ{default_m(data.d)}"):
        cpu = faiss.index_factory(data.d, factory, data.faiss_metric)
        build = train_and_add(cpu, data, ivf_training_size(args, nlist))
        gpu = faiss.index_cpu_to_gpu(resources, 0, cpu)
        for nprobe in args.nprobe if factory != "Flat" else [None]:
            for device, index in (("cpu", cpu), ("gpu", gpu)):
                if nprobe is not None and device == "cpu":
                    faiss.extract_index_ivf(index).nprobe = nprobe
                elif nprobe is not None:
                    faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", nprobe)
                timed_search(index, data.queries[:16], 10)  # warm-up: kernels, allocations
                found, ms = timed_search(index, data.queries, 10)
                rows.append(
                    {
                        "index": f"{factory} ({device})",
                        "device": device,
                        "nprobe": nprobe or 1,
                        **quality(found, truth),
                        **speed(ms),
                        **build,
                    }
                )
    return Experiment("gpu", rows, x="nprobe", group="index")


def run_tune(data: Dataset, truth: np.ndarray, args: argparse.Namespace) -> Experiment:
    nlist = args.nlist[0] if args.nlist_given else auto_nlist(len(data.base))
    factory = expand_factory(args.factory, data, nlist)
    index = faiss.index_factory(data.d, factory, data.faiss_metric)
    kind = describe_index(index)
    build = train_and_add(index, data, ivf_training_size(args, nlist if kind.ivf else 0))
    unrefined = faiss.downcast_index(index.base_index) if kind.refine else index

    def search(queries: np.ndarray, k: int, nprobe: int, rerank: int) -> np.ndarray:
        if rerank == 0:
            params = search_params(nprobe if kind.ivf else None, None, None)
            _, found = unrefined.search(queries, k, params=params)
        else:
            params = search_params(nprobe if kind.ivf else None, rerank, None)
            _, found = index.search(queries, k, params=params)
        return found

    k = min(10, truth.shape[1])
    nprobes = args.nprobe if kind.ivf else [1]
    reranks = args.rerank if kind.refine else [0]
    result = tune_search(
        search,
        data.queries,
        truth[:, :k],
        k=k,
        target=args.target,
        nprobes=nprobes,
        reranks=reranks,
    )
    chosen = (result.nprobe, result.rerank)
    rows = [
        {"index": factory, **t, "chosen": (t["nprobe"], t["rerank"]) == chosen, **build}
        for t in result.trials
    ]
    verdict = "reached" if result.reached else "NOT reached (highest recall shown)"
    summary = (
        f"tune {factory}: target recall@{k} {result.target:.3f} {verdict}: "
        f"nprobe={result.nprobe} rerank={result.rerank} recall@{k}={result.recall_at_k:.4f} "
        f"{result.ms_per_query:.4f} ms/query; tried {len(result.trials)} of "
        f"{len(nprobes) * len(reranks)} settings"
    )
    if args.service and data.metric == "ip":
        # The index service on the same vectors and queries: the structure it chooses, its
        # recall@10 and one-query cost, next to the best raw setting at that recall.
        lines: list[str] = []
        service_vs_raw.run(data.base, data.queries, truth, quick=args.quick,
                           max_bytes_per_vector=args.max_bytes_per_vector,
                           say=lambda line: (print(line, flush=True), lines.append(line)))
        summary += "\n" + "\n".join(lines)
    elif args.service:
        summary += "\nservice: skipped (the index service ranks by inner product; data is L2)"
    return Experiment("tune", rows, x="nprobe", group="rerank", summary=summary)


EXPERIMENTS: dict[str, Callable[[Dataset, np.ndarray, argparse.Namespace], Experiment]] = {
    "flat": run_flat,
    "pq": run_pq,
    "ivfpq": run_ivfpq,
    "compare": run_compare,
    "gpu": run_gpu,
    "tune": run_tune,
}

# --- output --------------------------------------------------------------------------------


def write_csv(rows: list[Row], path: Path) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def format_table(rows: list[Row], columns: Sequence[str]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4f}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


TABLE_COLUMNS = {
    "flat": ["index", "batch", "recall@1", "recall@10", "ms_per_query", "qps"],
    "pq": ["index", "code_bytes", "recall@1", "recall@10", "ms_per_query", "train_s"],
    "ivfpq": ["index", "nprobe", "recall@1", "recall@10", "ms_per_query", "train_s"],
    "compare": [
        "index",
        "nprobe",
        "k_factor",
        "efSearch",
        "recall@1",
        "recall@10",
        "ms_per_query",
        "qps",
        "bytes_per_vector",
    ],
    "gpu": ["index", "nprobe", "recall@1", "recall@10", "ms_per_query", "qps"],
    "tune": ["index", "nprobe", "rerank", "recall_at_k", "ms_per_query", "reached", "chosen"],
}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and in CI
    import matplotlib.pyplot as plt

    return plt


def _groups(rows: list[Row], group: str | None) -> dict[Any, list[Row]]:
    out: dict[Any, list[Row]] = {}
    for row in rows:
        out.setdefault(row.get(group) if group else "", []).append(row)
    return out


def plot_sweep(exp: Experiment, title: str, path: Path) -> None:
    """recall@1, recall@10 and ms/query against the swept parameter, one line per group."""
    plt = _pyplot()
    if exp.name == "tune":
        metrics = [("recall_at_k", "recall@10"), ("ms_per_query", "ms/query")]
    else:
        metrics = [
            ("recall@1", "recall@1"),
            ("recall@10", "recall@10"),
            ("ms_per_query", "ms/query"),
        ]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4))
    named = exp.group not in (None, "index", "variant")
    for ax, (metric, label) in zip(axes, metrics, strict=True):
        ax.set_prop_cycle(color=plt.cm.tab20.colors)  # up to 20 lines, each its own colour
        for group, rows in _groups(exp.rows, exp.group).items():
            points = sorted(
                (r[exp.x], r[metric]) for r in rows if metric in r and r.get(exp.x) is not None
            )
            if points:
                xs, ys = zip(*points, strict=True)
                name = f"{exp.group}={group}" if named else str(group)
                ax.plot(xs, ys, marker="o", markersize=3, label=name)
        if exp.log_x:
            ax.set_xscale("log", base=2)
        if metric == "ms_per_query":
            ax.set_yscale("log")
        ax.set_xlabel(exp.x)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    if axes[0].get_legend_handles_labels()[1]:
        axes[0].legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def pareto(rows: list[Row]) -> list[Row]:
    """Points no other point beats on both recall@10 and QPS, by rising recall."""
    best: list[Row] = []
    for row in sorted(rows, key=lambda r: (-r["qps"], -r["recall@10"])):
        if not best or row["recall@10"] > best[-1]["recall@10"]:
            best.append(row)
    return sorted(best, key=lambda r: r["recall@10"])


def plot_frontier(exp: Experiment, title: str, path: Path) -> None:
    """recall@10 against queries per second (log): the Pareto frontier of each index."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for group, rows in _groups(exp.rows, "index").items():
        front = pareto(rows)
        recalls, qps = [r["recall@10"] for r in front], [r["qps"] for r in front]
        ax.plot(recalls, qps, marker="o", markersize=3, label=str(group))
    ax.set_yscale("log")
    ax.set_xlabel("recall@10")
    ax.set_ylabel("queries per second (batched, log)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def report(exp: Experiment, data: Dataset, out: Path) -> list[Path]:
    """Write the CSV and the plots, print the table; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{exp.name}_{data.name}"
    written = [out / f"{stem}.csv"]
    write_csv(exp.rows, written[0])
    for row in exp.rows:
        if "skipped" in row:
            print(f"skipped {row['index']}: {row['skipped']}")
    measured = Experiment(**{**exp.__dict__, "rows": [r for r in exp.rows if "skipped" not in r]})
    print(format_table(measured.rows, TABLE_COLUMNS[exp.name]))
    if exp.summary:
        print(exp.summary)
    title = (
        f"{exp.name} on {data.name}: N={len(data.base)}, d={data.d}, "
        f"{len(data.queries)} queries, {data.metric}, {faiss.omp_get_max_threads()} threads"
    )
    if measured.rows:
        written.append(out / f"{stem}_sweep.png")
        plot_sweep(measured, title, written[-1])
        if exp.frontier:
            written.append(out / f"{stem}_frontier.png")
            plot_frontier(measured, title, written[-1])
    print("wrote " + ", ".join(str(p) for p in written))
    return written


# --- command line --------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def float_list(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


# k_factor=1 on an ",RFlat" index re-ranks only the k hits the codes found, so its recall is
# the codes' own: one index per code shows it both alone and re-ranked.
DEFAULT_FACTORIES = [
    "Flat",
    "IVF{nlist},Flat",
    "IVF{nlist},PQ{m}x8,RFlat",
    "IVF{nlist},PQ{m}x4fs,RFlat",
]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    add = common.add_argument
    add(
        "--data",
        default="synthetic",
        help="synthetic | synthetic-sift | texmex folder | .npy file | index service URL",
    )
    add("--queries", type=Path, help="queries .npy, with a .npy --data (else held out)")
    add("--groundtruth", type=Path, help="exact neighbour ids .npy, with --queries")
    add("--n", type=int, help="base vectors (synthetic: 100000, quick 5000; files: all)")
    add("--nq", type=int, help="queries (default 1000, quick 100)")
    add("--d", type=int, help="dimension of synthetic data (default 512; sift 128)")
    add("--metric", choices=["ip", "l2"], help="default: from the data")
    add("--seed", type=int, default=0)
    add("--threads", type=int, default=0, help="Faiss OpenMP threads; 0 = Faiss's default")
    add(
        "--train-size",
        type=int,
        default=50_000,
        help="most vectors to train quantizers on (IVF: at least 39 per list)",
    )
    add("--out", type=Path, default=Path("artifacts/bench_faiss"), help="CSV, plots, cache")
    add("--quick", action="store_true", help="small data and grids: under two minutes")

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("flat", parents=[common], help="exact search timing")
    pq = sub.add_parser("pq", parents=[common], help="PQ sub-quantizers × bits")
    pq.add_argument("--m", type=int_list, help="sub-quantizers (default 4,8,16,32)")
    pq.add_argument("--nbits", type=int_list, help="bits per sub-code (default 6,7,8,9)")
    ivf = sub.add_parser("ivfpq", parents=[common], help="IVF-PQ lists × lists visited")
    ivf.add_argument("--nlist", type=int_list, help="default 128,256,…,4096 (quick 16,64)")
    ivf.add_argument("--nprobe", type=int_list, help="default 1,2,…,64 (quick 1,4,16,64)")
    ivf.add_argument("--pq-m", type=int, help="PQ sub-quantizers (default 32 when d allows)")
    ivf.add_argument("--pq-nbits", type=int, help="bits per sub-code (default 8, quick 6)")
    compare = sub.add_parser("compare", parents=[common], help="factory strings, QPS frontier")
    compare.add_argument(
        "factories",
        nargs="*",
        help="Faiss factory strings; {nlist} and {m} are filled in "
        f"(default: {' '.join(DEFAULT_FACTORIES)})",
    )
    compare.add_argument("--nlist", type=int_list, help="fills {nlist} (default: ≈4·√N)")
    compare.add_argument("--nprobe", type=int_list, help="default 1,2,…,128 (quick 1,4,16,64)")
    compare.add_argument(
        "--k-factor",
        type=float_list,
        help="re-rank depths of RFlat (default 1,2,4,8,16; quick 1,4,16)",
    )
    compare.add_argument("--ef", type=int_list, help="HNSW efSearch (default 16,32,…,256)")
    gpu = sub.add_parser("gpu", parents=[common], help="CPU against GPU (faiss-gpu only)")
    gpu.add_argument("--nprobe", type=int_list, help="default 1,2,…,64 (quick 1,4,16,64)")
    tune = sub.add_parser("tune", parents=[common], help="auto-tune nprobe and re-rank depth")
    tune.add_argument("--factory", default="IVF{nlist},PQ{m}x8,RFlat", help="as the service")
    tune.add_argument("--target", type=float, default=0.95, help="recall@10 to reach")
    tune.add_argument("--nlist", type=int_list, help="fills {nlist} (default: ≈4·√N)")
    tune.add_argument("--nprobe", type=int_list, help="default 1,2,…,128")
    tune.add_argument("--rerank", type=int_list, help="default 0,2,4,8,16")
    tune.add_argument(
        "--service",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also build the index service on the data: its chosen structure, recall@10 and "
        "one-query cost next to the best raw Faiss setting at that recall (default on)",
    )
    tune.add_argument("--max-bytes-per-vector", type=float,
                      help="the service's INDEX_MAX_BYTES_PER_VECTOR (default: its own)")
    return parser


def fill_defaults(args: argparse.Namespace) -> None:
    """Defaults that depend on --quick and on the experiment."""
    quick = args.quick
    args.n_given = args.n
    args.n = args.n or (5_000 if quick else 100_000)
    args.nq = args.nq or (100 if quick else 1000)
    wide = args.command in ("compare", "tune")
    defaults: dict[str, tuple[Any, Any]] = {  # name: (full, quick)
        "m": ([4, 8, 16, 32], [8, 32]),
        "nbits": ([6, 7, 8, 9], [6, 8]),
        "nlist": ([128, 256, 512, 1024, 2048, 4096], [16, 64]),
        "nprobe": ([1, 2, 4, 8, 16, 32, 64] + ([128] if wide else []), [1, 4, 16]),
        "k_factor": ([1, 2, 4, 8, 16], [1, 4, 16]),
        "ef": ([16, 32, 64, 128, 256], [16, 64, 256]),
        "rerank": ([0, 2, 4, 8, 16], [0, 2, 4, 8, 16]),
        # 6-bit codebooks train 4× faster than 8-bit ones, the bulk of a quick IVF-PQ sweep.
        "pq_nbits": (8, 6),
    }
    if args.command == "tune":
        defaults["nprobe"] = ([1, 2, 4, 8, 16, 32, 64, 128], [1, 2, 4, 8, 16, 32, 64, 128])
    for name, (full, small) in defaults.items():
        if hasattr(args, name):
            setattr(args, f"{name}_given", getattr(args, name) is not None)
            if getattr(args, name) is None:
                setattr(args, name, small if quick else full)
    if args.command == "compare" and not args.factories:
        args.factories = DEFAULT_FACTORIES
    if quick:
        # Training 8-bit PQ codebooks dominates a run: cost ∝ training vectors × 256 × d.
        args.train_size = min(args.train_size, 2_500)


def run(argv: Sequence[str] | None = None) -> tuple[Experiment, list[Path]]:
    """Parse, load, measure, report: the experiment and the files written."""
    args = build_parser().parse_args(argv)
    fill_defaults(args)
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    if args.command == "gpu" and gpu_count() == 0:
        # Say so before loading anything: there is nothing to measure without a GPU.
        exp = run_gpu(Dataset("none", np.zeros((0, 1)), np.zeros((0, 1)), "l2"), np.zeros(0), args)
        print(f"gpu: skipped: {exp.skipped}")
        return exp, []
    data = load_dataset(args)
    for note in data.notes:
        print(f"data: {note}")
    print(
        f"data: {data.name}: {len(data.base)} × {data.d} base, {len(data.queries)} queries, "
        f"metric {data.metric}; Faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads"
    )
    truth = ground_truth(data, args.out / "cache")
    exp = EXPERIMENTS[args.command](data, truth, args)
    return exp, report(exp, data, args.out)


def main(argv: Sequence[str] | None = None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
