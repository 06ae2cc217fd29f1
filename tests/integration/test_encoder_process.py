"""The encoder as a real uvicorn process: ready, embeds, and a restart with pretrained=none
gives the same vectors. (Weights that cannot be had: tests/unit/encoder/test_api.py
and test_model.py.)"""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from skimage import data as skdata

from tests.support.procs import ServiceProcess

TINY_ENV = {
    "ENCODER_MODEL": "glimpse-tiny",
    "ENCODER_PRETRAINED": "none",
    "ENCODER_DEVICE": "cpu",
    "OMP_NUM_THREADS": "1",  # torch's threads
    "HF_HUB_OFFLINE": "1",
}


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(skdata.chelsea()).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _vectors(url: str, blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    text = httpx.post(url + "/v1/embed/text", json={"texts": ["a cat"]}, timeout=30)
    image = httpx.post(
        url + "/v1/embed/image", files=[("files", ("c.jpg", blob, "image/jpeg"))], timeout=30
    )
    assert text.status_code == 200 and image.status_code == 200, (text.text, image.text)
    return (
        np.asarray(text.json()["embeddings"], np.float32),
        np.asarray(image.json()["embeddings"], np.float32),
    )


def test_restart_with_random_weights_gives_identical_vectors(tmp_path: Path) -> None:
    blob = _jpeg()
    log = tmp_path / "encoder.log"
    with ServiceProcess("glimpse.encoder.main", TINY_ENV, log) as encoder:
        info = httpx.get(encoder.url + "/v1/info").json()
        assert info["dim"] == 64 and info["model"] == "glimpse-tiny"
        first = _vectors(encoder.url, blob)
        assert "glimpse_encoder_batch_size_bucket" in httpx.get(encoder.url + "/metrics").text
    with ServiceProcess("glimpse.encoder.main", TINY_ENV, log) as encoder:
        second = _vectors(encoder.url, blob)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
