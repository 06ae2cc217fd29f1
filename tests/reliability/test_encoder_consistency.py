"""RELIABILITY.md #9: the encoder gives the same vector for an input in a batch as alone.

Figure: max abs difference between batched and one-by-one vectors (fp32, CPU), and the worst
distance of a norm from 1. The shared stack runs the encoder with its text cache off, so the
one-by-one calls are real forward passes.
"""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np

from tests.reliability._images import gradient, jpeg_bytes, png_bytes

TEXTS = [
    "a cat", "a photograph of a red bicycle leaning on a wall at night",
    "dog", "snow-covered mountains under a blue sky with a few small clouds", "x",
    "ein Hund im Park", "日本の寺", "two people playing chess in a sunny park, seen from above",
]


def test_text_batch_equals_one_by_one(stack: Any, figure: Any) -> None:
    with httpx.Client(base_url=stack.encoder.url, timeout=60) as enc:
        singles = [
            enc.post("/v1/embed/text", json={"texts": [t]}).json()["embeddings"][0] for t in TEXTS
        ]
        batch = enc.post("/v1/embed/text", json={"texts": TEXTS}).json()["embeddings"]
    a, b = np.asarray(singles, np.float32), np.asarray(batch, np.float32)
    diff = float(np.abs(a - b).max())
    norm_err = float(np.abs(np.linalg.norm(b, axis=1) - 1).max())
    figure(text_max_abs_diff=diff, text_max_norm_error=norm_err, texts=len(TEXTS))
    assert diff <= 1e-4, diff
    assert norm_err <= 1e-5, norm_err


def test_image_batch_equals_one_by_one(stack: Any, figure: Any) -> None:
    files = [
        (f"{i}.{'jpg' if i % 2 else 'png'}",
         (jpeg_bytes if i % 2 else png_bytes)(gradient((40 + 17 * i, 90 - 5 * i), seed=i)),
         "image/jpeg" if i % 2 else "image/png")
        for i in range(8)
    ]
    with httpx.Client(base_url=stack.encoder.url, timeout=60) as enc:
        singles = []
        for f in files:
            r = enc.post("/v1/embed/image", files=[("files", f)])
            assert r.status_code == 200, r.text
            singles.append(r.json()["embeddings"][0])
        r = enc.post("/v1/embed/image", files=[("files", f) for f in files])
        assert r.status_code == 200, r.text
        batch = r.json()["embeddings"]
    a, b = np.asarray(singles, np.float32), np.asarray(batch, np.float32)
    diff = float(np.abs(a - b).max())
    norm_err = float(np.abs(np.linalg.norm(np.vstack([a, b]), axis=1) - 1).max())
    figure(image_max_abs_diff=diff, image_max_norm_error=norm_err, images=len(files))
    assert diff <= 1e-4, diff
    assert norm_err <= 1e-5, norm_err
