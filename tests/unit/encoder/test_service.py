"""The runtime behind the API: concurrent requests batched (seen in /metrics), batch equals
one by one through HTTP, near-duplicate photos, the text cache."""

from __future__ import annotations

import asyncio
import io
import re
import threading
from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette

from glimpse.contracts.errors import GlimpseError
from glimpse.encoder import main as encoder_main
from glimpse.encoder import service as service_module
from glimpse.encoder.main import create_app
from glimpse.encoder.model import load_encoder
from glimpse.encoder.service import EncoderRuntime, calibration_jpegs
from tests.unit.encoder.conftest import encoded, jpeg_bytes, tiny_settings


@pytest.fixture
async def app(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Starlette]:
    monkeypatch.setattr(service_module, "MAX_WAIT_MS", 300.0)
    application = create_app(tiny_settings(max_batch=32))
    async with application.router.lifespan_context(application):
        for _ in range(500):
            if application.state.runtime.warmed_up:
                break
            await asyncio.sleep(0.01)
        yield application


def _client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://encoder")


def _metric(text: str, name: str, kind: str) -> float:
    match = re.search(rf'^{name}{{kind="{kind}"}} ([0-9.e+]+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def _embed_image(client: httpx.AsyncClient, blob: bytes) -> np.ndarray:
    r = await client.post("/v1/embed/image", files=[("files", ("x.jpg", blob, "image/jpeg"))])
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["embeddings"][0], dtype=np.float32)


async def test_concurrent_single_requests_are_batched(app: Starlette, photos) -> None:
    blobs = [jpeg_bytes(p, quality=q) for p in photos.values() for q in (70, 80, 90, 95)]
    async with _client(app) as client:
        before = (await client.get("/metrics")).text
        vectors = await asyncio.gather(*(_embed_image(client, b) for b in blobs))
        after = (await client.get("/metrics")).text
    passes = _metric(after, "glimpse_encoder_batch_size_count", "image") - _metric(
        before, "glimpse_encoder_batch_size_count", "image"
    )
    inputs = _metric(after, "glimpse_encoder_batch_size_sum", "image") - _metric(
        before, "glimpse_encoder_batch_size_sum", "image"
    )
    assert inputs == len(blobs)
    assert passes < len(blobs) / 2, f"{len(blobs)} requests ran in {passes} forward passes"
    np.testing.assert_allclose(np.linalg.norm(np.vstack(vectors), axis=1), 1.0, atol=1e-5)


async def test_one_request_equals_single_requests(app: Starlette, photos) -> None:
    blobs = [jpeg_bytes(p) for p in photos.values()]
    async with _client(app) as client:
        files = [("files", (f"{i}.jpg", b, "image/jpeg")) for i, b in enumerate(blobs)]
        together = np.asarray(
            (await client.post("/v1/embed/image", files=files)).json()["embeddings"], np.float32
        )
        one_by_one = np.vstack([await _embed_image(client, b) for b in blobs])
        texts = ["a red rocket", "a cat on a sofa", "coffee", "an astronaut"]
        text_batch = np.asarray(
            (await client.post("/v1/embed/text", json={"texts": texts})).json()["embeddings"]
        )
        app.state.runtime._text_cache.clear()  # the single requests must run the model again
        text_single = np.vstack(
            [
                (await client.post("/v1/embed/text", json={"texts": [t]})).json()["embeddings"]
                for t in texts
            ]
        )
    assert np.abs(together - one_by_one).max() <= 1e-4
    assert np.abs(text_batch - text_single).max() <= 1e-4
    for matrix in (together, one_by_one, text_batch, text_single):
        np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)


async def test_a_reencoded_copy_is_nearer_than_any_other_photo(app: Starlette, photos) -> None:
    names = list(photos)
    originals = [encoded(Image.fromarray(photos[n]), "PNG") for n in names]
    copies = [
        jpeg_bytes(Image.fromarray(photos[n]).resize((int(photos[n].shape[1] * 0.8),
                                                      int(photos[n].shape[0] * 0.8))), 60)
        for n in names
    ]
    async with _client(app) as client:
        a = np.vstack([await _embed_image(client, b) for b in originals])
        b = np.vstack([await _embed_image(client, b) for b in copies])
    similarity = a @ b.T
    for i, name in enumerate(names):
        others = np.delete(similarity[i], i)
        assert similarity[i, i] > others.max(), f"{name}: {similarity[i]}"


async def test_repeated_texts_come_from_the_cache(app: Starlette) -> None:
    async with _client(app) as client:
        first = (await client.post("/v1/embed/text", json={"texts": ["cached"]})).json()
        before = (await client.get("/metrics")).text
        second = (await client.post("/v1/embed/text", json={"texts": ["cached"]})).json()
        after = (await client.get("/metrics")).text
    assert first["embeddings"] == second["embeddings"]
    passes = [
        _metric(t, "glimpse_encoder_batch_size_count", "text") for t in (before, after)
    ]
    assert passes[0] == passes[1]
    assert "glimpse_encoder_text_cache_hits_total 1.0" in after


async def test_text_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoder_main, "WARMUP", False)
    application = create_app(tiny_settings(text_cache_size=2))
    async with application.router.lifespan_context(application), _client(application) as c:
        r = await c.post("/v1/embed/text", json={"texts": ["a", "b", "c", "d"]})
        assert r.status_code == 200
        assert list(application.state.runtime._text_cache) == ["c", "d"]


def test_calibration_jpegs_are_distinct_camera_sized_photos() -> None:
    blobs = calibration_jpegs(4)
    assert len(set(blobs)) == 4
    for blob in blobs:
        assert 20_000 < len(blob) < 400_000
        with Image.open(io.BytesIO(blob)) as img:
            assert (img.format, img.size) == ("JPEG", (640, 480))


def test_the_jpeg_decoder_is_chosen_by_measuring_both() -> None:
    # Off CUDA the device path runs torchvision's CPU decoder: the same code, timed for real.
    runtime = EncoderRuntime(tiny_settings(), load_encoder(tiny_settings()), CollectorRegistry())
    try:
        cpu_rate, device_rate = runtime.time_decoders(8)
        assert cpu_rate > 0 and device_rate > 0
        assert runtime.gpu_decode is False and runtime.decode_rates is None
        runtime.choose_decoder()  # not on CUDA: nothing to choose
        assert runtime.decode_rates is None
        runtime.gpu_decode = True  # as on CUDA with ENCODER_GPU_DECODE=auto
        runtime.choose_decoder()
        rates = runtime.decode_rates
        assert rates is not None and set(rates) == {"cpu_pool", "device"}
        assert runtime.gpu_decode is (rates["device"] > rates["cpu_pool"])
        forced = EncoderRuntime(
            tiny_settings(gpu_decode="on"), runtime.encoder, CollectorRegistry()
        )
        forced.gpu_decode = True
        forced.choose_decoder()  # "on" is timed, not measured away
        assert forced.gpu_decode is True and forced.decode_rates is not None
        forced.close()
    finally:
        runtime.close()


def test_a_device_decoder_that_fails_its_timing_leaves_the_cpu_pool(monkeypatch) -> None:
    import glimpse.encoder.gpu_decode as gpu_decode

    def broken(*_args: object) -> None:
        raise RuntimeError("nvJPEG could not be initialised")

    monkeypatch.setattr(gpu_decode, "gpu_prepare", broken)
    runtime = EncoderRuntime(tiny_settings(), load_encoder(tiny_settings()), CollectorRegistry())
    try:
        runtime.gpu_decode = True  # as on CUDA with ENCODER_GPU_DECODE=auto
        runtime.choose_decoder()  # logs, does not raise: the warm-up (and readiness) go on
        assert runtime.gpu_decode is False and runtime.decode_rates is None
    finally:
        runtime.close()


# -- one job per request (EncoderRuntime.embed_images) ---------------------------------------


@pytest.fixture
async def runtime(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[EncoderRuntime]:
    monkeypatch.setattr(service_module, "MAX_QUEUE", 6)
    monkeypatch.setattr(service_module, "MAX_WAIT_MS", 50.0)
    settings = tiny_settings(max_batch=8, decode_workers=3)
    rt = EncoderRuntime(settings, load_encoder(settings), CollectorRegistry())
    rt.batcher.start()
    try:
        yield rt
    finally:
        rt.close()


def _announced(rt: EncoderRuntime) -> int:
    return rt.batcher._announced  # noqa: SLF001 - what the model thread waits for


async def test_files_keep_their_slots_whichever_chunk_or_batch_they_took(
    runtime: EncoderRuntime, photos
) -> None:
    blobs = [jpeg_bytes(p) for p in photos.values()]
    alone = [await runtime.embed_images([b]) for b in blobs]
    files = [blobs[0], b"not an image", blobs[1], blobs[2], b"", blobs[3]]
    out = await runtime.embed_images(files)
    assert [type(r).__name__ for r in out] == [
        "ndarray", "GlimpseError", "ndarray", "ndarray", "GlimpseError", "ndarray"
    ]
    for got, blob in zip(out, files, strict=True):
        if blob in blobs:
            np.testing.assert_allclose(got, alone[blobs.index(blob)][0], atol=1e-5)
    assert await runtime.embed_images([]) == []
    assert _announced(runtime) == 0


async def test_a_full_queue_fails_the_request_and_leaves_nothing_announced(
    runtime: EncoderRuntime, photos, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    real_run = runtime._run_batch  # noqa: SLF001

    def slow_run(kind, payloads):  # noqa: ANN001, ANN202 - holds the model thread until released
        gate.wait(10)
        return real_run(kind, payloads)

    monkeypatch.setattr(runtime.batcher, "_runner", slow_run)
    blob = jpeg_bytes(photos["rocket"])
    with pytest.raises(GlimpseError) as caught:
        await runtime.embed_images([blob] * 20)  # MAX_QUEUE is 6 here
    assert caught.value.error_type == "overloaded"
    gate.set()
    for _ in range(200):
        if _announced(runtime) == 0 and not runtime.batcher._queue:  # noqa: SLF001
            break
        await asyncio.sleep(0.01)
    assert _announced(runtime) == 0
    (vector,) = await runtime.embed_images([blob])
    assert isinstance(vector, np.ndarray)


async def test_a_cancelled_request_withdraws_its_files(
    runtime: EncoderRuntime, photos, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    ran: list[int] = []
    real_run = runtime._run_batch  # noqa: SLF001

    def slow_run(kind, payloads):  # noqa: ANN001, ANN202
        gate.wait(10)
        ran.append(len(payloads))
        return real_run(kind, payloads)

    monkeypatch.setattr(runtime.batcher, "_runner", slow_run)
    blob = jpeg_bytes(photos["coffee"])
    task = asyncio.create_task(runtime.embed_images([blob] * 6))
    await asyncio.sleep(0.3)  # decoded and queued; the first batch holds the model thread
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.set()
    (vector,) = await runtime.embed_images([blob])
    assert isinstance(vector, np.ndarray)
    assert _announced(runtime) == 0
    # The batch already running finished; every other file of the cancelled request was skipped.
    assert sum(ran) <= 6 + 1 and ran[-1] == 1


async def test_a_failed_forward_pass_fails_the_request(
    runtime: EncoderRuntime, photos, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(kind, payloads):  # noqa: ANN001, ANN202
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(runtime.batcher, "_runner", broken)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        await runtime.embed_images([jpeg_bytes(photos["rocket"])] * 3)
    assert _announced(runtime) == 0
