"""HTTP routes of the encoder: embed texts, embed image files, info, health, readiness and
metrics, as one list of operations (``OPERATIONS``) that gives both the Starlette routes and
the OpenAPI document (glimpse/web/openapi.py).

More than one model at once, by name: POST /v1/models loads one more beside the configured
model, and the embed routes' ``model`` query parameter picks one (the gateway's model migration
re-encodes the collection with it while searches still use the first). One process rather than
a second deployment, because this process already holds the GPU and the decode pool: a second
model shares both, needs no compose change, and no second copy of CUDA's context.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from glimpse.contracts import image_wire
from glimpse.contracts.common import HealthResponse, ReadyResponse
from glimpse.contracts.encoder import (
    EmbedImageResponse,
    EmbedTextRequest,
    EmbedTextResponse,
    EncoderInfo,
    LoadedModel,
    LoadModelRequest,
)
from glimpse.contracts.errors import (
    ERROR_RESPONSES,
    ErrorType,
    GlimpseError,
    describe_validation_errors,
)
from glimpse.contracts.vectors import encode_vector
from glimpse.encoder.service import EncoderRuntime, not_ready
from glimpse.web.forms import parse_form
from glimpse.web.openapi import Operation, form_body_openapi
from glimpse.web.responses import OrjsonResponse

BodyT = TypeVar("BodyT", bound=BaseModel)


def get_runtime(request: Request) -> EncoderRuntime:
    runtime: EncoderRuntime | None = getattr(request.app.state, "runtime", None)
    if runtime is None or not runtime.warmed_up:
        raise not_ready()
    return runtime


def _vector_json(vector: np.ndarray, encoding: str) -> np.ndarray | str:
    """The vector as the answer carries it (orjson writes a float32 array as a list)."""
    if encoding == "base64":
        return encode_vector(vector)
    return np.ascontiguousarray(vector, dtype=np.float32)


def _served(request: Request) -> EncoderRuntime:
    """The runtime of the model the ``model`` query parameter names (default: the configured
    one); 422 naming it when it is not loaded."""
    return get_runtime(request).served(request.query_params.get("model") or None)


def _text_request(raw: bytes) -> EmbedTextRequest:
    """The JSON body validated, or a 422 naming each invalid field (as FastAPI names them)."""
    return _json_request(EmbedTextRequest, raw)


def _json_request(model: type[BodyT], raw: bytes) -> BodyT:
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        message, details = describe_validation_errors([
            {**error, "loc": ("body", *error["loc"])}
            for error in exc.errors(include_url=False, include_context=False)
        ])
        raise GlimpseError(ErrorType.validation_error, message, details) from None


# Request limits: each bounds one request's memory, and no client needs more.
MAX_REQUEST_BYTES = 256 * 1024 * 1024  # an image request's body, refused before it is read
MAX_FILES = 256  # image files per request (the gateway sends one /ingest request's files)
MAX_TEXTS = 256
MAX_TEXT_CHARS = 1000  # CLIP reads 77 tokens: a longer text adds nothing to its vector


async def embed_text(request: Request) -> Response:
    """Unit-norm float32 CLIP vectors of the texts, in order."""
    runtime = _served(request)
    body = _text_request(await read_body(request, MAX_REQUEST_BYTES))
    if len(body.texts) > MAX_TEXTS:
        raise GlimpseError(
            ErrorType.payload_too_large,
            f"The request holds {len(body.texts)} texts; the limit is {MAX_TEXTS}.",
        )
    for i, text in enumerate(body.texts):
        if not text.strip():
            raise GlimpseError(ErrorType.validation_error, f"texts[{i}] is empty.")
        if len(text) > MAX_TEXT_CHARS:
            raise GlimpseError(
                ErrorType.validation_error,
                f"texts[{i}] has {len(text)} characters; the limit is {MAX_TEXT_CHARS}.",
            )
    vectors = await runtime.embed_texts(body.texts)
    return OrjsonResponse(
        {
            "model": runtime.encoder.name,
            "dim": runtime.encoder.dim,
            "embeddings": [_vector_json(v, body.encoding) for v in vectors],
        }
    )


# The image route's query parameter and its two bodies, for the OpenAPI document.
_MODEL_QUERY = {
    "name": "model", "in": "query", "required": False,
    "description": "A loaded model's name (GET /v1/info lists them); default: the configured one.",
    "schema": {"anyOf": [{"type": "string"}, {"type": "null"}], "title": "Model",
               "description": "A loaded model's name; default: the configured one."},
}
_ENCODING_QUERY = {
    "name": "encoding", "in": "query", "required": False,
    "description": "'float' lists or 'base64' float32.",
    "schema": {"anyOf": [{"enum": ["float", "base64"], "type": "string"}, {"type": "null"}],
               "title": "Encoding", "description": "'float' lists or 'base64' float32."},
}
_IMAGE_FORM = form_body_openapi(
    {
        "files": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": "One or more image files (JPEG, PNG, WebP, GIF, BMP, TIFF).",
        }
    },
    {"encoding": {"type": "string", "enum": ["float", "base64"]}},
)["requestBody"]
_IMAGE_FORM["description"] = (
    "The images as a multipart/form-data form, or as the image wire the gateway sends "
    f"({image_wire.CONTENT_TYPE}: a 4-byte big-endian head length, a JSON head "
    '{"names": [...], "lengths": [...]}, then the files\' bytes in that order).'
)
_IMAGE_FORM["content"][image_wire.CONTENT_TYPE] = {"schema": {"type": "string", "format": "binary"}}


async def read_body(request: Request, limit: int) -> bytes:
    """The request's whole body, refused with 413 past ``limit`` bytes: a declared
    Content-Length before anything is read, a body sent without one as it arrives."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise GlimpseError(
            ErrorType.payload_too_large,
            f"The request body has {length} bytes; the limit is {limit}.",
        )
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise GlimpseError(
                ErrorType.payload_too_large,
                f"The request body has more than {limit} bytes; the limit is {limit}.",
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _uploads(body: bytes, content_type: str | None) -> tuple[list[bytes | None], str | None]:
    """Each file of the body (None for a form part that is a plain field where a file belongs)
    and the optional 'encoding' form field: the image wire (glimpse/contracts/image_wire.py,
    what the gateway sends) or a multipart form (people and curl)."""
    if (content_type or "").partition(";")[0].strip().lower() == image_wire.CONTENT_TYPE:
        return [f.data for f in image_wire.unpack(body, max_files=MAX_FILES)], None
    parts = parse_form(
        body, content_type, max_files=MAX_FILES, max_fields=16, max_field_bytes=64 * 1024
    )
    encoding = None
    for part in parts:
        if part.name == "encoding":
            encoding = part.text  # the last one, as a form's get(); None for a file
    files = [p.data if p.is_file else None for p in parts if p.name in ("files", "file")]
    return files, encoding


async def _read_files(request: Request, runtime: EncoderRuntime) -> tuple[list[Any], str | None]:
    """The uploaded files (bytes, or the error of a file that cannot be one) and the optional
    'encoding' form field."""
    settings = runtime.settings
    # The whole body in memory (it is bounded), split in one pass.
    uploads, encoding = _uploads(
        await read_body(request, MAX_REQUEST_BYTES), request.headers.get("content-type")
    )
    if not uploads:
        raise GlimpseError(
            ErrorType.validation_error,
            "Send at least one image: as a multipart/form-data part named 'files', or in an "
            f"{image_wire.CONTENT_TYPE} body.",
        )
    contents: list[Any] = []
    for i, data in enumerate(uploads):
        if data is None:
            contents.append(
                GlimpseError(
                    ErrorType.invalid_image,
                    f"files[{i}] is a plain form field, not an uploaded file.",
                )
            )
        elif len(data) > settings.max_file_bytes:
            contents.append(
                GlimpseError(
                    ErrorType.payload_too_large,
                    f"files[{i}] has {len(data)} bytes; the limit is "
                    f"{settings.max_file_bytes} bytes per image.",
                )
            )
        else:
            contents.append(data)
    return contents, encoding


async def embed_image(request: Request) -> Response:
    """Unit-norm float32 CLIP vectors of the uploaded images, one slot per file, each with the
    image's width and height as displayed.

    A file that cannot be used leaves null in its slot and its error beside it; the other
    files are embedded. When none can be, the answer is the first file's error (4xx).
    """
    runtime = _served(request)
    contents, form_encoding = await _read_files(request, runtime)
    chosen = request.query_params.get("encoding") or form_encoding or "float"
    if chosen not in ("float", "base64"):
        raise GlimpseError(
            ErrorType.validation_error, f"encoding must be 'float' or 'base64', not {chosen!r}."
        )
    slots = [i for i, c in enumerate(contents) if not isinstance(c, GlimpseError)]
    results: list[Any] = list(contents)
    shown: list[tuple[int, int] | None] = []
    embedded = await runtime.embed_images([contents[i] for i in slots], shown)
    sizes: list[dict[str, int] | None] = [None] * len(results)
    for slot, result, size in zip(slots, embedded, shown, strict=True):
        results[slot] = result
        sizes[slot] = None if size is None else {"width": size[0], "height": size[1]}
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
    return OrjsonResponse({
        "model": runtime.encoder.name,
        "dim": runtime.encoder.dim,
        "embeddings": [
            None if isinstance(r, GlimpseError) else _vector_json(r, chosen) for r in results
        ],
        "errors": errors,
        "sizes": sizes,
    })


async def info(request: Request) -> Response:
    """The model and the limits this encoder runs with."""
    runtime = get_runtime(request)
    s = runtime.settings
    answer = EncoderInfo(
        **runtime.info(),
        max_files=MAX_FILES,
        max_texts=MAX_TEXTS,
        max_text_chars=MAX_TEXT_CHARS,
        max_file_bytes=s.max_file_bytes,
        max_pixels=s.max_pixels,
        gpu_decode=runtime.gpu_decode,
        decode_rates=runtime.decode_rates,
        models=runtime.models(),
        text_graph_batches=(
            list(graphs.buckets) if (graphs := runtime.encoder.text_graphs) is not None else None
        ),
    )
    return OrjsonResponse(answer.model_dump())


async def load_model(request: Request) -> Response:
    """Serve one more model beside the configured one (internal: the gateway's migration asks
    for it); loading one already served answers it again. 422 names a model or weights that
    cannot be loaded."""
    runtime = get_runtime(request)
    body = _json_request(LoadModelRequest, await read_body(request, 64 * 1024))
    served = await runtime.add_model(body.model, body.pretrained, request.app.state.encoder_loader)
    (answer,) = [m for m in runtime.models() if m["model"] == served.encoder.name]
    return OrjsonResponse(LoadedModel(**answer).model_dump())


async def healthz(request: Request) -> Response:
    """Liveness: the process answers (the model may still be loading)."""
    return OrjsonResponse(HealthResponse().model_dump())


async def readyz(request: Request) -> Response:
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
    return OrjsonResponse(body, status_code=200 if ready else 503)


async def prometheus_metrics(request: Request) -> Response:
    """Prometheus text exposition of this service's metrics."""
    return request.app.state.metrics.render()


OPERATIONS = [
    Operation("POST", "/v1/embed/text", embed_text, ("embed",), EmbedTextResponse,
              body=EmbedTextRequest, responses=ERROR_RESPONSES, parameters=[_MODEL_QUERY]),
    Operation("POST", "/v1/embed/image", embed_image, ("embed",), EmbedImageResponse,
              body=_IMAGE_FORM, responses=ERROR_RESPONSES,
              parameters=[_ENCODING_QUERY, _MODEL_QUERY]),
    Operation("POST", "/v1/models", load_model, ("models",), LoadedModel,
              body=LoadModelRequest, responses=ERROR_RESPONSES),
    Operation("GET", "/v1/info", info, ("ops",), EncoderInfo, responses=ERROR_RESPONSES),
    Operation("GET", "/healthz", healthz, ("ops",), HealthResponse),
    Operation("GET", "/readyz", readyz, ("ops",), ReadyResponse,
              responses={503: {"model": ReadyResponse, "description": "Not ready yet."}}),
    Operation("GET", "/metrics", prometheus_metrics, ("ops",),
              answer_content={"text/plain": {"schema": {"type": "string"}}}),
]
