"""HTTP routes of the index service (docs/architecture.md, "Internal APIs"), as one list of
operations (``OPERATIONS``) that gives both the Starlette routes and the OpenAPI document
(glimpse/web/openapi.py). Bodies are parsed with orjson and validated with the contract models;
every answer is written by orjson (``OrjsonResponse``).

One file, over 400 lines: every route of the index with its limits, so the service's whole public
surface and the OpenAPI document it makes are read in one place.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any, TypeVar

import numpy as np
import orjson
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from glimpse.contracts.common import HealthResponse, ReadyResponse
from glimpse.contracts.errors import (
    ERROR_RESPONSES,
    ErrorType,
    GlimpseError,
    describe_validation_errors,
)
from glimpse.contracts.filters import Facets
from glimpse.contracts.index import (
    MAX_ITEM_ID,
    MAX_K,
    AddItemsRequest,
    AddItemsResponse,
    CreateSpaceRequest,
    IndexItem,
    IndexSearchRequest,
    IndexSearchResponse,
    IndexStats,
    ItemsPage,
    ItemVector,
    KeyIdsResponse,
    KeysMissingRequest,
    KeysMissingResponse,
    RebuildRequest,
    RebuildResponse,
    SnapshotResponse,
    SpaceInfo,
    SpacePending,
    SpacesResponse,
    SpaceVectorsRequest,
    SpaceVectorsResponse,
    TuneRequest,
    TuneResponse,
    UpdateItemRequest,
)
from glimpse.contracts.vectors import VectorEncoding, decode_vectors, encode_vector, l2_normalize
from glimpse.index.backend import IndexBackend
from glimpse.index.service import IndexService, NotTunable
from glimpse.index.spaces import BUILTIN
from glimpse.index.store import NewItem
from glimpse.web.openapi import Operation
from glimpse.web.responses import OrjsonResponse

M = TypeVar("M", bound=BaseModel)

_F16 = np.dtype("<f2")
# An id SQLite cannot hold (>= 2**63) is a 422 naming the bound, not an OverflowError inside
# the store.
# Request limits: each bounds one request's memory and time, and no client needs more.
MAX_BATCH = 4096  # items per add (the gateway sends at most its files per request)
MAX_SEARCH_VECTORS = 1024  # query vectors per search
MAX_NPROBE = 4096  # IVF lists a search may ask to visit

_ITEM_ID: TypeAdapter[int] = TypeAdapter(Annotated[int, Field(ge=0, le=MAX_ITEM_ID)])
_ENCODING: TypeAdapter[VectorEncoding] = TypeAdapter(VectorEncoding)


def _invalid(errors: list[Any], source: str) -> GlimpseError:
    """A 422 naming each invalid field, located as FastAPI locates them (``body``, ``path``,
    ``query``), so the sentence reads the same."""
    message, details = describe_validation_errors(
        [{**error, "loc": (source, *error["loc"])} for error in errors]
    )
    return GlimpseError(ErrorType.validation_error, message, details)


async def _body(request: Request, model: type[M], *, optional: bool = False) -> M:
    """The JSON body validated as ``model`` (an absent or null body is ``model()`` where the
    body is optional), or a 422 naming the problem."""
    raw = await request.body()
    if optional and raw.strip() in (b"", b"null"):
        return model()
    if not raw:
        raise _invalid([{"loc": (), "msg": "Field required", "type": "missing"}], "body")
    try:
        # orjson reads nesting deeper than pydantic's JSON parser allows, so a too-deep meta
        # gets its own sentence (contracts/index.py) rather than a parse error.
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            # NaN and Infinity are not JSON, but Python's json.dumps writes them: read them,
            # so that the answer names the value that is not finite, not a syntax error.
            value = json.loads(raw)
        except (ValueError, RecursionError):
            raise _invalid([{"loc": (), "msg": "JSON decode error", "type": "json_invalid",
                             "ctx": {"error": str(exc)}}], "body") from None
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise _invalid(exc.errors(include_url=False, include_context=False), "body") from None


def _item_id(request: Request) -> int:
    try:
        return _ITEM_ID.validate_python(request.path_params["item_id"], strict=False)
    except ValidationError as exc:
        raise _invalid([{**e, "loc": ("item_id",)} for e in
                        exc.errors(include_url=False, include_context=False)], "path") from None


def service_of(request: Request) -> IndexBackend:
    service: IndexBackend | None = request.app.state.service
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


def _unit_f16(vectors: np.ndarray) -> np.ndarray:
    """Unit length, then float16 as stored: the index holds exactly what a restart reads back."""
    return l2_normalize(vectors).astype(_F16)


def _not_found(item_id: int, deleted: bool = False) -> GlimpseError:
    what = "was deleted" if deleted else "does not exist"
    return GlimpseError(ErrorType.not_found, f"Item {item_id} {what}.")


async def add_items(request: Request) -> Response:
    """Add a batch of items, idempotent by key; answered only after the store committed it.

    The whole batch is checked first (dimension, NaN/Inf, zero vectors, limits, meta, keys):
    one bad item rejects the batch and nothing is stored.
    """
    service = service_of(request)
    body = await _body(request, AddItemsRequest)
    if len(body.items) > MAX_BATCH:
        raise GlimpseError(
            ErrorType.payload_too_large,
            f"The batch holds {len(body.items)} items; the limit is {MAX_BATCH}.",
        )
    dim = service.settings.dim
    if body.space is not None:
        _, dim = await run_in_threadpool(service.space_of, body.space)
    vectors = decode_vectors([item.vector for item in body.items], dim, what="items")
    stored = _unit_f16(vectors)
    items = [
        NewItem(key=item.key, path=item.path, meta=item.meta, vector=stored[i])
        for i, item in enumerate(body.items)
    ]
    # SQLite commit (fsync) and Faiss add block: a worker thread, not the event loop.
    outcomes = await run_in_threadpool(service.add, items, body.space)
    return OrjsonResponse(
        {"items": [{"id": o.id, "key": o.key, "status": o.status} for o in outcomes]}
    )


async def search(request: Request) -> Response:
    """Top-k live items per query vector (scores are inner products of unit vectors)."""
    service = service_of(request)
    body = await _body(request, IndexSearchRequest)
    if len(body.vectors) > MAX_SEARCH_VECTORS:
        raise GlimpseError(
            ErrorType.payload_too_large,
            f"The search holds {len(body.vectors)} vectors; the limit is {MAX_SEARCH_VECTORS}.",
        )
    for name, k in (("k", body.k), ("words_k", body.words_k)):
        if k is not None and k > MAX_K:
            raise GlimpseError(ErrorType.validation_error, f"{name} is {k}; the limit is {MAX_K}.")
    if body.nprobe is not None and body.nprobe > MAX_NPROBE:
        raise GlimpseError(
            ErrorType.validation_error, f"nprobe is {body.nprobe}; the limit is {MAX_NPROBE}."
        )
    if len(body.exclude_ids) > MAX_K:
        raise GlimpseError(
            ErrorType.validation_error,
            f"exclude_ids holds {len(body.exclude_ids)} ids; the limit is {MAX_K}.",
        )
    # The space is resolved once: an activation meanwhile does not mix two spaces in one answer.
    # Off the event loop on Milvus, which may read the spaces' registry (a network call); Faiss
    # answers from memory, and a thread hop per search cut its throughput (compare_old_new.py).
    if isinstance(service, IndexService):
        space, dim = service.space_of(body.space)
    else:
        space, dim = await run_in_threadpool(service.space_of, body.space)
    queries = l2_normalize(decode_vectors(body.vectors, dim, what="vectors"))
    # Faiss, the re-rank and SQLite run on the service's threads (they release the GIL or
    # block); the event loop only awaits the result.
    options: dict[str, Any] = {"nprobe": body.nprobe, "exact": body.exact,
                               "exclude": body.exclude_ids, "filters": body.filters,
                               "detail": body.detail}
    answer: dict[str, Any] = {"space": space}
    # With words, the keyword search too: one exchange for a fused text search.
    if body.words is None:
        results = await asyncio.wrap_future(
            service.submit_space_search(space, queries, body.k, **options))
    else:
        results, answer["keywords"] = await asyncio.wrap_future(service.submit_words_search(
            space, queries, body.k, body.words, body.words_k or body.k, **options))
    answer["results"] = results
    return OrjsonResponse(answer)


async def keys_missing(request: Request) -> Response:
    """The keys that name no live item (so a client uploads only those)."""
    service = service_of(request)
    body = await _body(request, KeysMissingRequest)
    assert service.store is not None
    missing = await run_in_threadpool(service.store.missing_keys, body.keys)
    return OrjsonResponse({"missing": missing})


async def key_ids(request: Request) -> Response:
    """The live item's id of each key that has one (keys with none are left out)."""
    service = service_of(request)
    body = await _body(request, KeysMissingRequest)
    assert service.store is not None
    ids = await run_in_threadpool(service.store.live_ids, body.keys)
    return OrjsonResponse({"ids": ids})


async def get_item(request: Request) -> Response:
    """The stored record of a live item."""
    item_id = _item_id(request)
    service = service_of(request)
    assert service.store is not None
    record = await run_in_threadpool(service.store.get, item_id)
    if record is None or record.deleted:
        raise _not_found(item_id, record is not None)
    return OrjsonResponse({"id": record.id, "key": record.key, "path": record.path,
                           "meta": record.meta, "seq": record.seq,
                           "created_at": record.created_at})


async def update_item(request: Request) -> Response:
    """Set a live item's path and/or meta (a library file moved or renamed); its record after.
    Committed like an add before the answer; the id and the vector stay."""
    item_id = _item_id(request)
    service = service_of(request)
    body = await _body(request, UpdateItemRequest)
    record = await run_in_threadpool(service.update, item_id, body.path, body.meta)
    if record is None:
        assert service.store is not None
        known = await run_in_threadpool(service.store.get, item_id)
        raise _not_found(item_id, known is not None)
    return OrjsonResponse({"id": record.id, "key": record.key, "path": record.path,
                           "meta": record.meta, "seq": record.seq,
                           "created_at": record.created_at})


async def delete_item(request: Request) -> Response:
    """Delete an item: answered after the store committed it and the index dropped it, so no
    search started after this answer returns the id."""
    item_id = _item_id(request)
    service = service_of(request)
    deleted = await run_in_threadpool(service.delete, item_id)
    if not deleted:
        assert service.store is not None
        record = await run_in_threadpool(service.store.get, item_id)
        raise _not_found(item_id, record is not None)
    return Response(status_code=204)


async def get_item_vector(request: Request) -> Response:
    """The stored (unit, float16-rounded) vector of a live item in a space (``space``: the
    active one by default), as floats or base64 float32."""
    item_id = _item_id(request)
    try:
        encoding = _ENCODING.validate_python(request.query_params.get("encoding", "float"))
    except ValidationError as exc:
        raise _invalid([{**e, "loc": ("encoding",)} for e in
                        exc.errors(include_url=False, include_context=False)], "query") from None
    service = service_of(request)
    space, vector = await run_in_threadpool(service.space_vector,
                                            request.query_params.get("space"), item_id)
    if vector is None:
        store = service.store  # an item may lack a vector in any space, the built-in one too
        found = None if store is None else await run_in_threadpool(store.get, item_id)
        if found is None or found.deleted:  # not a live item at all
            raise _not_found(item_id)
        raise GlimpseError(ErrorType.not_found,
                           f"Item {item_id} has no vector in space {space!r} yet.",
                           {"id": item_id, "space": space})
    wire: Any = (encode_vector(vector) if encoding == "base64"
                 else np.ascontiguousarray(vector, dtype=np.float32))
    return OrjsonResponse({"id": item_id, "dim": int(vector.shape[0]), "vector": wire,
                           "space": space})


async def facets(request: Request) -> Response:
    """The values and counts of the filterable fields (years, months, folders, cameras)."""
    service = service_of(request)
    return OrjsonResponse(Facets.model_validate(await run_in_threadpool(service.facets))
                          .model_dump())


async def stats(request: Request) -> Response:
    """Counts, the live index's kind and parameters, training and snapshot state."""
    service = service_of(request)
    info = IndexStats.model_validate(await run_in_threadpool(service.stats))
    return OrjsonResponse(info.model_dump())


async def rebuild(request: Request) -> Response:
    """Retrain now (optionally with a forced Faiss factory string) and swap the new index in."""
    service = service_of(request)
    body = await _body(request, RebuildRequest, optional=True)
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
    return OrjsonResponse({"status": "done" if body.wait else "started", "factory": factory})


async def snapshot(request: Request) -> Response:
    """Write a snapshot of the live index now (atomic; the old one stays until it is whole)."""
    service = service_of(request)
    try:
        result = await run_in_threadpool(service.snapshot)
    except OSError as exc:
        raise GlimpseError(
            ErrorType.insufficient_storage,
            f"The snapshot could not be written ({exc}); the previous snapshot is intact.",
        ) from exc
    return OrjsonResponse({"seq": result.seq, "bytes": result.bytes, "took_ms": result.took_ms})


async def tune(request: Request) -> Response:
    """Measure recall@k on a held-out sample of the stored vectors against exact search and
    apply the cheapest nprobe / re-rank depth that reaches the target (shown in /v1/stats)."""
    service = service_of(request)
    body = await _body(request, TuneRequest, optional=True)
    try:
        # Exact ground truth and dozens of trial searches: seconds of blocking numpy and Faiss.
        result = await run_in_threadpool(service.tune, body.target, body.sample, body.k,
                                         body.apply)
    except NotTunable as exc:
        raise GlimpseError(ErrorType.conflict, str(exc)) from exc
    return OrjsonResponse(TuneResponse.model_validate(result).model_dump())


# -- named spaces (spaces.py) -----------------------------------------------------------------


async def _listing(service: IndexBackend) -> dict[str, Any]:
    spaces = await run_in_threadpool(service.list_spaces)
    active = next(s["name"] for s in spaces if s["active"])
    return SpacesResponse.model_validate({"spaces": spaces, "active": active}).model_dump()


async def list_spaces(request: Request) -> Response:
    """Every space with its dimension, item count and structure; which one is active."""
    return OrjsonResponse(await _listing(service_of(request)))


async def create_space(request: Request) -> Response:
    """A new, empty space of ``dim``-d vectors over the existing items."""
    service = service_of(request)
    body = await _body(request, CreateSpaceRequest)
    await run_in_threadpool(service.create_space, body.name, body.dim)
    created = next(s for s in await run_in_threadpool(service.list_spaces)
                   if s["name"] == body.name)
    return OrjsonResponse(SpaceInfo.model_validate(created).model_dump(), status_code=201)


def _space_name(request: Request) -> str:
    return str(request.path_params["name"])


async def add_space_vectors(request: Request) -> Response:
    """Store vectors of existing items in a space; an item that has one keeps it (a resumed
    re-encoding may send it again). Committed before the answer, like an add."""
    service = service_of(request)
    name = _space_name(request)
    body = await _body(request, SpaceVectorsRequest)
    if len(body.ids) > MAX_BATCH:
        raise GlimpseError(ErrorType.payload_too_large,
                           f"The batch holds {len(body.ids)} vectors; the limit is {MAX_BATCH}.")
    _, dim = service.space_of(name)
    stored = l2_normalize(decode_vectors(body.vectors, dim, what="vectors")).astype(_F16)
    outcome = await run_in_threadpool(service.add_space_vectors, name, body.ids, stored)
    return OrjsonResponse(SpaceVectorsResponse(space=name, **outcome).model_dump())


MAX_PENDING_PAGE = 1000
_PAGE: TypeAdapter[int] = TypeAdapter(Annotated[int, Field(ge=1, le=MAX_PENDING_PAGE)])


def _query_int(request: Request, name: str, adapter: TypeAdapter[int], default: int) -> int:
    try:
        return adapter.validate_python(request.query_params.get(name, default), strict=False)
    except ValidationError as exc:
        raise _invalid([{**e, "loc": (name,)} for e in
                        exc.errors(include_url=False, include_context=False)], "query") from None


async def space_pending(request: Request) -> Response:
    """A page of the live items with no vector in the space yet, in id order past ``after``,
    with how many have one: a re-encoding resumes from what the index holds."""
    service = service_of(request)
    name = _space_name(request)
    after = _query_int(request, "after", _ITEM_ID, 0)
    limit = _query_int(request, "limit", _PAGE, 256)
    page = await run_in_threadpool(service.space_pending, name, after, limit)
    return OrjsonResponse(SpacePending(space=name, **page).model_dump())


_FLAG: TypeAdapter[bool] = TypeAdapter(bool)
_V = TypeVar("_V")


def _query_value(request: Request, name: str, adapter: TypeAdapter[_V], default: str) -> _V:
    try:
        return adapter.validate_python(request.query_params.get(name, default), strict=False)
    except ValidationError as exc:
        raise _invalid([{**e, "loc": (name,)} for e in
                        exc.errors(include_url=False, include_context=False)], "query") from None


async def list_items(request: Request) -> Response:
    """A page of the live items in id order past ``after``, with their vectors in ``space``
    (default: the active one) when ``vectors=true``, null where the item has none there yet:
    how a client reads every item (the gateway's duplicates and backfill passes)."""
    service = service_of(request)
    after = _query_int(request, "after", _ITEM_ID, 0)
    limit = _query_int(request, "limit", _PAGE, 256)
    with_vectors = _query_value(request, "vectors", _FLAG, "false")
    encoding = _query_value(request, "encoding", _ENCODING, "float")
    assert service.store is not None
    page = await run_in_threadpool(service.store.page, after, limit)
    vectors: dict[int, np.ndarray] = {}
    if with_vectors:
        space, _ = await run_in_threadpool(service.space_of, request.query_params.get("space"))
        if space == BUILTIN:  # the page read them already
            vectors = {r.id: v for r, v in page}
        else:
            _, vectors = await run_in_threadpool(service.space_vectors, space,
                                                 [r.id for r, _ in page])

    def vector(item_id: int) -> Any:
        v = vectors.get(item_id)
        if v is None or not v.size:
            return None
        return encode_vector(v) if encoding == "base64" else np.ascontiguousarray(
            v, dtype=np.float32)

    items = [{"id": r.id, "key": r.key, "path": r.path, "meta": r.meta,
              "created_at": r.created_at, "vector": vector(r.id)} for r, _ in page]
    return OrjsonResponse({"items": items,
                           "next_after": page[-1][0].id if len(page) == limit else None})


async def activate_space(request: Request) -> Response:
    """Make a space the one searches without a space name are answered from (atomic: each
    search sees the old space or the new one)."""
    service = service_of(request)
    await run_in_threadpool(service.activate_space, _space_name(request))
    return OrjsonResponse(await _listing(service))


async def drop_space(request: Request) -> Response:
    """Drop a space that is neither active nor built in, with its vectors."""
    service = service_of(request)
    await run_in_threadpool(service.drop_space, _space_name(request))
    return Response(status_code=204)


async def healthz(request: Request) -> Response:
    """Liveness: the process answers (the index may still be loading)."""
    return OrjsonResponse(HealthResponse().model_dump())


async def readyz(request: Request) -> Response:
    """Readiness: 200 once the snapshot is loaded and the store replayed, 503 before."""
    service: IndexBackend | None = request.app.state.service
    error = request.app.state.load_error or (service.waiting_for if service else None)
    if service is not None and service.ready.is_set():
        state = "training" if service.training else "ok"
        return OrjsonResponse(ReadyResponse(ready=True, checks={"index": state}).model_dump())
    checks = {"index": f"failed: {error}" if error else "loading"}
    return OrjsonResponse(ReadyResponse(ready=False, checks=checks).model_dump(),
                          status_code=503)


async def prometheus_metrics(request: Request) -> Response:
    """Prometheus text exposition of this service's metrics."""
    return request.app.state.metrics.render()


_ITEM_ID_PARAM = {
    "name": "item_id", "in": "path", "required": True,
    "description": "Item id (0 to 2**63-1).",
    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ITEM_ID, "title": "Item Id",
               "description": "Item id (0 to 2**63-1)."},
}
_ENCODING_QUERY = {
    "name": "encoding", "in": "query", "required": False,
    "schema": {"enum": ["float", "base64"], "type": "string", "default": "float",
               "title": "Encoding"},
}

_SPACE_QUERY = {
    "name": "space", "in": "query", "required": False,
    "schema": {"type": "string", "title": "Space",
               "description": "The space whose vector to give; the active one by default."},
}

_NAME_PARAM = {
    "name": "name", "in": "path", "required": True, "description": "The space's name.",
    "schema": {"type": "string", "title": "Name"},
}

_AFTER_QUERY = {
    "name": "after", "in": "query", "required": False,
    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ITEM_ID, "default": 0,
               "title": "After", "description": "Only items with a larger id."},
}
_LIMIT_QUERY = {
    "name": "limit", "in": "query", "required": False,
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PENDING_PAGE, "default": 256,
               "title": "Limit"},
}

_VECTORS_QUERY = {
    "name": "vectors", "in": "query", "required": False,
    "schema": {"type": "boolean", "default": False, "title": "Vectors",
               "description": "Give each item's stored vector."},
}

OPERATIONS = [
    Operation("POST", "/v1/items", add_items, ("items",), AddItemsResponse,
              body=AddItemsRequest, responses=ERROR_RESPONSES),
    Operation("POST", "/v1/search", search, ("search",), IndexSearchResponse,
              body=IndexSearchRequest, responses=ERROR_RESPONSES),
    Operation("POST", "/v1/keys/missing", keys_missing, ("items",), KeysMissingResponse,
              body=KeysMissingRequest, responses=ERROR_RESPONSES),
    Operation("POST", "/v1/keys/ids", key_ids, ("items",), KeyIdsResponse,
              body=KeysMissingRequest, responses=ERROR_RESPONSES),
    Operation("GET", "/v1/items", list_items, ("items",), ItemsPage,
              responses=ERROR_RESPONSES,
              parameters=[_AFTER_QUERY, _LIMIT_QUERY, _VECTORS_QUERY, _ENCODING_QUERY,
                          _SPACE_QUERY]),
    Operation("GET", "/v1/items/{item_id}", get_item, ("items",), IndexItem,
              responses=ERROR_RESPONSES, parameters=[_ITEM_ID_PARAM]),
    Operation("PATCH", "/v1/items/{item_id}", update_item, ("items",), IndexItem,
              body=UpdateItemRequest, responses=ERROR_RESPONSES, parameters=[_ITEM_ID_PARAM]),
    Operation("DELETE", "/v1/items/{item_id}", delete_item, ("items",), status=204,
              responses=ERROR_RESPONSES, parameters=[_ITEM_ID_PARAM]),
    Operation("GET", "/v1/items/{item_id}/vector", get_item_vector, ("items",), ItemVector,
              responses=ERROR_RESPONSES,
              parameters=[_ITEM_ID_PARAM, _ENCODING_QUERY, _SPACE_QUERY]),
    Operation("GET", "/v1/stats", stats, ("ops",), IndexStats, responses=ERROR_RESPONSES),
    Operation("GET", "/v1/facets", facets, ("search",), Facets, responses=ERROR_RESPONSES),
    Operation("POST", "/v1/index/rebuild", rebuild, ("ops",), RebuildResponse,
              body=RebuildRequest, body_required=False, responses=ERROR_RESPONSES),
    Operation("POST", "/v1/index/snapshot", snapshot, ("ops",), SnapshotResponse,
              responses=ERROR_RESPONSES),
    Operation("POST", "/v1/index/tune", tune, ("ops",), TuneResponse,
              body=TuneRequest, body_required=False, responses=ERROR_RESPONSES),
    Operation("GET", "/v1/spaces", list_spaces, ("spaces",), SpacesResponse,
              responses=ERROR_RESPONSES),
    Operation("POST", "/v1/spaces", create_space, ("spaces",), SpaceInfo, status=201,
              body=CreateSpaceRequest, responses=ERROR_RESPONSES),
    Operation("POST", "/v1/spaces/{name}/vectors", add_space_vectors, ("spaces",),
              SpaceVectorsResponse, body=SpaceVectorsRequest, responses=ERROR_RESPONSES,
              parameters=[_NAME_PARAM]),
    Operation("GET", "/v1/spaces/{name}/pending", space_pending, ("spaces",), SpacePending,
              responses=ERROR_RESPONSES, parameters=[_NAME_PARAM, _AFTER_QUERY, _LIMIT_QUERY]),
    Operation("POST", "/v1/spaces/{name}/activate", activate_space, ("spaces",),
              SpacesResponse, responses=ERROR_RESPONSES, parameters=[_NAME_PARAM]),
    Operation("DELETE", "/v1/spaces/{name}", drop_space, ("spaces",), status=204,
              responses=ERROR_RESPONSES, parameters=[_NAME_PARAM]),
    Operation("GET", "/healthz", healthz, ("ops",), HealthResponse),
    Operation("GET", "/readyz", readyz, ("ops",), ReadyResponse,
              responses={503: {"model": ReadyResponse, "description": "Not ready yet."}}),
    Operation("GET", "/metrics", prometheus_metrics, ("ops",),
              answer_content={"text/plain": {"schema": {"type": "string"}}}),
]
