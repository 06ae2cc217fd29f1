"""HTTP routes of the encoder: embed texts, embed image files, info, health and readiness."""

from __future__ import annotations

import json
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from glimpse.contracts.bodies import form_body_openapi
from glimpse.contracts.common import HealthResponse, ReadyResponse
from glimpse.contracts.encoder import (
    EmbedImageResponse,
    EmbedTextRequest,
    EmbedTextResponse,
    EncoderInfo,
)
from glimpse.contracts.errors import ERROR_RESPONSES, ErrorType, GlimpseError
from glimpse.contracts.vectors import encode_vector
from glimpse.encoder.direct_body import read_direct_body
from glimpse.encoder.service import EncoderRuntime, not_ready
from glimpse.web.forms import parse_form

router = APIRouter()


async def get_runtime(request: Request) -> EncoderRuntime:
    # async: FastAPI runs a plain-def dependency in its thread pool, a thread hand-off per
    # request for two attribute reads.
    runtime: EncoderRuntime | None = getattr(request.app.state, "runtime", None)
    if runtime is None or not runtime.warmed_up:
        raise not_ready()
    return runtime


Runtime = Annotated[EncoderRuntime, Depends(get_runtime)]


def _vector_json(vector: np.ndarray, encoding: str) -> Any:
    return encode_vector(vector) if encoding == "base64" else vector.tolist()


@router.post(
    "/v1/embed/text",
    response_model=EmbedTextResponse,
    responses=ERROR_RESPONSES,
    tags=["embed"],
)
async def embed_text(body: EmbedTextRequest, runtime: Runtime) -> JSONResponse:
    """Unit-norm float32 CLIP vectors of the texts, in order."""
    settings = runtime.settings
    if len(body.texts) > settings.max_texts:
        raise GlimpseError(
            ErrorType.payload_too_large,
            f"The request holds {len(body.texts)} texts; the limit is {settings.max_texts}.",
        )
    for i, text in enumerate(body.texts):
        if not text.strip():
            raise GlimpseError(ErrorType.validation_error, f"texts[{i}] is empty.")
        if len(text) > settings.max_text_chars:
            raise GlimpseError(
                ErrorType.validation_error,
                f"texts[{i}] has {len(text)} characters; the limit is "
                f"{settings.max_text_chars}.",
            )
    vectors = await runtime.embed_texts(body.texts)
    # Built by hand, not through the response model: re-validating thousands of floats per
    # request would cost more than the small model's forward pass.
    return JSONResponse(
        {
            "model": runtime.encoder.name,
            "dim": runtime.encoder.dim,
            "embeddings": [_vector_json(v, body.encoding) for v in vectors],
        }
    )


_MULTIPART_BODY = {
    # The route reads its query itself (it is answered in front of FastAPI's stack), so its
    # one query parameter is declared here for the OpenAPI document.
    "parameters": [{
        "name": "encoding", "in": "query", "required": False,
        "description": "'float' lists or 'base64' float32.",
        "schema": {"anyOf": [{"enum": ["float", "base64"], "type": "string"},
                             {"type": "null"}], "title": "Encoding",
                   "description": "'float' lists or 'base64' float32."},
    }],
} | form_body_openapi(
    {
        "files": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": "One or more image files (JPEG, PNG, WebP, GIF, BMP, TIFF).",
        }
    },
    {"encoding": {"type": "string", "enum": ["float", "base64"]}},
)


async def read_body(request: Request, limit: int) -> bytes | bytearray:
    """The request's whole body, refused with 413 past ``limit`` bytes: a declared
    Content-Length before anything is read, a body sent without one as it arrives."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise GlimpseError(
            ErrorType.payload_too_large,
            f"The request body has {length} bytes; the limit is {limit}.",
        )
    # Served by glimpse.encoder.serve, the body was read from the socket into one buffer
    # (direct_body.py: no copies, no per-piece work on the event loop).
    direct = await read_direct_body(request.scope)
    if direct is not None:
        return direct
    # Straight from the server's receive: a Request's stream, a counting wrapper and the
    # middleware stack's wrappers cost a Python call or more per 64 KiB chunk.
    chunks: list[bytes] = []
    received = 0
    more = True
    while more:
        message = await request.receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > limit:
            raise GlimpseError(
                ErrorType.payload_too_large,
                f"The request body has more than {limit} bytes; the limit is {limit}.",
            )
        chunks.append(chunk)
        more = message.get("more_body", False)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _read_files(request: Request, runtime: EncoderRuntime) -> tuple[list[Any], str | None]:
    """The uploaded files (bytes, or the error of a file over the byte limit) and the optional
    'encoding' form field."""
    settings = runtime.settings
    # The whole body in memory (it is bounded), split in one pass.
    parts = parse_form(
        bytes(await read_body(request, settings.max_request_bytes)),
        request.headers.get("content-type"),
        max_files=settings.max_files,
        max_fields=16,
        max_field_bytes=64 * 1024,
    )
    uploads = [part for part in parts if part.name in ("files", "file")]
    if not uploads:
        raise GlimpseError(
            ErrorType.validation_error,
            "Send at least one image as a multipart/form-data part named 'files'.",
        )
    encoding = None
    for part in parts:
        if part.name == "encoding":
            encoding = part.text  # the last one, as a form's get(); None for a file
    contents: list[Any] = []
    for i, upload in enumerate(uploads):
        if not upload.is_file:
            contents.append(
                GlimpseError(
                    ErrorType.invalid_image,
                    f"files[{i}] is a plain form field, not an uploaded file.",
                )
            )
        elif len(upload.data) > settings.max_file_bytes:
            contents.append(
                GlimpseError(
                    ErrorType.payload_too_large,
                    f"files[{i}] has {len(upload.data)} bytes; the limit is "
                    f"{settings.max_file_bytes} bytes per image.",
                )
            )
        else:
            contents.append(upload.data)
    return contents, encoding


def _image_response(
    runtime: EncoderRuntime, results: list[Any], errors: list[Any], encoding: str
) -> Response:
    """The answer's JSON, written by hand: the vectors as base64 strings (or float lists)
    need no escaping, and json.dumps of the whole body cost more per image than the rest of
    the response. The same JSON as JSONResponse wrote (non-ASCII error text escaped)."""
    enc = runtime.encoder
    vectors = [
        "null" if isinstance(r, GlimpseError)
        else f'"{encode_vector(r)}"' if encoding == "base64"
        else json.dumps(r.tolist(), separators=(",", ":"))
        for r in results
    ]
    body = (
        f'{{"model":{json.dumps(enc.name)},"dim":{enc.dim},"embeddings":[{",".join(vectors)}],'
        f'"errors":{json.dumps(errors, separators=(",", ":"))}}}'
    )
    return Response(body.encode(), media_type="application/json")


@router.post(
    "/v1/embed/image",
    response_model=EmbedImageResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=_MULTIPART_BODY,
    tags=["embed"],
)
async def embed_image(request: Request) -> Response:
    """Unit-norm float32 CLIP vectors of the uploaded images, one slot per file.

    A file that cannot be used leaves null in its slot and its error beside it; the other
    files are embedded. When none can be, the answer is the first file's error (4xx).
    """
    # The hot route, answered in front of FastAPI's stack (glimpse/encoder/main.py): it takes
    # the request alone and reads its query and body itself.
    runtime = await get_runtime(request)
    contents, form_encoding = await _read_files(request, runtime)
    chosen = request.query_params.get("encoding") or form_encoding or "float"
    if chosen not in ("float", "base64"):
        raise GlimpseError(
            ErrorType.validation_error, f"encoding must be 'float' or 'base64', not {chosen!r}."
        )
    slots = [i for i, c in enumerate(contents) if not isinstance(c, GlimpseError)]
    results: list[Any] = list(contents)
    embedded = await runtime.embed_images([contents[i] for i in slots])
    for slot, result in zip(slots, embedded, strict=True):
        results[slot] = result
    errors = [
        {"error": r.message, "error_type": r.error_type} if isinstance(r, GlimpseError) else None
        for r in results
    ]
    if all(e is not None for e in errors):
        first = results[0]
        assert isinstance(first, GlimpseError)
        prefix = "" if len(results) == 1 else f"None of the {len(results)} files could be used; "
        prefix += "files[0]: " if len(results) > 1 else ""
        raise GlimpseError(first.error_type, prefix + first.message, {"errors": errors})
    return _image_response(runtime, results, errors, chosen)


@router.get("/v1/info", response_model=EncoderInfo, responses=ERROR_RESPONSES, tags=["ops"])
async def info(runtime: Runtime) -> EncoderInfo:
    """The model and the limits this encoder runs with."""
    s = runtime.settings
    return EncoderInfo(
        **runtime.info(),
        max_files=s.max_files,
        max_texts=s.max_texts,
        max_text_chars=s.max_text_chars,
        max_file_bytes=s.max_file_bytes,
        gpu_decode=runtime.gpu_decode,
        decode_rates=runtime.decode_rates,
        text_graph_batches=(
            list(graphs.buckets) if (graphs := runtime.encoder.text_graphs) is not None else None
        ),
    )


@router.get("/healthz", response_model=HealthResponse, tags=["ops"])
async def healthz() -> HealthResponse:
    """Liveness: the process answers (the model may still be loading)."""
    return HealthResponse()


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "Not ready yet."}},
    tags=["ops"],
)
async def readyz(request: Request) -> JSONResponse:
    """Ready once the model is loaded AND a warm-up text and image went through it."""
    runtime: EncoderRuntime | None = getattr(request.app.state, "runtime", None)
    warmup_error: str | None = getattr(request.app.state, "warmup_error", None)
    checks = {
        "model": "ok" if runtime is not None else "loading",
        "warmup": "ok"
        if runtime is not None and runtime.warmed_up
        else (f"failed: {warmup_error}" if warmup_error else "pending"),
    }
    ready = all(v == "ok" for v in checks.values())
    body: dict[str, Any] = ReadyResponse(ready=ready, checks=checks).model_dump()
    if not ready:
        # Both shapes at once: the readiness body, and the error body every non-2xx carries.
        body.update(error="The encoder is not ready: " + ", ".join(
            f"{k} {v}" for k, v in checks.items() if v != "ok"
        ) + ".", error_type=ErrorType.not_ready.value)
    return JSONResponse(body, status_code=200 if ready else 503)
