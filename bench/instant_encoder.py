"""A BENCHMARK STAND-IN for glimpse.encoder, not an encoder: every file and every text gets
the same unit vector, at once.

``bench/bench_ingest.py --instant`` runs it in place of the real encoder, so that what the
benchmark measures is the gateway's own per-image cost (receiving the upload, hashing,
validating, storing, calling its upstreams, answering), which a real model's forward pass
would hide on a CPU. It speaks the encoder's wire format (the routes the gateway calls, the
image wire or a form, the ``encoding`` parameter, one slot per file) and nothing more: it
never decodes an image, so it never rejects one.

    uvicorn bench.instant_encoder:app      # INSTANT_ENCODER_DIM (default 512, ViT-B-32's)
"""

from __future__ import annotations

import functools
import os

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from glimpse.contracts import image_wire
from glimpse.contracts.vectors import encode_vector
from glimpse.web.forms import parse_form

MODEL = "instant-stand-in"
DIM = int(os.environ.get("INSTANT_ENCODER_DIM", "512"))
_SIZE = {"width": 1, "height": 1}


# Models loaded by POST /v1/models (a migration's new one, bench/bench_migration.py), by name:
# their dimension, INSTANT_ENCODER_SECOND_DIM (default 256), so their space differs.
_LOADED: dict[str, int] = {}
SECOND_DIM = int(os.environ.get("INSTANT_ENCODER_SECOND_DIM", "256"))


@functools.cache
def _unit(dim: int, encoding: str | None) -> object:
    unit = np.zeros(dim, dtype=np.float32)
    unit[0] = 1.0
    return encode_vector(unit) if encoding == "base64" else unit.tolist()


def _vectors(count: int, encoding: str | None, dim: int = DIM) -> list[object]:
    return [_unit(dim, encoding)] * count


def _model(request: Request) -> tuple[str, int]:
    name = request.query_params.get("model") or MODEL
    return name, _LOADED.get(name, DIM)


async def load_model(request: Request) -> Response:
    name = str((await request.json())["model"])
    _LOADED[name] = SECOND_DIM if name != MODEL else DIM
    return JSONResponse({"model": name, "pretrained": "none", "dim": _LOADED[name]})


async def embed_image(request: Request) -> Response:
    body, content_type = await request.body(), request.headers.get("content-type") or ""
    encoding = request.query_params.get("encoding")
    if content_type.startswith(image_wire.CONTENT_TYPE):  # what the gateway sends
        files = len(image_wire.unpack(body, max_files=100_000))
    else:
        parts = parse_form(body, content_type, max_files=100_000, max_fields=8,
                           max_field_bytes=1024)
        files = sum(1 for p in parts if p.is_file and p.name == "files")
        encoding = next((p.text for p in parts if p.name == "encoding"), encoding)
    model, dim = _model(request)
    return JSONResponse(
        {
            "model": model,
            "dim": dim,
            "embeddings": _vectors(files, encoding, dim),
            "errors": [None] * files,
            "sizes": [_SIZE] * files,  # never read: the stand-in decodes nothing
        }
    )


async def embed_text(request: Request) -> Response:
    body = await request.json()
    texts = body.get("texts") or []
    model, dim = _model(request)
    return JSONResponse(
        {"model": model, "dim": dim, "embeddings": _vectors(len(texts), body.get("encoding"), dim)}
    )


async def info(request: Request) -> Response:
    return JSONResponse(
        {
            "model": MODEL,
            "pretrained": "none",
            "dim": DIM,
            "device": "none (benchmark stand-in)",
            "precision": "none",
            "image_size": 224,
            "max_batch": 100_000,
            "max_wait_ms": 0.0,
        }
    )


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    return JSONResponse({"ready": True, "checks": {"model": "ok"}})


app = Starlette(
    routes=[
        Route("/v1/embed/image", embed_image, methods=["POST"]),
        Route("/v1/embed/text", embed_text, methods=["POST"]),
        Route("/v1/models", load_model, methods=["POST"]),
        Route("/v1/info", info),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
    ]
)
