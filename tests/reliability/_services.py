"""Real service processes and thin HTTP clients for the reliability suite.

Only the environment variables and HTTP APIs of docs/architecture.md are used here, never a
service's internals, so these tests keep their meaning when the code behind the API changes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.support.procs import ServiceProcess

DIM = 64
TINY_ENCODER_ENV = {
    "ENCODER_MODEL": "glimpse-tiny",
    "ENCODER_PRETRAINED": "none",
    "ENCODER_DEVICE": "cpu",
    "OMP_NUM_THREADS": "1",  # torch's threads (and Faiss's)
}


def index_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment of an index service with a 64-d store in ``data_dir``."""
    env = {
        "INDEX_DATA_DIR": str(data_dir),
        "INDEX_DIM": str(DIM),
        "OMP_NUM_THREADS": "1",
        # Snapshots only when a test asks for them, so runs are reproducible.
        "INDEX_SNAPSHOT_INTERVAL_S": "0",
        "INDEX_SNAPSHOT_EVERY_WRITES": "0",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


def index_process(
    tmp_path: Path, data_dir: Path, name: str = "index", **extra: str
) -> ServiceProcess:
    """An index service (not started) whose log is ``tmp_path/<name>.log``."""
    env = index_env(data_dir, **extra)
    return ServiceProcess("glimpse.index.main", env, tmp_path / f"{name}.log")


def unit_vectors(n: int, rng: np.random.Generator, dim: int = DIM) -> np.ndarray:
    """``n`` random unit vectors (float32); distinct with overwhelming probability."""
    m = rng.standard_normal((n, dim)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def wait_until(predicate: Any, timeout: float, interval: float = 0.05, what: str = "") -> Any:
    """Poll ``predicate`` until it returns a truthy value; raise TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate} ({last!r})")


class IndexAPI:
    """The index service's HTTP API (docs/architecture.md, 'Internal APIs'), nothing more."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> IndexAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_raw(self, items: Sequence[dict[str, Any]]) -> httpx.Response:
        return self.http.post("/v1/items", json={"items": list(items)})

    def add(
        self, keys: Sequence[str], vectors: np.ndarray, paths: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        items = [
            {"vector": v.tolist(), "key": k, "path": (paths[i] if paths else f"img/{k}.png")}
            for i, (k, v) in enumerate(zip(keys, vectors, strict=True))
        ]
        r = self.add_raw(items)
        r.raise_for_status()
        out: list[dict[str, Any]] = r.json()["items"]
        return out

    def search_raw(self, vectors: np.ndarray | list[Any], k: int, exact: bool = False,
                   **extra: Any) -> httpx.Response:
        vecs = vectors.tolist() if isinstance(vectors, np.ndarray) else vectors
        return self.http.post("/v1/search", json={"vectors": vecs, "k": k, "exact": exact, **extra})

    def search(self, vectors: np.ndarray, k: int, exact: bool = False,
               **extra: Any) -> list[list[dict[str, Any]]]:
        r = self.search_raw(vectors, k, exact, **extra)
        r.raise_for_status()
        out: list[list[dict[str, Any]]] = r.json()["results"]
        return out

    def missing(self, keys: Iterable[str]) -> list[str]:
        keys = list(keys)
        missing: list[str] = []
        for start in range(0, len(keys), 5000):
            r = self.http.post("/v1/keys/missing", json={"keys": keys[start : start + 5000]})
            r.raise_for_status()
            missing += r.json()["missing"]
        return missing

    def item(self, item_id: int) -> httpx.Response:
        return self.http.get(f"/v1/items/{item_id}")

    def delete(self, item_id: int) -> httpx.Response:
        return self.http.delete(f"/v1/items/{item_id}")

    def stats(self) -> dict[str, Any]:
        r = self.http.get("/v1/stats")
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out

    def snapshot(self) -> httpx.Response:
        return self.http.post("/v1/index/snapshot", timeout=120.0)

    def rebuild(self, factory: str | None = None, wait: bool = True) -> httpx.Response:
        return self.http.post(
            "/v1/index/rebuild", json={"factory": factory, "wait": wait}, timeout=300.0
        )


def faiss_count(stats: dict[str, Any]) -> int | None:
    """Vectors in the live Faiss index, if the stats name them (the field name may vary)."""
    for name in ("ntotal", "faiss_ntotal", "faiss_count", "index_count", "indexed"):
        value = stats.get(name)
        if isinstance(value, int):
            return value
    return None


def rss_bytes(pid: int) -> int:
    import psutil

    return int(psutil.Process(pid).memory_info().rss)


def peak_rss_bytes(pid: int) -> int:
    """The process's resident high-water mark (VmHWM), which no sampling can miss."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc status")


def ci() -> bool:
    return bool(os.environ.get("CI"))
