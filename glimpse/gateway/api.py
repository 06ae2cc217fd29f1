"""The public routes: search, ingest, images, stats and the ops endpoints."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path as FsPath
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from pydantic import ConfigDict

from glimpse.contracts.bodies import (
    form_body_openapi,
    json_body_openapi,
    json_response,
    parse_fields,
    parse_json_body,
)
from glimpse.contracts.common import HealthResponse, ReadyResponse
from glimpse.contracts.errors import ERROR_RESPONSES, ErrorType, GlimpseError
from glimpse.contracts.gateway import (
    MAX_K,
    RELEVANCE_DOC,
    CompositeSearchRequest,
    GatewayStats,
    ImageMeta,
    ImageSearchForm,
    IngestCheckRequest,
    IngestCheckResponse,
    IngestResponse,
    Relevance,
    SearchResponse,
    TextSearchRequest,
)
from glimpse.contracts.index import RebuildRequest, RebuildResponse, SnapshotResponse
from glimpse.gateway.ingest import THUMBNAIL_TYPE, ingest_files
from glimpse.gateway.library import Libraries
from glimpse.gateway.media import SHA256_RE
from glimpse.gateway.search import candidates_for, check_window, combine_terms, search_answer
from glimpse.gateway.state import (
    GatewayState,
    ReadAccess,
    State,
    WriteAccess,
)
from glimpse.gateway.thumbnails import thumbnail_of
from glimpse.web.forms import parse_form

router = APIRouter(responses=ERROR_RESPONSES)

ImageId = Annotated[int, Path(ge=0, le=2**62, description="The image's id.")]
_IMMUTABLE = "max-age=31536000, immutable"


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


async def _run_search(
    state: GatewayState,
    started: float,
    vector_ms: float,
    vector: Any,
    k: int,
    offset: int,
    relevance: str,
    exclude_ids: list[int] | None = None,
) -> Response:
    t = time.perf_counter()
    # More candidates than the page: the relevance cutoff reads the query's background off them.
    asked = candidates_for(k, offset)
    hits = await state.index.search(vector, asked, exclude_ids=exclude_ids or ())
    search_ms = _ms(t)
    body = search_answer(
        hits,
        asked=asked,
        relevance=relevance,
        k=k,
        offset=offset,
        encode_ms=vector_ms,
        search_ms=search_ms,
        total_ms=_ms(started),
        model=await _model_name(state),
    )
    # Already the SearchResponse shape; skipping re-validation keeps the gateway's overhead low.
    return json_response(body)


async def _model_name(state: GatewayState) -> str:
    if state.encoder.model is None:
        try:
            await state.encoder.info()
        except GlimpseError:
            return "unknown"
    return state.encoder.model or "unknown"


# Search -----------------------------------------------------------------------------------


@router.post(
    "/search/text",
    response_model=SearchResponse,
    tags=["search"],
    dependencies=[ReadAccess],
    openapi_extra=json_body_openapi(TextSearchRequest),
)
async def search_text(request: Request, state: State) -> Response:
    """Images that match a text, best first."""
    started = time.perf_counter()
    # Validated from its bytes by pydantic's JSON parser, whatever the Content-Type says.
    body = parse_json_body(TextSearchRequest, await request.body())
    check_window(body.k, body.offset, state.settings.max_result_window)
    vector = (await state.encoder.embed_text([body.query]))[0]
    return await _run_search(
        state, started, _ms(started), vector, body.k, body.offset, body.relevance
    )


# /search/image's body in OpenAPI: the image part and the ImageSearchForm fields, no others.
_IMAGE_FORM = form_body_openapi(
    {"file": {"type": "string", "format": "binary", "description": "The query image."}},
    ImageSearchForm.model_json_schema()["properties"],
)
_IMAGE_FORM["requestBody"]["content"]["multipart/form-data"]["schema"]["additionalProperties"] = (
    False
)


class _ImageSearchFields(ImageSearchForm):
    # A field the form does not know is refused by name, as in a JSON body.
    model_config = ConfigDict(extra="forbid")


@router.post(
    "/search/image",
    response_model=SearchResponse,
    tags=["search"],
    dependencies=[ReadAccess],
    openapi_extra=_IMAGE_FORM,
)
async def search_image(request: Request, state: State) -> Response:
    """Images that look like the uploaded one, best first."""
    started = time.perf_counter()
    # The body is bounded (the body limit of /search/image) and split in memory.
    parts = parse_form(
        await request.body(),
        request.headers.get("content-type"),
        max_files=1,
        max_fields=8,
        max_field_bytes=1024 * 1024,
    )
    # The last part of each name wins, as in a form's get(); a file where a field belongs is
    # passed as the part itself, which the validation refuses.
    form = {part.name: part for part in parts}
    file = form.pop("file", None)
    params = parse_fields(
        _ImageSearchFields,
        {name: part if part.is_file else part.text for name, part in form.items()},
    )
    if file is None or not file.is_file:
        raise GlimpseError(
            ErrorType.validation_error,
            "Invalid request: file: send the query image as a file part named 'file'.",
        )
    check_window(params.k, params.offset, state.settings.max_result_window)
    vectors, errors = await state.encoder.embed_images(
        [(
            file.filename or "query",
            bytes(file.data),  # bytes already: no copy
            file.content_type or "application/octet-stream",
        )]
    )
    if vectors[0] is None:
        error = errors[0] or {}
        raise GlimpseError(
            str(error.get("error_type") or ErrorType.invalid_image.value),
            f"file: {error.get('error') or 'The query image could not be read.'}",
        )
    return await _run_search(
        state, started, _ms(started), vectors[0], params.k, params.offset, params.relevance
    )


@router.post("/search", response_model=SearchResponse, tags=["search"], dependencies=[ReadAccess])
async def search_terms(body: CompositeSearchRequest, state: State) -> Response:
    """Weighted texts and stored images combined into one query; negative weights steer away.

    Images used as terms are left out of the results.
    """
    started = time.perf_counter()
    check_window(body.k, body.offset, state.settings.max_result_window)
    texts = [t.text for t in body.terms if t.text is not None]
    image_ids = [t.image_id for t in body.terms if t.image_id is not None]

    async def text_vectors() -> list[Any]:
        return list(await state.encoder.embed_text(texts)) if texts else []

    got_texts, *got_images = await asyncio.gather(
        text_vectors(), *(state.index.vector(i) for i in image_ids)
    )
    text_iter, image_iter = iter(got_texts), iter(got_images)
    vectors = [next(text_iter) if t.text is not None else next(image_iter) for t in body.terms]
    query = combine_terms(vectors, [t.weight for t in body.terms])
    return await _run_search(
        state, started, _ms(started), query, body.k, body.offset, body.relevance,
        sorted(set(image_ids)),
    )


@router.get(
    "/images/{image_id}/similar",
    response_model=SearchResponse,
    tags=["search"],
    dependencies=[ReadAccess],
)
async def similar(
    image_id: ImageId,
    state: State,
    k: Annotated[int, Query(ge=1, le=MAX_K)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
    relevance: Annotated[Relevance, Query(description=RELEVANCE_DOC)] = "all",
) -> Response:
    """More like this: neighbours of a stored image (the image itself left out)."""
    started = time.perf_counter()
    check_window(k, offset, state.settings.max_result_window)
    vector = await state.index.vector(image_id)
    return await _run_search(
        state, started, _ms(started), vector, k, offset, relevance, [image_id]
    )


# Ingest -----------------------------------------------------------------------------------


# /ingest's body in OpenAPI: one or more image parts named "files".
_INGEST_FORM = form_body_openapi(
    {
        "files": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": "Images; each part's filename is its relative path.",
        }
    },
    {},
)


@router.post(
    "/ingest",
    response_model=IngestResponse,
    tags=["ingest"],
    dependencies=[WriteAccess],
    openapi_extra=_INGEST_FORM,
)
async def ingest(request: Request, state: State) -> Response:
    """Store, embed and index images; one answer per file (added, exists or rejected)."""
    settings = state.settings
    # The body is bounded (GATEWAY_MAX_BODY_BYTES, counted as it arrives) and every file is
    # held in memory for the encoder call anyway, so it is split in memory.
    parts = parse_form(
        await request.body(),
        request.headers.get("content-type"),
        max_files=settings.max_files_per_request,
        max_fields=16,
        max_field_bytes=64 * 1024,
    )
    files = [part for part in parts if part.name == "files"]
    if not files or not all(part.is_file for part in files):
        raise GlimpseError(
            ErrorType.validation_error,
            "Invalid request: files: send one or more images as file parts named 'files'.",
        )
    # Built as the IngestResponse shape already; skipping re-validation saves CPU per item.
    return json_response({"items": await ingest_files(state, files)})


@router.post(
    "/ingest/check",
    response_model=IngestCheckResponse,
    tags=["ingest"],
    dependencies=[WriteAccess],
)
async def ingest_check(body: IngestCheckRequest, state: State) -> dict[str, Any]:
    """Which of these sha256 digests are not in the collection yet (upload only those)."""
    digests = [d.lower() for d in body.sha256]
    bad = [d for d in digests if not SHA256_RE.match(d)]
    if bad:
        raise GlimpseError(
            ErrorType.validation_error,
            f"{len(bad)} value(s) are not sha256 hex digests, e.g. {bad[0][:80]!r}.",
        )
    if not digests:
        return {"missing": []}
    missing = await state.index.keys_missing(digests)
    return {"missing": [d for d in digests if d in missing]}


# Images -----------------------------------------------------------------------------------


async def _record(state: GatewayState, image_id: int) -> dict[str, Any]:
    record = state.records.get(image_id)
    if record is None:
        record = await state.index.item(image_id)
        state.records.put(image_id, record)
    return record


def _not_found(image_id: int, what: str = "image") -> GlimpseError:
    return GlimpseError(ErrorType.not_found, f"No {what} is stored for image {image_id}.")


def _media_key(record: dict[str, Any], image_id: int, what: str) -> str:
    """The record's sha256, which names its media; an item added with any other key (through
    the index's own port) has no media here, so it is not found rather than an error."""
    sha = str(record.get("key") or "")
    if not SHA256_RE.match(sha):
        raise _not_found(image_id, what)
    return sha


def _etag_matches(request: Request, etag: str) -> bool:
    header = request.headers.get("if-none-match")
    if not header:
        return False
    candidates = {c.strip().removeprefix("W/") for c in header.split(",")}
    return "*" in candidates or etag in candidates


def _serve_file(
    request: Request,
    state: GatewayState,
    found: FsPath | bytes | None,
    content_type: str,
    etag: str,
) -> Response:
    """``found`` (a file, or bytes just made) with long-lived caching, or 304 when the client
    already holds ``etag`` (``found`` may then be None)."""
    cache = ("public, " if state.settings.public_read else "private, ") + _IMMUTABLE
    headers = {"ETag": etag, "Cache-Control": cache, "X-Content-Type-Options": "nosniff"}
    if _etag_matches(request, etag):
        return Response(status_code=304, headers=headers)
    if isinstance(found, bytes):
        return Response(found, media_type=content_type, headers=headers)
    assert found is not None
    return FileResponse(found, media_type=content_type, headers=headers)


@router.get(
    "/images/{image_id}",
    tags=["images"],
    response_class=FileResponse,
    dependencies=[ReadAccess],
)
@router.head("/images/{image_id}", include_in_schema=False, dependencies=[ReadAccess])
async def image_original(image_id: ImageId, request: Request, state: State) -> Response:
    """The original bytes of an image (by id only)."""
    record = await _record(state, image_id)
    meta = record.get("meta") or {}
    sha = _media_key(record, image_id, "original")
    etag = f'"{sha}"'
    content_type = str(meta.get("content_type") or "application/octet-stream")
    if _etag_matches(request, etag):
        return _serve_file(request, state, None, content_type, etag)
    found = await anyio.to_thread.run_sync(
        state.media.find_original, sha, record["path"], meta.get("original")
    )
    if found is None:
        raise _not_found(image_id, "original")
    return _serve_file(request, state, found, content_type, etag)


@router.get(
    "/images/{image_id}/thumbnail",
    tags=["images"],
    response_class=FileResponse,
    dependencies=[ReadAccess],
)
@router.head("/images/{image_id}/thumbnail", include_in_schema=False, dependencies=[ReadAccess])
async def image_thumbnail(image_id: ImageId, request: Request, state: State) -> Response:
    """A small WebP or JPEG of the image (longest side at most GATEWAY_THUMBNAIL_SIZE)."""
    record = await _record(state, image_id)
    meta = record.get("meta") or {}
    sha = _media_key(record, image_id, "thumbnail")
    # A JPEG one was made by an older version configured for JPEG thumbnails.
    content_type = str(meta.get("thumbnail_type") or THUMBNAIL_TYPE)
    if content_type not in ("image/webp", "image/jpeg"):
        raise _not_found(image_id, "thumbnail")
    etag = f'"{sha}-thumb"'
    # The ETag names the original's bytes, so a client holding it has the right thumbnail
    # even before this gateway has made one (thumbnails are made on first request).
    if _etag_matches(request, etag):
        return _serve_file(request, state, None, content_type, etag)
    found = await thumbnail_of(
        state, sha, str(record["path"]), content_type, meta.get("original")
    )
    if found is None:
        raise _not_found(image_id, "thumbnail")
    return _serve_file(request, state, found, content_type, etag)


@router.get(
    "/images/{image_id}/meta", response_model=ImageMeta, tags=["images"], dependencies=[ReadAccess]
)
async def image_meta(image_id: ImageId, state: State) -> dict[str, Any]:
    """The stored record of an image."""
    record = await _record(state, image_id)
    meta = dict(record.get("meta") or {})
    meta.pop("original", None)  # where the media store keeps it: the store's own business
    if state.libraries is not None:  # every library path with these bytes (library.py)
        meta["paths"] = await anyio.to_thread.run_sync(
            state.libraries.paths, str(record.get("key"))
        )
    path = record["path"]
    if meta.get("paths") and path not in meta["paths"] and "/" in path:
        library = path.split("/", 1)[0]
        if state.libraries is not None and library in state.libraries.libraries:
            path = meta["paths"][0]  # moved since it was indexed: where it is now
    return {
        **meta,
        "id": image_id,
        "path": path,
        "sha256": record["key"],
        "width": int(meta.get("width", 0)),
        "height": int(meta.get("height", 0)),
        "bytes": int(meta.get("bytes", 0)),
        "content_type": str(meta.get("content_type", "application/octet-stream")),
        "image_url": f"/images/{image_id}",
        "thumbnail_url": f"/images/{image_id}/thumbnail",
        "created_at": record.get("created_at"),
    }


@router.delete(
    "/images/{image_id}", status_code=204, tags=["images"], dependencies=[WriteAccess]
)
async def delete_image(image_id: ImageId, state: State) -> Response:
    """Delete an image: it never comes back from a search, and its media is removed."""
    record = await _record(state, image_id)
    sha = str(record["key"])
    async with state.media.locks.hold([sha]):  # across processes: see ingest.py
        await state.index.delete(image_id)
        state.records.drop(image_id)
        if SHA256_RE.match(sha):  # any other key never had media here (_media_key)
            await anyio.to_thread.run_sync(state.media.remove, sha)
            state.media.invalidate_bytes()
    return Response(status_code=204)


# Stats, admin and ops ------------------------------------------------------------------------


@router.get("/stats", response_model=GatewayStats, tags=["ops"], dependencies=[ReadAccess])
async def stats(state: State) -> dict[str, Any]:
    """Counts, the index's kind and parameters, the model, bytes of stored media."""

    async def model_info() -> dict[str, Any]:
        try:
            return await state.encoder.info()
        except GlimpseError as exc:
            return {"model": state.encoder.model, "error": exc.message}

    index_stats, model, media_bytes = await asyncio.gather(
        state.index.stats(),
        model_info(),
        anyio.to_thread.run_sync(state.media.total_bytes),
    )
    return {
        "images": int(index_stats.get("count", 0)),
        "index": index_stats,
        "model": model,
        "media_bytes": media_bytes,
        "max_result_window": state.settings.max_result_window,
        # How many replicas of each upstream there are and which are up (replicas.py).
        "upstreams": {
            "encoder": state.encoder.replicas.status(),
            "index": state.index.replicas.status(),
        },
    }


@router.post(
    "/admin/index/snapshot",
    response_model=SnapshotResponse,
    tags=["admin"],
    dependencies=[WriteAccess],
)
async def admin_snapshot(state: State) -> Any:
    """Ask the index to write a snapshot now."""
    return await state.index.json("POST", "/v1/index/snapshot")


@router.post(
    "/admin/index/rebuild",
    response_model=RebuildResponse,
    tags=["admin"],
    dependencies=[WriteAccess],
)
async def admin_rebuild(body: RebuildRequest, state: State) -> Any:
    """Ask the index to retrain now (optionally with a forced Faiss factory string)."""
    return await state.index.json("POST", "/v1/index/rebuild", json=body.model_dump())


def _libraries(state: GatewayState) -> Libraries:
    if state.libraries is None:
        raise GlimpseError(
            ErrorType.not_found,
            "No library is configured (GATEWAY_LIBRARIES is not set).",
            {"libraries": []},
        )
    return state.libraries


@router.get("/admin/libraries", tags=["admin"], dependencies=[WriteAccess])
async def admin_libraries(state: State) -> dict[str, Any]:
    """Per library: files seen, indexed, pending, failed (with reasons), the last scan and the
    watcher's kind."""
    libraries = _libraries(state)
    return {"libraries": await anyio.to_thread.run_sync(libraries.status)}


@router.post(
    "/admin/libraries/{name}/scan", status_code=202, tags=["admin"], dependencies=[WriteAccess]
)
async def admin_library_scan(
    name: Annotated[str, Path(max_length=200, description="The library's name.")], state: State
) -> dict[str, Any]:
    """Ask for a scan of a library now (it runs in the background; see GET /admin/libraries)."""
    library = _libraries(state).get(name)
    library.rescan_requested.set()
    # Seen by the process that syncs the library when it is another one (library.py).
    await anyio.to_thread.run_sync(library.state.set_info, "scan_requested", 1)
    return {"library": await anyio.to_thread.run_sync(library.status)}


@router.get("/healthz", response_model=HealthResponse, tags=["ops"])
async def healthz() -> HealthResponse:
    """Liveness: the process answers."""
    return HealthResponse()


@router.get("/readyz", response_model=ReadyResponse, tags=["ops"])
async def readyz(state: State) -> JSONResponse:
    """Readiness: the encoder (model loaded) and the index answer their /readyz (with
    replicas: at least one of each)."""
    (encoder_ok, encoder), (index_ok, index) = await asyncio.gather(
        state.encoder.ready(), state.index.ready()
    )
    # With replicas, one ready replica of each is enough; the lines say how many are.
    checks = {"encoder": encoder, "index": index}
    ready = encoder_ok and index_ok
    return JSONResponse(
        ReadyResponse(ready=ready, checks=checks).model_dump(), status_code=200 if ready else 503
    )
