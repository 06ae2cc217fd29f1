"""HTTP routes of the index service (docs/architecture.md, "Internal APIs")."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from glimpse.contracts.bodies import json_body_openapi, json_response, parse_json_body
from glimpse.contracts.common import HealthResponse, ReadyResponse
from glimpse.contracts.errors import ERROR_RESPONSES, ErrorType, GlimpseError
from glimpse.contracts.index import (
    MAX_ITEM_ID,
    AddItemsRequest,
    AddItemsResponse,
    IndexItem,
    IndexSearchRequest,
    IndexSearchResponse,
    IndexStats,
    ItemVector,
    KeyIdsResponse,
    KeysMissingRequest,
    KeysMissingResponse,
    RebuildRequest,
    RebuildResponse,
    SnapshotResponse,
    TuneRequest,
    TuneResponse,
)
from glimpse.contracts.vectors import VectorEncoding, decode_vectors, encode_vector, l2_normalize
from glimpse.index.backend import IndexBackend
from glimpse.index.config import Settings
from glimpse.index.service import NotTunable
from glimpse.index.store import NewItem

Backend = IndexBackend

router = APIRouter()

_F16 = np.dtype("<f2")


def service_of(request: Request) -> Backend:
    service: Backend | None = request.app.state.service
    if service is None or not service.ready.is_set():
        waiting = service.waiting_for if service is not None else None
        if waiting:  # the Milvus backend, still trying to reach Milvus
            raise GlimpseError(ErrorType.upstream_unavailable, waiting,
                               headers={"Retry-After": "1"})
        error = request.app.state.load_error
        raise GlimpseError(
            ErrorType.not_ready,
            f"The index failed to load: {error}" if error else "The index is still loading.",
            headers={"Retry-After": "1"},
        )
    return service


async def get_service(request: Request) -> Backend:
    # async: FastAPI runs a plain-def dependency in its thread pool (a thread hand-off per
    # request).
    return service_of(request)


Service = Annotated[Backend, Depends(get_service)]

# Bounded so an id SQLite cannot hold (>= 2**63) is a 422 naming the bound, not an
# OverflowError (a 500) inside the store.
ItemId = Annotated[int, Path(ge=0, le=MAX_ITEM_ID, description="Item id (0 to 2**63-1).")]


def _settings(service: Backend) -> Settings:
    return service.settings


def _unit_f16(vectors: np.ndarray) -> np.ndarray:
    """Unit length, then float16 as stored: the index holds exactly what a restart reads back."""
    return l2_normalize(vectors).astype(_F16)


@router.post("/v1/items", response_model=AddItemsResponse, responses=ERROR_RESPONSES,
             tags=["items"])
async def add_items(body: AddItemsRequest, service: Service) -> AddItemsResponse:
    """Add a batch of items, idempotent by key; answered only after the store committed it.

    The whole batch is checked first (dimension, NaN/Inf, zero vectors, limits): one bad item
    rejects the batch and nothing is stored.
    """
    limit = _settings(service).max_batch
    if len(body.items) > limit:
        raise GlimpseError(
            ErrorType.payload_too_large,
            f"The batch holds {len(body.items)} items; the limit is {limit} (INDEX_MAX_BATCH).",
        )
    vectors = decode_vectors([item.vector for item in body.items], service.settings.dim,
                             what="items")
    stored = _unit_f16(vectors)
    items = [
        NewItem(key=item.key, path=item.path, meta=item.meta, vector=stored[i])
        for i, item in enumerate(body.items)
    ]
    # SQLite commit (fsync) and Faiss add block: a worker thread, not the event loop.
    outcomes = await run_in_threadpool(service.add, items)
    return AddItemsResponse.model_validate(
        {"items": [{"id": o.id, "key": o.key, "status": o.status} for o in outcomes]}
    )


@router.post("/v1/search", response_model=IndexSearchResponse, responses=ERROR_RESPONSES,
             tags=["search"], openapi_extra=json_body_openapi(IndexSearchRequest))
async def search(request: Request) -> Response:
    """Top-k live items per query vector (scores are inner products of unit vectors)."""
    # The hot path: the body is validated from its bytes and the answer serialised without a
    # response model (glimpse/contracts/bodies.py says why); the checks and errors are the same.
    service = service_of(request)
    body = parse_json_body(IndexSearchRequest, await request.body())
    s = _settings(service)
    if len(body.vectors) > s.max_search_vectors:
        raise GlimpseError(
            ErrorType.payload_too_large,
            f"The search holds {len(body.vectors)} vectors; the limit is {s.max_search_vectors} "
            "(INDEX_MAX_SEARCH_VECTORS).",
        )
    if body.k > s.max_k:
        raise GlimpseError(
            ErrorType.validation_error, f"k is {body.k}; the limit is {s.max_k} (INDEX_MAX_K)."
        )
    if body.nprobe is not None and body.nprobe > s.max_nprobe:
        raise GlimpseError(
            ErrorType.validation_error,
            f"nprobe is {body.nprobe}; the limit is {s.max_nprobe} (INDEX_MAX_NPROBE).",
        )
    if len(body.exclude_ids) > s.max_k:
        raise GlimpseError(
            ErrorType.validation_error,
            f"exclude_ids holds {len(body.exclude_ids)} ids; the limit is {s.max_k}.",
        )
    queries = l2_normalize(decode_vectors(body.vectors, s.dim, what="vectors"))
    # Faiss, the re-rank and SQLite run on the service's threads (they release the GIL or
    # block); the event loop only awaits the result.
    future = service.submit_search_records(queries, body.k, nprobe=body.nprobe,
                                           exact=body.exact, exclude=body.exclude_ids)
    results = await asyncio.wrap_future(future)
    return json_response({"results": results})


@router.post("/v1/keys/missing", response_model=KeysMissingResponse,
             responses=ERROR_RESPONSES, tags=["items"])
async def keys_missing(body: KeysMissingRequest, service: Service) -> KeysMissingResponse:
    """The keys that name no live item (so a client uploads only those)."""
    assert service.store is not None
    missing = await run_in_threadpool(service.store.missing_keys, body.keys)
    return KeysMissingResponse(missing=missing)


@router.post("/v1/keys/ids", response_model=KeyIdsResponse, responses=ERROR_RESPONSES,
             tags=["items"])
async def key_ids(body: KeysMissingRequest, service: Service) -> KeyIdsResponse:
    """The live item's id of each key that has one (keys with none are left out)."""
    assert service.store is not None
    ids = await run_in_threadpool(service.store.live_ids, body.keys)
    return KeyIdsResponse(ids=ids)


def _not_found(item_id: int, deleted: bool = False) -> GlimpseError:
    what = "was deleted" if deleted else "does not exist"
    return GlimpseError(ErrorType.not_found, f"Item {item_id} {what}.")


@router.get("/v1/items/{item_id}", response_model=IndexItem, responses=ERROR_RESPONSES,
            tags=["items"])
async def get_item(item_id: ItemId, service: Service) -> IndexItem:
    """The stored record of a live item."""
    assert service.store is not None
    record = await run_in_threadpool(service.store.get, item_id)
    if record is None or record.deleted:
        raise _not_found(item_id, record is not None)
    return IndexItem(id=record.id, key=record.key, path=record.path, meta=record.meta,
                     seq=record.seq, created_at=record.created_at)


@router.delete("/v1/items/{item_id}", status_code=204, responses=ERROR_RESPONSES,
               tags=["items"])
async def delete_item(item_id: ItemId, service: Service) -> Response:
    """Delete an item: answered after the store committed it and the index dropped it, so no
    search started after this answer returns the id."""
    deleted = await run_in_threadpool(service.delete, item_id)
    if not deleted:
        assert service.store is not None
        record = await run_in_threadpool(service.store.get, item_id)
        raise _not_found(item_id, record is not None)
    return Response(status_code=204)


@router.get("/v1/items/{item_id}/vector", response_model=ItemVector, responses=ERROR_RESPONSES,
            tags=["items"])
async def get_item_vector(
    item_id: ItemId, service: Service, encoding: VectorEncoding = "float"
) -> JSONResponse:
    """The stored (unit, float16-rounded) vector of a live item, as floats or base64 float32."""
    assert service.store is not None
    vector = await run_in_threadpool(service.store.get_vector, item_id)
    if vector is None:
        raise _not_found(item_id)
    wire: Any = encode_vector(vector) if encoding == "base64" else vector.tolist()
    return JSONResponse({"id": item_id, "dim": int(vector.shape[0]), "vector": wire})


@router.get("/v1/stats", response_model=IndexStats, responses=ERROR_RESPONSES, tags=["ops"])
async def stats(service: Service) -> IndexStats:
    """Counts, the live index's kind and parameters, training and snapshot state."""
    return IndexStats.model_validate(await run_in_threadpool(service.stats))


@router.post("/v1/index/rebuild", response_model=RebuildResponse, responses=ERROR_RESPONSES,
             tags=["ops"])
async def rebuild(service: Service, body: RebuildRequest | None = None) -> RebuildResponse:
    """Retrain now (optionally with a forced Faiss factory string) and swap the new index in."""
    body = body or RebuildRequest()
    try:
        started, factory = await run_in_threadpool(service.rebuild, body.factory, body.wait)
    except ValueError as exc:
        # Shaped like a body validation error: the field and the sentence (factory.py).
        details = [{"loc": ["body", "factory"], "msg": str(exc), "type": "value_error"}]
        raise GlimpseError(ErrorType.validation_error, f"factory: {exc}.", details) from exc
    except RuntimeError as exc:
        raise GlimpseError(
            ErrorType.conflict, f"The training failed and the old index stays live: {exc}"
        ) from exc
    if not started:
        raise GlimpseError(ErrorType.conflict, "A training is running already; retry later.")
    return RebuildResponse(status="done" if body.wait else "started", factory=factory)


@router.post("/v1/index/snapshot", response_model=SnapshotResponse, responses=ERROR_RESPONSES,
             tags=["ops"])
async def snapshot(service: Service) -> SnapshotResponse:
    """Write a snapshot of the live index now (atomic; the old one stays until it is whole)."""
    try:
        result = await run_in_threadpool(service.snapshot)
    except OSError as exc:
        raise GlimpseError(
            ErrorType.insufficient_storage,
            f"The snapshot could not be written ({exc}); the previous snapshot is intact.",
        ) from exc
    return SnapshotResponse(seq=result.seq, bytes=result.bytes, took_ms=result.took_ms)


@router.post("/v1/index/tune", response_model=TuneResponse, responses=ERROR_RESPONSES,
             tags=["ops"])
async def tune(service: Service, body: TuneRequest | None = None) -> TuneResponse:
    """Measure recall@k on a held-out sample of the stored vectors against exact search and
    apply the cheapest nprobe / re-rank depth that reaches the target (shown in /v1/stats)."""
    body = body or TuneRequest()
    try:
        # Exact ground truth and dozens of trial searches: seconds of blocking numpy and Faiss.
        result = await run_in_threadpool(service.tune, body.target, body.sample, body.k,
                                         body.apply)
    except NotTunable as exc:
        raise GlimpseError(ErrorType.conflict, str(exc)) from exc
    return TuneResponse.model_validate(result)


@router.get("/healthz", response_model=HealthResponse, tags=["ops"])
async def healthz() -> HealthResponse:
    """Liveness: the process answers (the index may still be loading)."""
    return HealthResponse()


@router.get("/readyz", response_model=ReadyResponse, tags=["ops"])
async def readyz(request: Request) -> JSONResponse:
    """Readiness: 200 once the snapshot is loaded and the store replayed, 503 before."""
    service: Backend | None = request.app.state.service
    error = request.app.state.load_error or (service.waiting_for if service else None)
    if service is not None and service.ready.is_set():
        state = "training" if service.training else "ok"
        return JSONResponse(ReadyResponse(ready=True, checks={"index": state}).model_dump())
    checks = {"index": f"failed: {error}" if error else "loading"}
    return JSONResponse(ReadyResponse(ready=False, checks=checks).model_dump(), status_code=503)
