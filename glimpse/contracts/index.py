"""Bodies of the index service's API (port 8002)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from glimpse.contracts.vectors import VectorEncoding, VectorLike

ItemStatus = Literal["added", "exists"]

#: Largest item id: ids are SQLite INTEGERs (signed 64-bit), so a larger one can name nothing.
MAX_ITEM_ID = 2**63 - 1


class IndexItemIn(BaseModel):
    """One item to add: its vector, its path, its idempotency key (the sha256 of the file)."""

    vector: VectorLike = Field(description="Float list, or base64 of little-endian float32.")
    path: str = Field(min_length=1, max_length=4096, description="Relative path of the image.")
    key: str = Field(min_length=1, max_length=128, description="Idempotency key, e.g. sha256.")
    meta: dict[str, Any] = Field(default_factory=dict, description="Free JSON stored with it.")


class AddItemsRequest(BaseModel):
    items: list[IndexItemIn] = Field(min_length=1)


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


class IndexHit(BaseModel):
    id: int
    score: float = Field(description="Inner product with the query (cosine for unit vectors).")
    path: str
    meta: dict[str, Any] = Field(default_factory=dict)


class IndexSearchResponse(BaseModel):
    results: list[list[IndexHit]]


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
    factory: str | None = Field(default=None, description="Faiss factory string to force.")
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
