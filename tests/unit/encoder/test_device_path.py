"""The runtime's device path (the JPEG decoder on the device, as on CUDA) run on the CPU:
torchvision decodes there. Plain JPEGs are read from their header on the event loop and go to
the model thread in runs; the rest take the decode pool. Slots, errors and vectors must be
what each file gives alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry

from glimpse.contracts.errors import GlimpseError
from glimpse.encoder import service as service_module
from glimpse.encoder.gpu_decode import gpu_prepare_batch
from glimpse.encoder.images import ImageLimits
from glimpse.encoder.model import load_encoder
from glimpse.encoder.service import EncoderRuntime
from tests.unit.encoder.conftest import encoded, jpeg_bytes, tiny_settings


@pytest.fixture
async def runtime(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[EncoderRuntime]:
    monkeypatch.setattr(service_module, "MAX_QUEUE", 24)
    monkeypatch.setattr(service_module, "MAX_WAIT_MS", 20.0)
    settings = tiny_settings(max_batch=8, decode_workers=2)
    rt = EncoderRuntime(settings, load_encoder(settings), CollectorRegistry())
    rt.gpu_decode = True  # as on CUDA: the device path, with torchvision's CPU decoder
    rt.batcher.start()
    try:
        yield rt
    finally:
        rt.close()


def _cpu_path(rt: EncoderRuntime, blob: bytes) -> np.ndarray:
    from glimpse.encoder.images import prepare_pixels

    pixels = prepare_pixels(blob, rt.limits, rt.encoder.image_size, rt.preprocess)
    return rt.encoder.encode_pixels(pixels[None])[0]


async def test_a_mixed_request_keeps_its_slots(runtime: EncoderRuntime, photos) -> None:
    plain = [jpeg_bytes(p) for p in photos.values()]
    rocket = Image.fromarray(photos["rocket"])
    files = [
        plain[0],
        encoded(rocket, "PNG"),  # the pool decodes it
        plain[1],
        encoded(rocket, "JPEG", progressive=True),  # not plain: the pool decodes it
        b"junk",
        plain[2][: len(plain[2]) // 2],  # truncated: the CPU decoder refuses it
        plain[3],
    ]
    sizes: list[tuple[int, int] | None] = []
    out = await runtime.embed_images(files, sizes)
    # Plain JPEGs sized from their header on the loop, the rest in the decode pool.
    shown = [p.shape[1::-1] for p in photos.values()]
    assert sizes == [shown[0], (rocket.width, rocket.height), shown[1],
                     (rocket.width, rocket.height), None, None, shown[3]]
    kinds = [type(r).__name__ for r in out]
    assert kinds == ["ndarray", "ndarray", "ndarray", "ndarray", "GlimpseError",
                     "GlimpseError", "ndarray"]
    assert isinstance(out[5], GlimpseError) and out[5].error_type == "invalid_image"
    for got, blob in zip(out, files, strict=True):
        if isinstance(got, np.ndarray):
            assert abs(float(np.linalg.norm(got)) - 1.0) < 1e-5
            # torch's bicubic is not Pillow's: close to the CPU path, not equal.
            assert float(got @ _cpu_path(runtime, blob)) > 0.99


async def test_runs_longer_than_a_batch_answer_as_each_file_alone(
    runtime: EncoderRuntime, photos
) -> None:
    blobs = [jpeg_bytes(p, quality=q) for p in photos.values() for q in (70, 80, 90, 95, 99)]
    alone = [(await runtime.embed_images([b]))[0] for b in blobs]
    together = await runtime.embed_images(blobs)  # 20 files: runs of 8, 8 and 4
    for a, t in zip(alone, together, strict=True):
        assert isinstance(a, np.ndarray) and isinstance(t, np.ndarray)
        np.testing.assert_allclose(t, a, atol=1e-5)


async def test_a_full_queue_refuses_the_request_and_the_next_one_works(
    runtime: EncoderRuntime, photos
) -> None:
    blob = jpeg_bytes(photos["coffee"])
    with pytest.raises(GlimpseError) as caught:
        await runtime.embed_images([blob] * 40)  # runs of 8: the queue holds 24 inputs
    assert caught.value.error_type == "overloaded"
    for _ in range(200):  # its queued runs were cancelled; the model thread drops them
        if not runtime.batcher._queue:  # noqa: SLF001
            break
        await asyncio.sleep(0.01)
    (vector,) = await runtime.embed_images([blob])
    assert isinstance(vector, np.ndarray)


def test_the_batch_form_is_one_tensor_with_its_rows_and_errors(photos) -> None:
    encoder = load_encoder(tiny_settings())
    good = [jpeg_bytes(p) for p in photos.values()]
    jpegs = [good[0], good[1][:100], good[2]]  # the middle one no decoder can read
    batch = gpu_prepare_batch(jpegs, encoder, ImageLimits(10_000_000, 10_000_000))
    assert batch.pixels is not None and batch.pixels.shape == (2, 3, 64, 64)
    assert sorted(batch.rows) == [0, 2] and set(batch.errors) == {1}
    # The streams were read from one packed host buffer, kept with the batch.
    assert batch.staging is not None and batch.staging.numel() == sum(map(len, jpegs))
