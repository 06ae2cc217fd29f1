"""The text tower's CUDA-graph path (text_graphs.py) on a machine without a GPU.

Capturing needs CUDA, so these tests run the same padded buffers with an eager "replay"
(``TextGraphs.eager_for_tests``) and the real tiny model: what they check is the bucket choice,
the copy into a padded batch whose other rows hold stale tokens, the slicing of the output, and
every way the encoder falls back to the eager model. bench/gpu_check.py checks the real graphs
against the eager model on a GPU.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

from glimpse.encoder import text_graphs
from glimpse.encoder.model import ClipEncoder, load_encoder
from glimpse.encoder.text_graphs import TextGraphs, buckets_up_to, probe_agrees, try_capture
from tests.unit.encoder.conftest import tiny_settings

TEXTS = ["a cat", "an astronaut in a white suit", "a cup of coffee", "a rocket", "x" * 300,
         "", "a red bicycle against a brick wall"]


@pytest.fixture(scope="module")
def encoder() -> ClipEncoder:
    return load_encoder(tiny_settings())


def padded(encoder: ClipEncoder, buckets: tuple[int, ...] = (1, 2, 4, 8)) -> TextGraphs:
    context = int(encoder.tokenize(["probe"]).shape[1])
    return TextGraphs.eager_for_tests(encoder.model.encode_text, context, "cpu", buckets)


def test_buckets_are_powers_of_two_up_to_max_batch_capped_at_64() -> None:
    assert buckets_up_to(1) == (1,)
    assert buckets_up_to(0) == (1,)
    assert buckets_up_to(5) == (1, 2, 4, 8)
    assert buckets_up_to(64) == (1, 2, 4, 8, 16, 32, 64)
    assert buckets_up_to(1000) == (1, 2, 4, 8, 16, 32, 64)


def test_bucket_for_picks_the_smallest_that_holds_the_batch(encoder: ClipEncoder) -> None:
    graphs = padded(encoder)
    assert [graphs.bucket_for(n) for n in (1, 2, 3, 4, 5, 8, 9)] == [1, 2, 4, 4, 8, 8, None]


def test_padded_runs_equal_the_eager_model_whatever_the_stale_rows_hold(
    encoder: ClipEncoder,
) -> None:
    graphs = padded(encoder)
    tokens = encoder.tokenize(TEXTS)
    with torch.inference_mode():
        eager = encoder.model.encode_text(tokens).numpy()
    # All 7 rows (bucket 8), then 3 rows into the same bucket's leftovers, then 5 (bucket 8,
    # rows 5..7 stale from the first call), then single rows.
    for rows in (slice(0, 7), slice(0, 3), slice(2, 7), slice(4, 5), slice(6, 7)):
        out = graphs.run(tokens[rows])
        assert out is not None
        np.testing.assert_allclose(out.numpy(), eager[rows], rtol=1e-5, atol=1e-5)


def test_too_large_or_odd_shaped_batches_are_left_to_the_eager_model(
    encoder: ClipEncoder,
) -> None:
    graphs = padded(encoder, (1, 2))
    tokens = encoder.tokenize(TEXTS[:3])
    assert graphs.run(tokens) is None
    assert graphs.run(tokens[:2, :-1]) is None
    assert graphs.run(tokens[:0]) is None


def test_the_encoder_gives_the_same_vectors_with_and_without_graphs(
    encoder: ClipEncoder,
) -> None:
    with_graphs = dataclasses.replace(encoder, text_graphs=padded(encoder, (1, 2, 4)))
    eager = encoder.encode_texts(TEXTS)
    # 7 texts exceed the largest bucket (4): eager; 1 and 3 texts replay.
    np.testing.assert_allclose(with_graphs.encode_texts(TEXTS), eager, atol=1e-6)
    np.testing.assert_allclose(with_graphs.encode_texts(TEXTS[:3]), eager[:3], atol=1e-6)
    np.testing.assert_allclose(with_graphs.encode_texts(TEXTS[5:6]), eager[5:6], atol=1e-6)
    norms = np.linalg.norm(with_graphs.encode_texts(TEXTS[:3]), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_no_graphs_on_the_cpu(encoder: ClipEncoder) -> None:
    assert encoder.text_graphs is None


def test_capture_without_cuda_falls_back_to_eager_with_a_warning(
    encoder: ClipEncoder, caplog: pytest.LogCaptureFixture
) -> None:
    tokens = encoder.tokenize(TEXTS[:2])
    with caplog.at_level(logging.WARNING, "glimpse.encoder.text_graphs"):
        assert try_capture(encoder.model.encode_text, tokens, "cpu", 8) is None
    assert "capture of the text tower failed" in caplog.text


def test_graphs_that_disagree_with_the_eager_model_are_not_used(
    encoder: ClipEncoder, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = int(encoder.tokenize(["probe"]).shape[1])

    def wrong(tokens: torch.Tensor) -> torch.Tensor:
        return -encoder.model.encode_text(tokens)

    def capture_wrong(cls, encode_text, context_length, device, buckets, warmup=3):  # noqa: ANN001
        return TextGraphs.eager_for_tests(wrong, context_length, device, buckets)

    monkeypatch.setattr(TextGraphs, "capture", classmethod(capture_wrong))
    tokens = encoder.tokenize(TEXTS[:3])
    right = TextGraphs.eager_for_tests(encoder.model.encode_text, context, "cpu", (1, 2, 4))
    assert probe_agrees(right, encoder.model.encode_text, tokens) > 0.9999
    with caplog.at_level(logging.WARNING, "glimpse.encoder.text_graphs"):
        assert try_capture(encoder.model.encode_text, tokens, "cpu", 4) is None
    assert "disagree" in caplog.text
    assert text_graphs.MIN_PROBE_COSINE > 0.99
