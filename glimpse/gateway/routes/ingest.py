"""The ingest routes: upload images, and ask which digests are not stored yet."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from glimpse.contracts.errors import ERROR_RESPONSES, ErrorType, GlimpseError
from glimpse.contracts.gateway import IngestCheckRequest, IngestCheckResponse, IngestResponse
from glimpse.gateway.ingest import ingest_files
from glimpse.gateway.media import SHA256_RE
from glimpse.gateway.metadata import MTIMES_DOC, parse_mtimes
from glimpse.gateway.state import State, WriteAccess
from glimpse.web.forms import parse_form
from glimpse.web.openapi import form_body_openapi
from glimpse.web.responses import OrjsonResponse

router = APIRouter(responses=ERROR_RESPONSES)

# /ingest's body in OpenAPI: one or more image parts named "files".
_INGEST_FORM = form_body_openapi(
    {
        "files": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": "Images; each part's filename is its relative path.",
        }
    },
    {"mtimes": {"type": "string", "description": MTIMES_DOC}},
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
    mtimes = parse_mtimes(next((p.text for p in parts if p.name == "mtimes"), None))
    # Built as the IngestResponse shape already; skipping re-validation saves CPU per item.
    return OrjsonResponse({"items": await ingest_files(state, files, mtimes=mtimes)})


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
