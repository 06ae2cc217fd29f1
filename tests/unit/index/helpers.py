"""Data and app helpers shared by the index service's unit and integration tests."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from glimpse.index.config import Settings


def clustered(n: int, dim: int, *, clusters: int = 50, spread: float = 0.35, seed: int = 0
              ) -> np.ndarray:
    """Unit vectors around random centres: neighbourhoods like embeddings have, unlike noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    points = centres[rng.integers(0, clusters, n)] + rng.normal(
        scale=spread / np.sqrt(dim), size=(n, dim)
    ).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points.astype(np.float32)


def as_stored(vectors: np.ndarray) -> np.ndarray:
    """What the service indexes: unit length, rounded through float16."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return unit.astype(np.float16).astype(np.float32)


def b64(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


def items_body(vectors: np.ndarray, start: int = 0, *, binary: bool = True) -> dict[str, Any]:
    return {
        "items": [
            {
                "vector": b64(v) if binary else v.tolist(),
                "path": f"img/{start + i}.jpg",
                "key": f"key-{start + i}",
                "meta": {"n": start + i},
            }
            for i, v in enumerate(vectors)
        ]
    }


def settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "dim": 32,
        "train_threshold": 100_000,
        "snapshot_interval_s": 0,
        "snapshot_every_writes": 0,
    }
    values.update(overrides)
    return Settings(**values)


def wait_ready(client: TestClient, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.02)
    raise TimeoutError(client.get("/readyz").json())


def wait_trained(client: TestClient, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats: dict[str, Any] = client.get("/v1/stats").json()
        if not stats["training"]:
            return stats
        time.sleep(0.05)
    raise TimeoutError("training did not finish")


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each true top-k row present in the found row."""
    hits = [len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth,
                                                                         strict=True)]
    return float(np.mean(hits))
