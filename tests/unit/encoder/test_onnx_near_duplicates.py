"""int8 keeps near-duplicate retrieval: on bench_relevance.py's image set (sample-photo tiles
and faces, transformed copies), every copy that ONNX Runtime fp32 ranks first for its query,
int8 ranks first too. The full figures, both models: bench/bench_onnx.py --near-duplicates."""

from __future__ import annotations

from pathlib import Path

from bench.bench_onnx import embed_photos, near_duplicate_images, retrieval
from glimpse.encoder.onnx_runtime import load_serving_encoder
from tests.unit.encoder.conftest import tiny_settings


def test_int8_finds_every_copy_fp32_finds(tmp_path: Path) -> None:
    images, relevant, n_base = near_duplicate_images(queries=60)
    found = {}
    for quantize in ("none", "int8"):
        encoder = load_serving_encoder(tiny_settings(cache_dir=str(tmp_path), runtime="onnx",
                                                     onnx_quantize=quantize))
        assert encoder.runtime == "onnx", encoder.runtime_note
        found[quantize] = retrieval(embed_photos(encoder, images), relevant, n_base)["found"]
    assert len(found["none"]) >= 20  # the set has copies the tiny model finds
    assert found["none"] <= found["int8"], f"int8 loses queries {found['none'] - found['int8']}"
