"""Fixtures of the encoder tests: the tiny model (glimpse-tiny, dim 64, random seeded weights)
and sample photos that scikit-image ships (no network)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata
from starlette.testclient import TestClient

from glimpse.encoder import api as encoder_api
from glimpse.encoder.config import Settings
from glimpse.encoder.main import create_app

TINY_DIM = 64


def tiny_settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "model": "glimpse-tiny",
        "pretrained": "none",
        "device": "cpu",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def wait_ready(client: TestClient, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.02)
    raise TimeoutError(client.get("/readyz").text)


def jpeg_bytes(image: Image.Image | np.ndarray, quality: int = 90) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Four real photos, RGB uint8."""
    return {
        "astronaut": skdata.astronaut(),
        "coffee": skdata.coffee(),
        "chelsea": skdata.chelsea(),
        "rocket": skdata.rocket(),
    }


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    """One warmed-up tiny encoder app per test module (its lifespan runs in the client)."""
    with pytest.MonkeyPatch.context() as patch:
        # Small request limits (module constants of api.py), so the tests can cross them.
        for name, value in (("MAX_FILES", 8), ("MAX_TEXTS", 8), ("MAX_TEXT_CHARS", 100)):
            patch.setattr(encoder_api, name, value)
        with TestClient(create_app(tiny_settings(max_file_bytes=2_000_000,
                                                 max_pixels=4_000_000))) as c:
            wait_ready(c)
            yield c
