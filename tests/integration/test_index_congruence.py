"""Congruence with a plain Faiss ``IndexFlatIP`` on the same data, through the HTTP API."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
from fastapi.testclient import TestClient

from glimpse.index.main import create_app
from tests.unit.index.helpers import (
    as_stored,
    b64,
    clustered,
    items_body,
    recall_at,
    settings,
    wait_ready,
)

DIM = 48


def _search(client: TestClient, q: np.ndarray, k: int, **extra: object) -> tuple[np.ndarray,
                                                                                 np.ndarray]:
    r = client.post("/v1/search", json={"vectors": [b64(v) for v in q], "k": k, **extra})
    assert r.status_code == 200, r.text
    rows = r.json()["results"]
    ids = np.asarray([[h["id"] for h in row] for row in rows])
    scores = np.asarray([[h["score"] for h in row] for row in rows])
    return ids, scores


def test_exact_and_ivfpq_modes_against_index_flat_ip(tmp_path: Path) -> None:
    x = clustered(3000, DIM, clusters=40, seed=1)
    q = clustered(60, DIM, clusters=40, seed=2)
    plain = faiss.IndexFlatIP(DIM)
    plain.add(as_stored(x))
    # Queries are normalised in float32 (only stored vectors go through float16).
    want_scores, rows = plain.search(q / np.linalg.norm(q, axis=1, keepdims=True), 10)

    config = settings(tmp_path / "index", dim=DIM, autotune=False)
    with TestClient(create_app(config)) as client:
        wait_ready(client)
        added = client.post("/v1/items", json=items_body(x)).json()["items"]
        ids = np.asarray([item["id"] for item in added])
        truth = ids[rows]

        # Exact while small: the same ids in the same order, the same scores.
        got_ids, got_scores = _search(client, q, 10)
        np.testing.assert_array_equal(got_ids, truth)
        np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5, atol=1e-5)

        r = client.post("/v1/index/rebuild", json={"factory": "IVF32,PQ12x4", "wait": True})
        assert r.status_code == 200, r.text
        approx_ids, _ = _search(client, q, 10)
        assert recall_at(approx_ids, truth) >= 0.9
        # exact=true on a trained index scans the stored vectors: the same answer again.
        # (numpy's BLAS, not Faiss's: a last-ulp tie may swap two neighbours, no more).
        exact_ids, exact_scores = _search(client, q, 10, exact=True)
        assert recall_at(exact_ids, truth) >= 0.995
        np.testing.assert_allclose(exact_scores, want_scores, rtol=1e-5, atol=1e-5)
        before = _search(client, q, 10, nprobe=4)

    # A clean restart loads the snapshot written at shutdown: identical answers, no training.
    with TestClient(create_app(config)) as client:
        wait_ready(client)
        stats = client.get("/v1/stats").json()
        assert stats["kind"] == "ivfpq" and stats["last_training"] is None
        after = _search(client, q, 10, nprobe=4)
        np.testing.assert_array_equal(after[0], before[0])
        np.testing.assert_array_equal(after[1], before[1])
