"""Keyword search: the items whose file name, path, IPTC/XMP keywords, title or description
hold the words of a query (the ``words`` of POST /v1/search, answered beside the vector hits;
the gateway fuses the two, glimpse/gateway/fusion.py).

What matches is the same idea in both backends, but not the same reach:

- **Faiss backend** (SQLite FTS5, the ``items_text`` table of store.py): every content word of
  the query (stop words such as "a", "of", "the" left out) must occur in one of the five fields,
  as a word or the start of one ("zanz" finds "Zanzibar_2023.jpg"), case and accents ignored.
  Hits are ranked by BM25, a word in the name or the keywords weighing more than one in the
  description.
- **Milvus backend** (Milvus 2.3 has no full-text index, no tokeniser and no case folding):
  every content word must be one of the item's keywords, whole (``json_contains_all``; the
  gateway stores keywords in lower case). File names, paths, titles and descriptions are not
  searched, a word prefix does not match, and hits come in id order, not by relevance.

Filters narrow both the same way as a vector search (filters.py), and excluded ids are left out
as there.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from glimpse.contracts.filters import SearchFilters
from glimpse.index import filters as filtering
from glimpse.index.store import Store

if TYPE_CHECKING:
    from glimpse.index.milvus_store import MilvusStore

# Words that say nothing about an image's name or tags; a query made only of them matches
# nothing.
STOP_WORDS = frozenset(
    "a an and are at by for from in into is it its of on or over the to under with without "
    "photo photos picture pictures image images".split()
)
# BM25 weight of each FTS column: name, path, keywords, title, description.
WEIGHTS = (4.0, 1.0, 4.0, 3.0, 1.0)
# At most this many matches are read before a filter narrows them.
MAX_MATCHES = 10_000
_WORD = re.compile(r"\w+")


def content_words(query: str) -> list[str]:
    """The query's words, lower case, stop words and repeats left out."""
    words = (w.lower() for w in _WORD.findall(query))
    return list(dict.fromkeys(w for w in words if w not in STOP_WORDS))


def fts_expression(words: list[str]) -> str:
    """An FTS5 query needing every word, each as a word prefix (quoted: no operator syntax)."""
    return " AND ".join(f'"{w}"*' for w in words)


def _hits(rows: list[tuple[int, str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [{"id": i, "path": p, "meta": m, "rank": r}
            for r, (i, p, m) in enumerate(rows, start=1)]


def search_store(store: Store, query: str, k: int, f: SearchFilters | None,
                 exclude: Collection[int] = ()) -> list[dict[str, Any]]:
    """The Faiss backend's keyword search (the module docstring says what matches)."""
    words = content_words(query)
    if not words:
        return []
    ids = store.match_text(fts_expression(words), WEIGHTS,
                           k + len(exclude) if f is None else MAX_MATCHES)
    if f is not None:
        mask = filtering.matching_mask(store, f)
        ids = [i for i in ids if i < len(mask) and mask[i]]
    ids = [i for i in ids if i not in exclude][:k]
    found = store.paths_and_meta(ids)
    return _hits([(i, *found[i]) for i in ids if i in found])


def milvus_expression(words: list[str]) -> str:
    """Items whose keywords hold every word, whole."""
    quoted = ", ".join(f'"{w}"' for w in words)  # \w+ words: nothing to escape
    return f'json_contains_all(meta["keywords"], [{quoted}])'


def search_milvus(store: MilvusStore, query: str, k: int, f: SearchFilters | None,
                  exclude: Collection[int] = ()) -> list[dict[str, Any]]:
    """The Milvus backend's keyword search (the module docstring says what differs)."""
    from glimpse.index.milvus_store import _FAILURES, MilvusUnavailable

    words = content_words(query)
    if not words:
        return []
    expr = f"id > 0 and {milvus_expression(words)}"
    if f is not None and (where := filtering.milvus_expr(f)):
        expr += f" and ({where})"
    try:
        rows = store.collection.query(expr, output_fields=["id", "path", "meta"],
                                      limit=k + len(exclude) if f is None else MAX_MATCHES,
                                      timeout=store.timeout, consistency_level="Eventually")
    except _FAILURES as exc:
        raise MilvusUnavailable(store.uri, "keyword search", exc, stored=True) from exc
    found = sorted((int(r["id"]), str(r["path"]), dict(r.get("meta") or {})) for r in rows)
    if f is not None:  # milvus_expr may say more than the filter (filters.py)
        found = [row for row in found if filtering.matches(f, row[1], row[2])]
    return _hits([row for row in found if row[0] not in exclude][:k])
