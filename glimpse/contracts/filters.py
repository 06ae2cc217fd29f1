"""The ``filters`` of a search (issue 26): one body, taken by the gateway's search routes and
passed as is to the index, which searches with it (glimpse/index/filters.py).

Each field narrows the search to the items whose meta (glimpse/gateway/metadata.py) matches;
the fields combine with AND, the values of a list field with OR. An item without the field a
filter reads does not match it. Every bad value is a 422 naming its field.
"""

from __future__ import annotations

import calendar
import re
from datetime import datetime
from typing import Annotated, Any

import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from glimpse.contracts.common import StrictBody

# "2023", "2023-06", "2023-06-14", "2023-06-14T10:22" or "2023-06-14T10:22:03".
_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2}))?)?)?)?$")
DATE_DOC = (
    "A date in the photo's own local time: 'YYYY', 'YYYY-MM', 'YYYY-MM-DD' or "
    "'YYYY-MM-DDTHH:MM[:SS]'."
)
EARTH_HALF_CIRCUMFERENCE_KM = 20_000.0
_WORD_BREAKS = re.compile(r"[\s,;:/()\[\]\"']+")


def camera_words(text: str) -> list[str]:
    """The words of a camera's make and model, lower case, each once, in order: what meta's
    ``camera`` holds and what the camera filter matches (Milvus 2.3 matches list elements,
    not parts of a string)."""
    return list(dict.fromkeys(w for w in _WORD_BREAKS.split(text.lower()) if w))


def date_start(value: str) -> float:
    """The start of the period ``value`` names (DATE_DOC), as wall-clock Unix seconds read as
    UTC: what meta's ``taken_ts`` holds. ValueError when it names no date."""
    match = _DATE.match(value)
    if match is None:
        raise ValueError(f"{value[:40]!r} is not a date: use YYYY, YYYY-MM, YYYY-MM-DD or "
                         "YYYY-MM-DDTHH:MM[:SS]")
    year, month, day, hour, minute, second = (int(g) if g else None for g in match.groups())
    when = datetime(year or 1, month or 1, day or 1, hour or 0, minute or 0, second or 0)
    return float(calendar.timegm(when.timetuple()))


def _date(value: str | None) -> str | None:
    if value is not None:
        date_start(value)
    return value


class Near(StrictBody):
    """Within ``radius_km`` of a point (great-circle distance)."""

    lat: float = Field(ge=-90.0, le=90.0)
    lon: float = Field(ge=-180.0, le=180.0)
    radius_km: float = Field(gt=0.0, le=EARTH_HALF_CIRCUMFERENCE_KM)


class BBox(StrictBody):
    """Inside a box of latitudes and longitudes; ``west`` > ``east`` crosses the 180th meridian."""

    south: float = Field(ge=-90.0, le=90.0)
    west: float = Field(ge=-180.0, le=180.0)
    north: float = Field(ge=-90.0, le=90.0)
    east: float = Field(ge=-180.0, le=180.0)

    @model_validator(mode="after")
    def _ordered(self) -> BBox:
        if self.south > self.north:
            raise ValueError("south must not be north of north")
        return self


Folder = Annotated[str, Field(min_length=1, max_length=1024)]
Keyword = Annotated[str, Field(min_length=1, max_length=64)]
FileType = Annotated[str, Field(pattern=r"^[a-z0-9]{1,10}$")]


class SearchFilters(StrictBody):
    taken_after: str | None = Field(
        default=None, max_length=40,
        description=f"Taken at or after the start of this period. {DATE_DOC}")
    taken_before: str | None = Field(
        default=None, max_length=40,
        description=f"Taken before the start of this period. {DATE_DOC}")
    folder: list[Folder] | None = Field(
        default=None, min_length=1, max_length=16,
        description="Folder path prefixes ('Holidays/2023' holds 'Holidays/2023/Rome'); "
        "relative, without '..'.")
    camera: str | None = Field(
        default=None, min_length=1, max_length=100,
        description="Words of the camera's make and model, any case ('pixel', 'eos r5'): an "
        "item whose camera has every word matches.")
    keyword: list[Keyword] | None = Field(
        default=None, min_length=1, max_length=16,
        description="IPTC/XMP keywords, any case; an item with any of them matches.")
    has_location: bool | None = Field(
        default=None, description="true: only images with a GPS position; false: only without.")
    near: Near | None = Field(default=None, description="Within a radius of a point.")
    bbox: BBox | None = Field(default=None, description="Inside a box.")
    type: list[FileType] | None = Field(
        default=None, min_length=1, max_length=16,
        description="File types, as Pillow names them in lower case ('jpeg', 'png', 'webp').")
    min_width: int | None = Field(default=None, ge=1, le=1_000_000,
                                  description="Stored width in pixels at least.")

    _taken_after = field_validator("taken_after")(_date)
    _taken_before = field_validator("taken_before")(_date)

    @field_validator("folder")
    @classmethod
    def _relative(cls, folders: list[str] | None) -> list[str] | None:
        if folders is None:
            return None
        out = []
        for folder in folders:
            parts = folder.strip("/").split("/")
            if folder.startswith("/") or any(p in ("", ".", "..") for p in parts):
                raise ValueError(f"{folder[:80]!r} must be a relative path without '..'")
            out.append("/".join(parts))
        return out

    @field_validator("camera")
    @classmethod
    def _words(cls, camera: str | None) -> str | None:
        if camera is not None and not camera_words(camera):
            raise ValueError("needs a word of a camera's make or model")
        return " ".join(camera_words(camera)) if camera is not None else None

    @field_validator("keyword")
    @classmethod
    def _lower_all(cls, words: list[str] | None) -> list[str] | None:
        return [w.lower() for w in words] if words is not None else None

    @model_validator(mode="after")
    def _range(self) -> SearchFilters:
        if (self.taken_after is not None and self.taken_before is not None
                and date_start(self.taken_after) >= date_start(self.taken_before)):
            raise ValueError("taken_before must be later than taken_after")
        return self

    def taken_bounds(self) -> tuple[float | None, float | None]:
        """(from, before) as ``taken_ts`` values; None where open."""
        return (None if self.taken_after is None else date_start(self.taken_after),
                None if self.taken_before is None else date_start(self.taken_before))


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``$defs`` references replaced by the definitions: the search routes
    document their bodies as self-contained schemas (glimpse/web/openapi.py)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return dict(walk(schema))


FILTERS_DOC = (
    "Narrow the search: taken_after / taken_before, folder, camera, keyword, has_location, "
    "near, bbox, type, min_width (each optional; fields combine with AND)."
)
_SCHEMA = _inlined(SearchFilters.model_json_schema())
#: The ``filters`` field of a search body, documented inline.
Filters = Annotated[SearchFilters | None, WithJsonSchema({"anyOf": [_SCHEMA, {"type": "null"}]})]


def _json_text(value: Any) -> Any:
    """A form field's text parsed as JSON (a form carries the filters object as text)."""
    if isinstance(value, str):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"filters is not JSON ({exc})") from None
    return value


#: The ``filters`` field of a form (/search/image): the same object, sent as JSON text.
FormFilters = Annotated[
    SearchFilters | None,
    BeforeValidator(_json_text),
    WithJsonSchema({"type": "string", "description": "JSON of the filters object."}),
]


class FacetValue(BaseModel):
    value: str
    count: int


class Facets(BaseModel):
    """What the filter controls offer: the values items have, with their counts (GET /facets)."""

    total: int = Field(description="Live items.")
    with_location: int = Field(description="Items with a GPS position.")
    years: list[FacetValue] = Field(description="Years taken, newest first.")
    months: list[FacetValue] = Field(description="'YYYY-MM' taken, newest first.")
    folders: list[FacetValue] = Field(
        description="The folders holding the most items (a folder counts its subfolders' "
        "items), most first.")
    cameras: list[FacetValue] = Field(description="Cameras (their words), most items first.")
    types: list[FacetValue] = Field(description="File types, most items first.")
