"""Bodies of the index service's API (port 8002)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from glimpse.contracts.filters import FILTERS_DOC, Filters
from glimpse.contracts.vectors import VectorEncoding, VectorLike

ItemStatus = Literal["added", "exists"]

#: Largest item id: ids are SQLite INTEGERs (signed 64-bit), so a larger one can name nothing.
MAX_ITEM_ID = 2**63 - 1

#: Largest k of one index search: beyond it a search costs more than any page needs; the
#: gateway's GATEWAY_MAX_RESULT_WINDOW may not exceed it.
MAX_K = 1000

#: An item's key: 1 to 128 letters, digits, '.', '_', ':' or '-', starting with a letter or
#: digit. The gateway sends the file's sha256 as 64 lowercase hex digits.
KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
#: Objects and arrays nested in ``meta``, the meta object itself counted.
MAX_META_DEPTH = 8
#: ``meta`` as compact JSON, in bytes.
MAX_META_BYTES = 16 * 1024


def meta_problem(meta: dict[str, Any]) -> str | None:
    """Why ``meta`` cannot be stored (too deep, too large, not writable back as JSON), or None.

    Checked at add time: meta that is stored but cannot be serialised back would fail every
    search that hits the item, across restarts.
    """
    stack: list[tuple[Any, int]] = [(meta, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_META_DEPTH:
            return f"nests objects and arrays more than {MAX_META_DEPTH} deep"
        children = value.values() if isinstance(value, dict) else value
        stack.extend((v, depth + 1) for v in children if isinstance(v, (dict, list)))
    try:
        size = len(orjson.dumps(meta))
    except orjson.JSONEncodeError as exc:
        return f"cannot be written back as JSON ({exc})"
    if size > MAX_META_BYTES:
        return f"is {size} bytes of JSON; the limit is {MAX_META_BYTES}"
    return None


class IndexItemIn(BaseModel):
    """One item to add: its vector, its path, its idempotency key (the sha256 of the file)."""

    vector: VectorLike = Field(description="Float list, or base64 of little-endian float32.")
    path: str = Field(min_length=1, max_length=4096, description="Relative path of the image.")
    key: str = Field(
        pattern=KEY_PATTERN,
        description="Idempotency key: 1-128 letters, digits, '.', '_', ':' or '-' (the gateway "
        "sends the file's lowercase sha256 hex).",
    )
    meta: dict[str, Any] = Field(
        default_factory=dict,
        description=f"Free JSON stored with it: at most {MAX_META_DEPTH} levels of objects and "
        f"arrays, {MAX_META_BYTES} bytes as compact JSON.",
    )

    @field_validator("meta")
    @classmethod
    def _storable_meta(cls, meta: dict[str, Any]) -> dict[str, Any]:
        problem = meta_problem(meta)
        if problem is not None:
            raise ValueError(f"meta {problem}")
        return meta


class UpdateItemRequest(BaseModel):
    """A live item's new path and/or meta (a library file moved or renamed); a field left out
    keeps its value. The vector and the id stay."""

    path: str | None = Field(default=None, min_length=1, max_length=4096,
                             description="Relative path of the image.")
    meta: dict[str, Any] | None = Field(
        default=None,
        description=f"Replaces the stored meta whole: at most {MAX_META_DEPTH} levels of "
        f"objects and arrays, {MAX_META_BYTES} bytes as compact JSON.",
    )

    @field_validator("meta")
    @classmethod
    def _storable_meta(cls, meta: dict[str, Any] | None) -> dict[str, Any] | None:
        problem = None if meta is None else meta_problem(meta)
        if problem is not None:
            raise ValueError(f"meta {problem}")
        return meta

    @model_validator(mode="after")
    def _something(self) -> UpdateItemRequest:
        if self.path is None and self.meta is None:
            raise ValueError("give path, meta or both")
        return self


class AddItemsRequest(BaseModel):
    items: list[IndexItemIn] = Field(min_length=1)
    space: str | None = Field(
        default=None, description="A named space the vectors are of: the items then have no "
        "vector of their own (a confirmed model migration). Only where the built-in space is "
        "optional (GET /v1/spaces).")


class AddedItem(BaseModel):
    id: int
    key: str
    status: ItemStatus


class AddItemsResponse(BaseModel):
    items: list[AddedItem]


class IndexSearchRequest(BaseModel):
    vectors: list[VectorLike] = Field(min_length=1, description="Query vectors (any norm).")
    k: int = Field(default=10, ge=1, description="Hits per query; the service caps it.")
    nprobe: int | None = Field(default=None, ge=1, description="IVF lists to visit.")
    exact: bool = Field(default=False, description="Exact search over the stored vectors.")
    exclude_ids: list[Annotated[int, Field(ge=0, le=MAX_ITEM_ID)]] = Field(
        default_factory=list, description="Ids never returned (e.g. the query image itself)."
    )
    filters: Filters = Field(default=None, description=FILTERS_DOC)
    space: str | None = Field(
        default=None, description="The named space to search (default: the active one)."
    )
    detail: int | None = Field(
        default=None, ge=0,
        description="Only the first `detail` hits of each query need path and meta; the rest may "
        "carry id and score alone (a caller that reads a cutoff off many scores but shows few "
        "hits). Unset: every hit carries them.",
    )
    words: str | None = Field(
        default=None, min_length=1, max_length=1000,
        description="Words to look for as well, in the items' file name, path, keywords, title "
        "and description (the same filters and exclude_ids): their hits come back in "
        "`keywords`.",
    )
    words_k: int | None = Field(
        default=None, ge=1, description="Keyword hits wanted; unset: `k`. The service caps it."
    )


class IndexHit(BaseModel):
    id: int
    score: float = Field(description="Inner product with the query (cosine for unit vectors).")
    path: str | None = Field(default=None, description="Absent past the asked `detail`.")
    meta: dict[str, Any] = Field(default_factory=dict)


class KeywordHit(BaseModel):
    """An item that holds the words (glimpse/index/keywords.py says what matches, in each
    backend)."""

    id: int
    path: str
    meta: dict[str, Any] = Field(default_factory=dict)
    rank: int = Field(ge=1, description="1 for the best match.")


class IndexSearchResponse(BaseModel):
    results: list[list[IndexHit]]
    space: str | None = Field(default=None, description="The space that answered.")
    keywords: list[KeywordHit] | None = Field(
        default=None, description="The keyword hits of `words`, best first; absent without."
    )


class KeysMissingRequest(BaseModel):
    keys: list[str] = Field(max_length=100_000)


class KeysMissingResponse(BaseModel):
    missing: list[str]


class KeyIdsResponse(BaseModel):
    ids: dict[str, int] = Field(description="The live item's id of each key that has one.")


class IndexItem(BaseModel):
    """The stored record of one item."""

    id: int
    key: str
    path: str
    meta: dict[str, Any] = Field(default_factory=dict)
    seq: int = Field(description="Sequence number of the write that stored it.")
    created_at: float = Field(description="Unix time of the add.")


class ItemVector(BaseModel):
    id: int
    dim: int
    vector: VectorLike
    space: str  # the space the vector is in


class ListedItem(BaseModel):
    id: int
    key: str
    path: str
    meta: dict[str, Any] = Field(default_factory=dict)
    created_at: float = Field(description="Unix time of the add.")
    vector: VectorLike | None = Field(
        default=None, description="With vectors=true only: the item's vector in the space "
        "asked (the active one by default); null while it has none there.")


class ItemsPage(BaseModel):
    """A page of the live items in id order; the next page is ``after=next_after``."""

    items: list[ListedItem]
    next_after: int | None = Field(description="The last id of this page; null at the end.")


class VectorQuery(BaseModel):
    encoding: VectorEncoding = "float"


class IndexStats(BaseModel):
    """Counts and the live index's parameters; services may add fields."""

    model_config = ConfigDict(extra="allow")

    count: int = Field(description="Live items.")
    deleted: int = Field(description="Deleted items still in the store.")
    dim: int
    kind: str = Field(description="'flat' (exact) or the trained index's kind, e.g. 'ivfpq'.")
    factory: str = Field(description="Faiss factory string of the live index.")
    nprobe: int | None = None
    rerank: int | None = Field(default=None, description="Candidates re-ranked per hit.")
    training: bool = Field(default=False, description="A background training is running.")
    snapshot_seq: int = Field(default=0, description="Last sequence number in the snapshot.")
    seq: int = Field(default=0, description="Last committed sequence number.")


class RebuildRequest(BaseModel):
    factory: str | None = Field(
        default=None, max_length=200,
        description="Faiss factory string to force from now on (docs/index.md lists the forms "
        "accepted); 'auto' forgets a forced one (back to INDEX_FACTORY or the automatic rule); "
        "null retrains with the one in force.",
    )
    wait: bool = Field(default=False, description="Answer only when the new index is live.")


class RebuildResponse(BaseModel):
    status: Literal["started", "done"]
    factory: str


class SnapshotResponse(BaseModel):
    seq: int
    bytes: int
    took_ms: float


class TuneRequest(BaseModel):
    """Measure recall@k of the live index on a held-out sample of its own vectors (exact
    ground truth) and apply the cheapest nprobe / re-rank depth reaching ``target``."""

    target: float = Field(default=0.95, gt=0.0, le=1.0, description="recall@k to reach.")
    sample: int = Field(default=500, ge=10, le=10_000, description="Held-out queries.")
    k: int = Field(default=10, ge=1, le=100, description="k of recall@k.")
    apply: bool = Field(default=True, description="Make the chosen setting the default.")


class TuneResponse(BaseModel):
    nprobe: int
    rerank: int
    recall_at_k: float
    ms_per_query: float
    target: float
    reached: bool
    applied: bool
    sample: int
    trials: list[dict[str, Any]] = Field(default_factory=list)


class SpaceInfo(BaseModel):
    """One named space: a model's vectors over the shared items."""

    name: str
    dim: int
    count: int = Field(description="Live items with a vector in this space.")
    active: bool = Field(description="Searches that name no space are answered from it.")
    kind: str = Field(description="Its index structure (exact, ivf, hnsw...).")
    built_in: bool = Field(description="The items' own vectors (INDEX_DIM); never dropped.")
    optional: bool = Field(default=False, description="Built in, and items may be added "
                           "without a vector in it (POST /v1/items with a named space).")


class SpacesResponse(BaseModel):
    spaces: list[SpaceInfo]
    active: str


class CreateSpaceRequest(BaseModel):
    name: str = Field(description="1 to 63 letters, digits or '_', starting with a letter.")
    dim: int = Field(ge=1, description="The dimension of the space's vectors.")


class SpaceVectorsRequest(BaseModel):
    """Vectors of existing items in one space; ``ids[i]`` is the item of ``vectors[i]``."""

    ids: list[Annotated[int, Field(ge=0, le=MAX_ITEM_ID)]] = Field(min_length=1)
    vectors: list[VectorLike] = Field(min_length=1)

    @model_validator(mode="after")
    def _same_length(self) -> SpaceVectorsRequest:
        if len(self.ids) != len(self.vectors):
            raise ValueError(f"ids holds {len(self.ids)} ids but vectors holds "
                             f"{len(self.vectors)} vectors; they must pair up")
        return self


class SpaceVectorsResponse(BaseModel):
    space: str
    added: list[int] = Field(description="Ids whose vector was stored now.")
    exists: list[int] = Field(description="Ids that had a vector in the space (kept as is).")
    missing: list[int] = Field(description="Ids with no live item (nothing stored).")


class PendingItem(BaseModel):
    id: int
    key: str
    path: str


class SpacePending(BaseModel):
    """What a re-encoding into a space has left: a page of items in id order, and progress."""

    space: str
    items: list[PendingItem] = Field(description="Live items with no vector in the space yet.")
    done: int = Field(description="Live items with a vector in the space.")
    total: int = Field(description="Live items.")
