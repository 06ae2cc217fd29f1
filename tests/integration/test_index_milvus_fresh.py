"""Recall right after an ingest on Milvus (issue 26): a search at once after the adds, while
Milvus still holds the rows in growing segments under its interim IVF index, recalls the exact
top 10; and the seal on idle closes the window once Milvus serves the sealed segment indexed."""

from __future__ import annotations

import numpy as np
import pytest

from glimpse.index.milvus_service import MilvusIndexService
from glimpse.index.store import NewItem
from tests.support.milvus import embedding_like, recall_at_10, wait_sealed

pytestmark = pytest.mark.milvus

ROWS = 8000  # over Milvus's threshold for an interim index of a growing segment (~5,000)


def test_a_search_right_after_the_adds_recalls_the_exact_top_10(
        milvus_index: MilvusIndexService) -> None:
    x = embedding_like(ROWS + 100)
    base, queries = x[:ROWS], x[ROWS:]
    ids: list[int] = []
    for start in range(0, ROWS, 1000):
        out = milvus_index.add([NewItem(f"k{i}", f"/p/{i}.jpg", {}, base[i])
                                for i in range(start, start + 1000)])
        ids += [o.id for o in out]
    truth = np.asarray(ids)[np.argsort(-(queries @ base.T), axis=1)[:, :10]]

    at_once = milvus_index.search_records(queries, 10)
    raw = milvus_index.store.search_candidates(queries, 10,
                                               milvus_index.search_params(10, None), ())
    assert recall_at_10([[h["id"] for h in row] for row in at_once], truth) >= 0.95
    # The set does reach Milvus's interim index: its own answer falls short.
    assert recall_at_10([[i for i, _ in row] for row in raw], truth) < 0.95

    wait_sealed(milvus_index, 180, "after the adds")
    sealed = milvus_index.search_records(queries, 10)
    assert recall_at_10([[h["id"] for h in row] for row in sealed], truth) >= 0.95
