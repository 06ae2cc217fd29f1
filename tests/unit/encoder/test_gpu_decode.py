"""The GPU JPEG path's logic, run on the CPU: torchvision's decode_jpeg and the tensor
resize/crop/normalise take a device argument, so everything but nvJPEG itself is exercised
here. (No GPU on the development machine or in CI: the CUDA run itself is untested.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glimpse.contracts.errors import GlimpseError
from glimpse.encoder.gpu_decode import gpu_prepare, supports_gpu_preprocessing
from glimpse.encoder.images import ImageLimits, PixelRecipe, decode_image
from glimpse.encoder.model import ClipEncoder, load_encoder
from tests.unit.encoder.conftest import jpeg_bytes, tiny_settings

LIMITS = ImageLimits(10_000_000, 10_000_000)


@pytest.fixture(scope="module")
def encoder() -> ClipEncoder:
    return load_encoder(tiny_settings())


def test_never_enabled_off_cuda(encoder: ClipEncoder) -> None:
    assert encoder.device == "cpu"
    assert supports_gpu_preprocessing(encoder) is False


def test_tensor_preprocessing_is_close_to_open_clips(encoder: ClipEncoder, photos) -> None:
    recipe = PixelRecipe.of(encoder.preprocess)
    assert recipe is not None
    blobs = [jpeg_bytes(p, quality=95) for p in photos.values()]
    prepared = gpu_prepare(blobs, encoder, LIMITS)
    for blob, tensor in zip(blobs, prepared, strict=True):
        assert isinstance(tensor, torch.Tensor) and tensor.shape == (3, 64, 64)
        # Full-size decode (no DCT scaling) so only the resize kernels differ (torch's bicubic
        # is a=-0.75, PIL's a=-0.5): close, not equal.
        reference = recipe(decode_image(blob, LIMITS, 10_000))
        assert float((tensor - reference).abs().mean()) < 0.05
        vectors = encoder.encode_pixels(torch.stack([tensor, reference]))
        assert float(vectors[0] @ vectors[1]) > 0.99


def test_a_stream_the_decoder_refuses_gets_its_own_error(encoder: ClipEncoder, photos) -> None:
    good = jpeg_bytes(photos["rocket"])
    prepared = gpu_prepare([good, good[: len(good) // 3], good], encoder, LIMITS)
    assert isinstance(prepared[0], torch.Tensor) and isinstance(prepared[2], torch.Tensor)
    assert isinstance(prepared[1], GlimpseError) and prepared[1].error_type == "invalid_image"
    np.testing.assert_array_equal(prepared[0].numpy(), prepared[2].numpy())


def test_a_batch_gives_what_each_image_gives_alone(encoder: ClipEncoder, photos) -> None:
    # The constants are cached per device: a batch must not change what an image gives.
    blobs = [jpeg_bytes(p, quality=90) for p in photos.values()]
    blobs += blobs[:2]
    together = gpu_prepare(blobs, encoder, LIMITS)
    for blob, tensor in zip(blobs, together, strict=True):
        (alone,) = gpu_prepare([blob], encoder, LIMITS)
        assert isinstance(tensor, torch.Tensor) and isinstance(alone, torch.Tensor)
        assert torch.equal(tensor, alone)


def test_same_sized_images_are_resized_together_as_each_alone(
    encoder: ClipEncoder, photos, monkeypatch: pytest.MonkeyPatch
) -> None:
    from glimpse.encoder import gpu_decode

    astronaut = photos["astronaut"]
    # Six different 200x150 crops (one shape group) around two photos of other sizes.
    crops = [jpeg_bytes(astronaut[y:y + 150, x:x + 200]) for y, x in
             ((0, 0), (40, 10), (100, 200), (300, 300), (10, 250), (200, 50))]
    blobs = [jpeg_bytes(photos["rocket"])] + crops[:3] + [jpeg_bytes(photos["coffee"])] + crops[3:]
    alone = [gpu_prepare([b], encoder, LIMITS)[0] for b in blobs]
    for max_pixels in (gpu_decode.MAX_GROUP_PIXELS, 2 * 200 * 150):  # one group, then pairs
        monkeypatch.setattr(gpu_decode, "MAX_GROUP_PIXELS", max_pixels)
        together = gpu_prepare(blobs, encoder, LIMITS)
        for a, t in zip(alone, together, strict=True):
            assert isinstance(a, torch.Tensor) and isinstance(t, torch.Tensor)
            torch.testing.assert_close(t, a, rtol=0, atol=1e-5)
    assert len({tuple(t.shape) for t in together}) == 1  # type: ignore[union-attr]
