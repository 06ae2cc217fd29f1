"""Bodies of the public API (the gateway, port 8000)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from glimpse.contracts.common import StrictBody
from glimpse.contracts.filters import FILTERS_DOC, Filters, FormFilters

MAX_K = 1000
MAX_QUERY_CHARS = 1000

# "auto": only the hits that clear the query's relevance cutoff; "all": the full ranking, each
# hit marked (docs/relevance.md).
Relevance = Literal["auto", "all"]
KEYWORDS_DOC = (
    "Also match the query's words in file names, paths, keywords, titles and descriptions, "
    "fused with the image similarity; a hit that matched them has 'keyword': true."
)
RELEVANCE_DOC = (
    "'auto' gives only the relevant hits (those above the query's adaptive cutoff); 'all' "
    "gives the full ranking, each hit marked with 'relevant'."
)
# The order of the relevant hits: by score, or by the date the photo was taken.
Sort = Literal["score", "newest", "oldest"]
SORT_DOC = (
    "'score' (the default) ranks by similarity; 'newest' and 'oldest' order the relevant hits "
    "by the date taken (undated ones after them, by score), then the rest by score."
)


class TextSearchRequest(StrictBody):
    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    k: int = Field(default=20, ge=1, le=MAX_K)
    offset: int = Field(default=0, ge=0)
    relevance: Relevance = Field(default="all", description=RELEVANCE_DOC)
    sort: Sort = Field(default="score", description=SORT_DOC)
    filters: Filters = Field(default=None, description=FILTERS_DOC)
    keywords: bool = Field(default=True, description=KEYWORDS_DOC)


class ImageSearchForm(BaseModel):
    """The form fields of /search/image besides the ``file`` part (form values are text, so
    ``k`` arrives as ``"20"``: not strict)."""

    k: int = Field(default=20, ge=1, le=MAX_K)
    offset: int = Field(default=0, ge=0)
    relevance: Relevance = Field(default="all", description=RELEVANCE_DOC)
    sort: Sort = Field(default="score", description=SORT_DOC)
    filters: FormFilters = Field(default=None, description=FILTERS_DOC)


class SearchResult(BaseModel):
    id: int
    score: float = Field(description="Cosine similarity with the query.")
    relevant: bool = Field(description="Whether the hit clears the query's relevance cutoff.")
    path: str
    image_url: str
    thumbnail_url: str
    width: int
    height: int
    taken: str | None = Field(
        default=None, description="When the photo was taken (local time, ISO 8601), if known."
    )
    keyword: bool | None = Field(
        default=None,
        description="True when the hit matched the query's words (a text search with "
        "'keywords'); then it counts as relevant, and a hit beyond the vector candidates has "
        "the last candidate's score (an upper bound of its own).",
    )


class Timings(BaseModel):
    encode_ms: float
    search_ms: float


class SearchResponse(BaseModel):
    results: list[SearchResult]
    relevance: Relevance
    sort: Sort = "score"
    relevant_count: int = Field(
        description="How many of the query's candidates clear its relevance cutoff."
    )
    no_good_match: bool = Field(description="Nothing clears the cutoff: no good match.")
    cutoff_score: float | None = Field(
        description="The query's cutoff; null when too few images to judge (all relevant)."
    )
    total_ms: float
    timings: Timings
    model: str


class SearchTerm(StrictBody):
    """A text or a stored image, weighted; a negative weight steers away from it."""

    text: str | None = Field(default=None, min_length=1, max_length=MAX_QUERY_CHARS)
    image_id: int | None = Field(default=None, ge=0)
    weight: float = Field(default=1.0, ge=-10.0, le=10.0)

    @model_validator(mode="after")
    def _exactly_one(self) -> SearchTerm:
        if (self.text is None) == (self.image_id is None):
            raise ValueError("each term needs exactly one of 'text' or 'image_id'")
        return self


class CompositeSearchRequest(StrictBody):
    terms: list[SearchTerm] = Field(min_length=1, max_length=16)
    k: int = Field(default=20, ge=1, le=MAX_K)
    offset: int = Field(default=0, ge=0)
    relevance: Relevance = Field(default="all", description=RELEVANCE_DOC)
    sort: Sort = Field(default="score", description=SORT_DOC)
    filters: Filters = Field(default=None, description=FILTERS_DOC)
    keywords: bool = Field(default=True, description=KEYWORDS_DOC)


IngestStatus = Literal["added", "exists", "rejected"]


class IngestItem(BaseModel):
    path: str
    id: int | None = None
    status: IngestStatus
    sha256: str | None = None
    error: str | None = None
    error_type: str | None = None


class IngestResponse(BaseModel):
    items: list[IngestItem]


# A sha256 digest as /ingest/check takes it (either case); the gateway keys media by lower case.
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]


class IngestCheckRequest(StrictBody):
    sha256: list[Sha256Hex] = Field(max_length=100_000)


class IngestCheckResponse(BaseModel):
    missing: list[str]


class ImageMeta(BaseModel):
    """The stored record of an image, as /images/{id}/meta gives it."""

    model_config = ConfigDict(extra="allow")

    id: int
    path: str
    sha256: str
    width: int
    height: int
    bytes: int
    content_type: str
    image_url: str
    thumbnail_url: str


class GatewayStats(BaseModel):
    model_config = ConfigDict(extra="allow")

    images: int
    index: dict[str, Any]
    model: dict[str, Any]
    media_bytes: int
    max_result_window: int = Field(
        description="The largest k + offset a search accepts (GATEWAY_MAX_RESULT_WINDOW): "
        "results past it are never given, so a client that pages stops there."
    )
