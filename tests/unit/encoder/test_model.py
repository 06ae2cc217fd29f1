"""Loading the model (seeded random weights, local checkpoints, hub tags offline) and the
forward passes: dimension, unit norm, batch == one by one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glimpse.encoder import model as model_module
from glimpse.encoder.images import ImageLimits, prepare_pixels
from glimpse.encoder.model import ClipEncoder, ModelLoadError, load_encoder
from tests.unit.encoder.conftest import TINY_DIM, jpeg_bytes, tiny_settings


@pytest.fixture(scope="module")
def encoder() -> ClipEncoder:
    return load_encoder(tiny_settings())


def _pixels(encoder: ClipEncoder, photos: dict[str, np.ndarray]) -> torch.Tensor:
    limits = ImageLimits(10_000_000, 10_000_000)
    return torch.stack(
        [
            prepare_pixels(jpeg_bytes(p), limits, encoder.image_size, encoder.preprocess)
            for p in photos.values()
        ]
    )


def test_tiny_model_shape_and_defaults(encoder: ClipEncoder) -> None:
    assert encoder.dim == TINY_DIM
    assert encoder.device == "cpu" and encoder.precision == "fp32"
    assert encoder.image_size == 64


def test_batch_equals_one_by_one_with_unit_norms(encoder: ClipEncoder, photos) -> None:
    texts = ["a cat", "an astronaut in a white suit", "a cup of coffee", "a rocket", "x" * 300]
    batch = encoder.encode_texts(texts)
    single = np.vstack([encoder.encode_texts([t]) for t in texts])
    assert batch.dtype == np.float32 and batch.shape == (len(texts), TINY_DIM)
    assert np.abs(batch - single).max() <= 1e-4
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)

    pixels = _pixels(encoder, photos)
    batch = encoder.encode_pixels(pixels)
    single = np.vstack([encoder.encode_pixels(pixels[i : i + 1]) for i in range(len(pixels))])
    assert batch.dtype == np.float32 and batch.shape == (len(pixels), TINY_DIM)
    assert np.abs(batch - single).max() <= 1e-4
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(single, axis=1), 1.0, atol=1e-5)


def test_random_weights_are_seeded(encoder: ClipEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    again = load_encoder(tiny_settings())
    monkeypatch.setattr(model_module, "RANDOM_WEIGHTS_SEED", 1)
    other = load_encoder(tiny_settings())
    texts = ["same seed, same vectors"]
    np.testing.assert_array_equal(encoder.encode_texts(texts), again.encode_texts(texts))
    assert not np.allclose(encoder.encode_texts(texts), other.encode_texts(texts))


def test_local_checkpoint_is_loaded(
    encoder: ClipEncoder, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "tiny.pt"
    with monkeypatch.context() as patch:  # weights other than the default seed's
        patch.setattr(model_module, "RANDOM_WEIGHTS_SEED", 7)
        torch.save(load_encoder(tiny_settings()).model.state_dict(), path)
        seeded = load_encoder(tiny_settings())
    loaded = load_encoder(tiny_settings(pretrained=str(path)))
    texts = ["weights from a file"]
    np.testing.assert_allclose(loaded.encode_texts(texts), seeded.encode_texts(texts), atol=1e-6)


@pytest.mark.parametrize(
    ("overrides", "must_say"),
    [
        ({"pretrained": "/no/such/dir/ckpt.pt"}, ["/no/such/dir/ckpt.pt", "ENCODER_PRETRAINED"]),
        ({"pretrained": "laion2b_s34b_b79k"}, ["glimpse-tiny", "laion2b_s34b_b79k", "none"]),
        # HF_HUB_OFFLINE=1 (tests/conftest.py): the hub is not asked, the error says what to do.
        (
            {"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"},
            ["ViT-B-32", "laion2b_s34b_b79k", "local path", "ENCODER_PRETRAINED=none"],
        ),
        ({"model": "no-such-model"}, ["no-such-model", "ENCODER_MODEL"]),
    ],
    ids=["missing-file", "unknown-tag", "hub-offline", "unknown-model"],
)
def test_weights_that_cannot_be_had_give_a_clear_error(overrides, must_say, tmp_path) -> None:
    settings = tiny_settings(cache_dir=str(tmp_path), **overrides)
    with pytest.raises(ModelLoadError) as info:
        load_encoder(settings)
    for words in must_say:
        assert words in str(info.value)


def test_a_corrupt_checkpoint_names_the_file(tmp_path) -> None:
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="broken.pt"):
        load_encoder(tiny_settings(pretrained=str(path)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU answer")
def test_cuda_requested_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(ModelLoadError, match="ENCODER_DEVICE"):
        load_encoder(tiny_settings(device="cuda"))
