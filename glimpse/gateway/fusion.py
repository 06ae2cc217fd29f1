"""Text searches answered by the vector search and the keyword search together (issue 26).

The index answers both in one exchange (POST /v1/search with ``words``) and the two rankings
are fused by reciprocal rank fusion: an item scores ``sum(1 / (RRF_K + rank))`` over
the lists it is in.

Relevance. The adaptive cutoff (relevance.py) is read off the vector scores alone, as for any
search, and a hit is relevant when it clears that cutoff *or* matches the query's words. A
keyword hit counts as relevant because the match is literal: every content word of the query is
in its file name, path, keywords, title or description (glimpse/index/keywords.py), which is
evidence the vector score cannot give with weights that do not know the word (a place name, a
person, a code), and the word list is small and precise where the cosine is not. So the cutoff
keeps its meaning (nothing from the vector side is let in below it) and "no good match" still
means neither side found anything.

Order. Hits are ranked first by how many of the two searches they match (a vector match is a
hit above the cutoff), then by the fused score: an item that matches both ranks above one that
matches only one, which plain RRF alone does not promise (a vector rank 1 alone outscores a
keyword rank 1 found at vector rank 200). Relevant hits thus come before the others, as the
answer's paging needs.

Scores. A hit's ``score`` stays its cosine with the query. A keyword hit beyond the vector
candidates has none measured: it gets the last candidate's score, an upper bound of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from glimpse.gateway.clients import IndexClient
from glimpse.gateway.relevance import Cutoff, cutoff

# Reciprocal rank fusion's constant (Cormack et al., 2009): damps the weight of the top ranks.
RRF_K = 60


def fuse(
    vector_hits: Sequence[dict[str, Any]],
    keyword_hits: Sequence[dict[str, Any]],
    *,
    asked: int,
) -> tuple[list[dict[str, Any]], Cutoff]:
    """The fused ranking of the index's vector hits (best first, ``asked`` were asked for) and
    keyword hits (each with its ``rank``), and its cutoff: ``relevant_count`` counts the hits
    above the vector cutoff or matching the words; keyword hits carry ``"keyword": True``."""
    # The index's JSON gives ints and floats already: no conversions over the candidates.
    cut = cutoff([h["score"] for h in vector_hits], complete=len(vector_hits) < asked)
    if not keyword_hits:  # the vector ranking as it is
        return list(vector_hits), cut
    above = cut.relevant_count
    rank_of = {h["id"]: rank for rank, h in enumerate(vector_hits, start=1)}
    floor = float(vector_hits[-1]["score"]) if vector_hits else 0.0
    fused: dict[int, float] = {}
    matches: dict[int, int] = {}
    hit_of: dict[int, dict[str, Any]] = {}
    for hit in keyword_hits:
        item_id = hit["id"]
        rank = rank_of.get(item_id)
        fused[item_id] = 1.0 / (RRF_K + hit["rank"]) + (1.0 / (RRF_K + rank) if rank else 0)
        matches[item_id] = 1 + (rank is not None and rank <= above)
        # A vector hit past the asked detail has no path or meta: the keyword hit has them.
        record = {"id": item_id, "path": hit["path"], "meta": hit.get("meta") or {}}
        vector_hit = vector_hits[rank - 1] if rank else {}
        hit_of[item_id] = {**record, "score": floor, **vector_hit, "keyword": True}
    for rank, hit in enumerate(vector_hits[:above], start=1):
        item_id = hit["id"]
        if item_id not in hit_of:
            fused[item_id], matches[item_id], hit_of[item_id] = 1.0 / (RRF_K + rank), 1, hit
    order = sorted(fused, key=lambda i: (-matches[i], -fused[i], i))
    # The hits that match neither search keep their vector order (their fused score's order).
    rest = [h for h in vector_hits[above:] if h["id"] not in hit_of]
    return [hit_of[i] for i in order] + rest, Cutoff(score=cut.score, relevant_count=len(order))


async def search(
    index: IndexClient,
    vector: np.ndarray,
    words: str,
    asked: int,
    *,
    exclude_ids: Sequence[int] = (),
    filters: dict[str, Any] | None = None,
    detail: int | None = None,
    words_k: int | None = None,
) -> tuple[list[dict[str, Any]], Cutoff]:
    """The vector search and the top ``words_k`` keyword hits of ``words``, in one exchange,
    fused."""
    vector_hits, keyword_hits = await index.search_words(
        vector, asked, words, words_k=words_k, exclude_ids=exclude_ids, filters=filters,
        detail=detail)
    return fuse(vector_hits, keyword_hits, asked=asked)
