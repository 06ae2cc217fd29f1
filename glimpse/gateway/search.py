"""Query vectors and search answers: weighted terms, paging, relevance, the public result
shape."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from glimpse.contracts.errors import ErrorType, GlimpseError
from glimpse.gateway.relevance import CANDIDATES, Cutoff, cutoff


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


def candidates_for(k: int, offset: int) -> int:
    """How many hits to ask the index for: the page, and enough below it to judge relevance."""
    return max(k + offset, CANDIDATES)


def result_of(hit: dict[str, Any], relevant: bool) -> dict[str, Any]:
    """An index hit as a public SearchResult."""
    item_id = hit["id"]  # ints and floats already, as the index's JSON gives them
    meta = hit.get("meta") or {}
    taken = meta.get("taken")
    result = {
        "id": item_id,
        "score": hit["score"],
        "relevant": relevant,
        "path": hit["path"],
        "image_url": f"/images/{item_id}",
        "thumbnail_url": f"/images/{item_id}/thumbnail",
        "width": int(meta.get("width", 0)),
        "height": int(meta.get("height", 0)),
        "taken": taken if isinstance(taken, str) else None,
    }
    if hit.get("keyword"):  # matched the query's words (fusion.py)
        result["keyword"] = True
    return result


def _taken_ts(hit: dict[str, Any]) -> float | None:
    value = (hit.get("meta") or {}).get("taken_ts")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def by_date(hits: Sequence[dict[str, Any]], newest: bool) -> list[dict[str, Any]]:
    """``hits`` ordered by the date taken (newest or oldest first); undated ones after them,
    in the order given (by score). The sort is stable, so equal dates keep their score order."""
    dated = [h for h in hits if _taken_ts(h) is not None]
    undated = [h for h in hits if _taken_ts(h) is None]
    dated.sort(key=lambda h: _taken_ts(h) or 0.0, reverse=newest)
    return dated + undated


def search_answer(
    hits: Sequence[dict[str, Any]],
    *,
    asked: int,
    relevance: str,
    sort: str = "score",
    k: int,
    offset: int,
    encode_ms: float,
    search_ms: float,
    total_ms: float,
    model: str,
    cut: Cutoff | None = None,
) -> dict[str, Any]:
    """The SearchResponse body for the page [offset, offset + k) of ``hits`` (the index's
    answer to ``asked`` candidates): of the relevant ones when ``relevance`` is "auto", of all
    of them, each marked, when it is "all". ``sort`` "newest" or "oldest" orders the relevant
    hits by the date taken; the rest keep their score order after them. ``cut`` is the
    cutoff when the caller ranked ``hits`` itself (fusion.py: its relevant hits first)."""
    if cut is None:
        cut = cutoff([h["score"] for h in hits], complete=len(hits) < asked)
    relevant = list(hits[: cut.relevant_count])
    if sort != "score":
        relevant = by_date(relevant, newest=sort == "newest")
    if relevance != "auto":  # the others after them, as far as the page reaches
        relevant += hits[cut.relevant_count : cut.relevant_count + offset + k]
    page = relevant[offset : offset + k]
    return {
        "results": [
            result_of(h, offset + i < cut.relevant_count) for i, h in enumerate(page)
        ],
        "relevance": relevance,
        "sort": sort,
        "relevant_count": cut.relevant_count,
        "no_good_match": cut.no_good_match,
        "cutoff_score": None if cut.score is None else round(cut.score, 6),
        "total_ms": round(total_ms, 3),
        "timings": {"encode_ms": round(encode_ms, 3), "search_ms": round(search_ms, 3)},
        "model": model,
    }
