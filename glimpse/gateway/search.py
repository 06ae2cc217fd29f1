"""Query vectors and search answers: weighted terms, paging, the public result shape."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from glimpse.contracts.errors import ErrorType, GlimpseError


def combine_terms(vectors: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """The unit vector of sum(weight_i * unit(v_i)); a negative weight steers away from v_i.

    Each term is normalised first so a weight means the same for a text and an image; the sum
    is normalised again because the index scores by inner product (cosine for unit vectors).
    """
    if len(vectors) != len(weights) or not vectors:
        raise ValueError("one weight per vector, at least one vector")
    total = np.zeros_like(np.asarray(vectors[0], dtype=np.float32))
    for vector, weight in zip(vectors, weights, strict=True):
        vector = np.asarray(vector, dtype=np.float32)
        norm = float(np.linalg.norm(vector))
        if norm > 0:
            total += np.float32(weight) * vector / norm
    norm = float(np.linalg.norm(total))
    if not np.isfinite(norm) or norm < 1e-6:
        raise GlimpseError(
            ErrorType.validation_error,
            "terms: The weighted terms cancel out (their sum has no direction); "
            "change the weights.",
        )
    return (total / norm).astype(np.float32)


def check_window(k: int, offset: int, max_window: int) -> None:
    if k + offset > max_window:
        raise GlimpseError(
            ErrorType.validation_error,
            f"k + offset is {k + offset}, more than the limit of {max_window}; "
            "refine the query instead of paging this deep.",
        )


def result_of(hit: dict[str, Any]) -> dict[str, Any]:
    """An index hit as a public SearchResult."""
    item_id = int(hit["id"])
    meta = hit.get("meta") or {}
    return {
        "id": item_id,
        "score": float(hit["score"]),
        "path": hit["path"],
        "image_url": f"/images/{item_id}",
        "thumbnail_url": f"/images/{item_id}/thumbnail",
        "width": int(meta.get("width", 0)),
        "height": int(meta.get("height", 0)),
    }


def search_answer(
    hits: Sequence[dict[str, Any]],
    *,
    k: int,
    offset: int,
    encode_ms: float,
    search_ms: float,
    total_ms: float,
    model: str,
) -> dict[str, Any]:
    """The SearchResponse body for the page [offset, offset + k) of ``hits``."""
    return {
        "results": [result_of(h) for h in hits[offset : offset + k]],
        "total_ms": round(total_ms, 3),
        "timings": {"encode_ms": round(encode_ms, 3), "search_ms": round(search_ms, 3)},
        "model": model,
    }
