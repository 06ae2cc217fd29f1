"""What the benchmarks share: reading vector sets, recall, one-at-a-time timing, a
keep-alive HTTP client with the concurrent-clients driver (bench_index.py, bench_milvus.py and
their tests use them), and the arguments and result rows of the benchmarks on a
bench/real_sets.py set (bench_filters.py, bench_milvus_fresh.py)."""

from __future__ import annotations

import argparse
import csv
import json
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httptools
import numpy as np

from glimpse.contracts.vectors import encode_vector


def read_vectors(path: Path) -> np.ndarray:
    """.npy, or texmex .fvecs / .ivecs / .bvecs (each row: int32 d, then d values)."""
    if path.suffix == ".npy":
        return np.load(path, mmap_mode="r")
    dtype = {".fvecs": np.float32, ".ivecs": np.int32, ".bvecs": np.uint8}[path.suffix]
    raw = np.fromfile(path, dtype=np.uint8)
    d = int(raw[:4].view(np.int32)[0])
    width = 4 + d * np.dtype(dtype).itemsize
    rows = raw.reshape(-1, width)[:, 4:]
    return rows.copy().view(dtype).reshape(-1, d)


def synthetic(n: int, dim: int, seed: int, clusters: int) -> np.ndarray:
    """Unit vectors shaped like embeddings: a cluster centre plus a Gaussian whose variance
    decays as i^-1.5 over the (randomly rotated) axes, generated in chunks.

    The decaying spectrum gives neighbourhoods at every scale (a pure "centres + isotropic
    noise" mixture makes IVF trivially exact and PQ hopeless); PQ alone finds about half of the
    true top 10 on it, close to what the issue reports for real CLIP embeddings.
    """
    rng = np.random.default_rng(1234)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32) / np.sqrt(dim)
    spectrum = ((1 + np.arange(dim)) ** -0.75).astype(np.float32)
    rotation = np.linalg.qr(rng.normal(size=(dim, dim)))[0].astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    rng = np.random.default_rng(seed)
    for start in range(0, n, 65536):
        m = min(65536, n - start)
        c = rng.integers(0, clusters, m)
        z = rng.normal(size=(m, dim)).astype(np.float32) * spectrum
        x = centres[c] + z @ rotation
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def recall(found: Iterable[Sequence[int] | np.ndarray], truth: Iterable[Sequence[int] | np.ndarray],
           k: int) -> float:
    """Recall@k of the rows of ids ``found`` (arrays or lists, any length) against ``truth``,
    whose ids below 0 are none (fewer than k exist) and not counted."""
    hits = wanted = 0
    for f, t in zip(found, truth, strict=True):
        want = {int(i) for i in list(t)[:k] if i >= 0}
        hits += len({int(i) for i in list(f)[:k]} & want)
        wanted += len(want)
    return hits / max(1, wanted)


# -- benchmarks on a real set (bench/real_sets.py) ----------------------------------------------

REPO = Path(__file__).resolve().parents[1]
RESULT_FIELDS = ["date", "commit", "machine", "what", "variant", "value", "unit", "command",
                 "note"]


def real_set_parser(description: str) -> argparse.ArgumentParser:
    """Arguments: the set's base and queries, how many queries, the rows' note, --no-write."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--base", type=Path, default=REPO / "data/real/docstrings.npy")
    ap.add_argument("--queries", type=Path, default=REPO / "data/real/docstrings_queries.npy")
    ap.add_argument("--n-queries", type=int, default=200)
    ap.add_argument("--note", default="")
    ap.add_argument("--no-write", action="store_true")
    return ap


def real_set(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """(base, queries) as float32, from :func:`real_set_parser`'s arguments."""
    return (np.load(args.base).astype(np.float32),
            np.load(args.queries)[: args.n_queries].astype(np.float32))


def append_rows(out: Path, rows: list[dict[str, Any]], command: str) -> None:
    """Append result rows (what, variant, value, unit, note) to the CSV ``out``, dated, with
    the commit measured and the machine; the first row names ``command``."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=REPO, check=True).stdout.strip()
    full = [{"date": date.today().isoformat(), "commit": commit, "machine": "dev-2core",
             "command": command if n == 0 else "", **row} for n, row in enumerate(rows)]
    new = not out.exists()
    # An existing file keeps its own header (it may hold the optional high and runs columns).
    fields = RESULT_FIELDS if new else next(csv.reader(out.open()))
    with out.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, restval="")
        if new:
            writer.writeheader()
        writer.writerows(full)
    print(f"{len(full)} rows -> {out}")


# -- measurement helpers ---------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def one_at_a_time(fn: Callable[[np.ndarray], Any], queries: np.ndarray) -> tuple[float, float]:
    """(queries/s, p50 ms) running the queries one by one: the better of two passes after a
    warm-up pass, so a cold cache does not flatter the HTTP ratios measured against it."""
    for q in queries[:50]:
        fn(q[None, :])
    best: tuple[float, float] = (0.0, 0.0)
    for _ in range(2):
        times = []
        for q in queries:
            start = time.perf_counter()
            fn(q[None, :])
            times.append(time.perf_counter() - start)
        rate = len(queries) / sum(times)
        if rate > best[0]:
            best = (rate, statistics.median(times) * 1000)
    return best


class KeepAliveClient:
    """A blocking HTTP/1.1 keep-alive connection that POSTs JSON bytes: one ``sendall`` per
    request, the answer parsed by httptools (the parser uvicorn uses).

    The searches are what is measured, not a client library: per request this costs ~0.1 ms
    of CPU, the stdlib's http.client 0.3-0.6 ms and httpx ~0.7 ms, and on 2 cores the client's
    CPU comes straight off what the service can use. Its CPU per request is reported.
    """

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        target = urlsplit(url)
        self.host = f"{target.hostname}:{target.port}"
        self.sock = socket.create_connection((target.hostname, target.port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.parser = httptools.HttpResponseParser(self)
        self.body: list[bytes] = []
        self.done = False

    # httptools callbacks
    def on_body(self, data: bytes) -> None:
        self.body.append(data)

    def on_message_complete(self) -> None:
        self.done = True

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        self.sock.sendall(head.encode() + body)
        self.body, self.done = [], False
        while not self.done:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the service closed the connection")
            self.parser.feed_data(data)
        return self.parser.get_status_code(), b"".join(self.body)

    def close(self) -> None:
        self.sock.close()


def http_clients(url: str, queries: np.ndarray, clients: int, per_client: int, k: int
                 ) -> dict[str, float]:
    """``clients`` threads, each one keep-alive connection sending searches back to back."""
    bodies = [json.dumps({"vectors": [encode_vector(q)], "k": k}).encode() for q in queries]
    return search_clients([url], bodies, clients, per_client)


def search_clients(urls: Sequence[str], bodies: list[bytes], clients: int, per_client: int
                   ) -> dict[str, float]:
    """``clients`` threads, each one keep-alive connection sending the search ``bodies`` back to
    back, spread over ``urls`` (client c talks to urls[c % len(urls)])."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()

    def run(offset: int) -> None:
        nonlocal errors
        mine: list[float] = []
        client = KeepAliveClient(urls[offset % len(urls)])
        try:
            client.post("/v1/search", bodies[offset % len(bodies)])  # warm the socket
            for i in range(per_client):
                body = bodies[(offset + i * clients) % len(bodies)]
                start = time.perf_counter()
                status, _ = client.post("/v1/search", body)
                mine.append(time.perf_counter() - start)
                if status != 200:
                    with lock:
                        errors += 1
        finally:
            client.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    cpu = time.process_time()
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu
    latencies.sort()
    return {
        "qps": clients * per_client / wall,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p95_ms": latencies[int(len(latencies) * 0.95)] * 1000,
        "errors": errors,
        "client_cpu_ms": cpu * 1000 / (clients * per_client),
    }
