"""The search routes: by text, by image, by weighted terms, and more like a stored image."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, ValidationError

from glimpse.contracts.errors import ERROR_RESPONSES, ErrorType, GlimpseError, invalid_request
from glimpse.contracts.filters import FILTERS_DOC, Facets, FormFilters, SearchFilters
from glimpse.contracts.gateway import (
    MAX_K,
    RELEVANCE_DOC,
    SORT_DOC,
    CompositeSearchRequest,
    ImageSearchForm,
    Relevance,
    SearchResponse,
    Sort,
    TextSearchRequest,
)
from glimpse.gateway import fusion
from glimpse.gateway.relevance import MAX_RELEVANT
from glimpse.gateway.search import candidates_for, check_window, combine_terms, search_answer
from glimpse.gateway.state import GatewayState, ImageId, ReadAccess, State, read_state
from glimpse.web.bodies import parse_fields, parse_json_body
from glimpse.web.forms import parse_form
from glimpse.web.openapi import form_body_openapi, json_body_openapi
from glimpse.web.responses import OrjsonResponse

router = APIRouter(responses=ERROR_RESPONSES)


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
    filters: SearchFilters | None = None,
    sort: str = "score",
    words: str | None = None,
) -> Response:
    t = time.perf_counter()
    # More candidates than the page: the relevance cutoff reads the query's background off them.
    asked = candidates_for(k, offset)
    wanted = filters.model_dump(exclude_none=True) if filters is not None else None
    # Records only for the hits that can be shown: the page (no hit ranks above its vector
    # rank, fused or not), or the relevant ones when they are sorted by date.
    shown = max(k + offset, MAX_RELEVANT)
    detail = k + offset if sort == "score" else shown
    cut = None
    if words:  # fused with the keyword search of the words (fusion.py)
        # Keyword hits rank above the vector-only ones, so past the relevant ones a page can
        # show they would only be counted, never shown.
        hits, cut = await fusion.search(state.index, vector, words, asked,
                                        exclude_ids=exclude_ids or (), filters=wanted,
                                        detail=detail, words_k=shown)
    else:
        hits = await state.index.search(vector, asked, exclude_ids=exclude_ids or (),
                                        filters=wanted, detail=detail)
    search_ms = _ms(t)
    body = search_answer(
        hits,
        asked=asked,
        relevance=relevance,
        sort=sort,
        k=k,
        offset=offset,
        encode_ms=vector_ms,
        search_ms=search_ms,
        total_ms=_ms(started),
        model=await _model_name(state),
        cut=cut,
    )
    # Already the SearchResponse shape; skipping re-validation keeps the gateway's overhead low.
    return OrjsonResponse(body)


async def _model_name(state: GatewayState) -> str:
    if state.encoder.model is None:
        try:
            await state.encoder.info()
        except GlimpseError:
            return "unknown"
    return state.encoder.model or "unknown"


@router.post(
    "/search/text",
    response_model=SearchResponse,
    tags=["search"],
    openapi_extra=json_body_openapi(TextSearchRequest),
)
async def search_text(request: Request) -> Response:
    """Images that match a text, best first."""
    started = time.perf_counter()
    state = read_state(request)
    # Validated from its bytes by pydantic's JSON parser, whatever the Content-Type says.
    body = parse_json_body(TextSearchRequest, await request.body())
    check_window(body.k, body.offset, state.settings.max_result_window)
    vector = (await state.encoder.embed_text([body.query]))[0]
    return await _run_search(
        state, started, _ms(started), vector, body.k, body.offset, body.relevance,
        filters=body.filters, sort=body.sort, words=body.query if body.keywords else None,
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
    openapi_extra=_IMAGE_FORM,
)
async def search_image(request: Request) -> Response:
    """Images that look like the uploaded one, best first."""
    started = time.perf_counter()
    state = read_state(request)
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
        [(file.filename or "query", bytes(file.data))]  # bytes already: no copy
    )
    if vectors[0] is None:
        error = errors[0] or {}
        raise GlimpseError(
            str(error.get("error_type") or ErrorType.invalid_image.value),
            f"file: {error.get('error') or 'The query image could not be read.'}",
        )
    return await _run_search(
        state, started, _ms(started), vectors[0], params.k, params.offset, params.relevance,
        filters=params.filters, sort=params.sort,
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
    space = state.encoder.for_stored() if image_ids else None

    async def text_vectors() -> list[Any]:
        return list(await state.encoder.embed_text(texts)) if texts else []

    got_texts, *got_images = await asyncio.gather(
        text_vectors(), *(state.index.vector(i, space) for i in image_ids)
    )
    text_iter, image_iter = iter(got_texts), iter(got_images)
    vectors = [next(text_iter) if t.text is not None else next(image_iter) for t in body.terms]
    query = combine_terms(vectors, [t.weight for t in body.terms])
    return await _run_search(
        state,
        started,
        _ms(started),
        query,
        body.k,
        body.offset,
        body.relevance,
        sorted(set(image_ids)),
        body.filters,
        sort=body.sort,
        # The words of the texts that pull towards (a negative weight steers away).
        words=" ".join(t.text for t in body.terms if t.text and t.weight > 0)
        if body.keywords else None,
    )


@router.get("/facets", response_model=Facets, tags=["search"], dependencies=[ReadAccess])
async def facets(state: State) -> Any:
    """The values and counts the filter controls offer: years and months taken, the folders
    and cameras with the most images, file types, and how many images have a location."""
    return await state.index.json("GET", "/v1/facets")


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
    sort: Annotated[Sort, Query(description=SORT_DOC)] = "score",
    filters: Annotated[str | None, Query(description=f"JSON of the filters object. {FILTERS_DOC}",
                                         max_length=16_384)] = None,
) -> Response:
    """More like this: neighbours of a stored image (the image itself left out)."""
    started = time.perf_counter()
    check_window(k, offset, state.settings.max_result_window)
    # The JSON text parsed as /search/image's form field is; a bad one is named before any work.
    try:
        wanted = _SimilarQuery.model_validate({"filters": filters}).filters
    except ValidationError as exc:
        raise invalid_request(exc.errors(include_url=False, include_context=False),
                              "query") from None
    vector = await state.index.vector(image_id, state.encoder.for_stored())
    return await _run_search(
        state, started, _ms(started), vector, k, offset, relevance, [image_id], wanted, sort=sort
    )


class _SimilarQuery(BaseModel):
    filters: FormFilters = None
