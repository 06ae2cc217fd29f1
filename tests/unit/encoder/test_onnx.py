"""The encoder on ONNX Runtime (glimpse/encoder/onnx_runtime.py): the same vectors as torch,
the export cached and reused, damaged or stale entries rebuilt, an export failure served by
torch, and two processes starting on one cache at once."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from starlette.testclient import TestClient

from glimpse.encoder import model as model_module
from glimpse.encoder import onnx_runtime
from glimpse.encoder.config import Settings
from glimpse.encoder.images import ImageLimits, PixelRecipe, prepare_pixels
from glimpse.encoder.main import create_app
from glimpse.encoder.model import ClipEncoder, load_encoder
from glimpse.encoder.onnx_runtime import OnnxClipEncoder, load_serving_encoder
from tests.unit.encoder.conftest import jpeg_bytes, tiny_settings, wait_ready

TEXTS = ["a photo of an astronaut", "a cup of coffee", "", "a cat " * 40, "rocket launch, night"]


def _settings(cache: Path, **overrides: object) -> Settings:
    return tiny_settings(cache_dir=str(cache), **overrides)


def _count_exports(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = onnx_runtime.export_towers

    def counting(encoder: ClipEncoder, folder: Path, quantize: str) -> None:
        calls.append(str(folder))
        real(encoder, folder, quantize)

    monkeypatch.setattr(onnx_runtime, "export_towers", counting)
    return calls


def _entry(encoder: ClipEncoder) -> Path:
    assert isinstance(encoder, OnnxClipEncoder), encoder.runtime_note
    return Path(encoder.export_dir)


def _pixels(encoder: ClipEncoder, photos: dict[str, np.ndarray]) -> torch.Tensor:
    """The service's own path: JPEG bytes through prepare_pixels and the PixelRecipe."""
    recipe = PixelRecipe.of(encoder.preprocess) or encoder.preprocess
    limits = ImageLimits(20_000_000, 60_000_000)
    return torch.stack([
        prepare_pixels(jpeg_bytes(p), limits, encoder.image_size, recipe) for p in photos.values()
    ])


def _congruent(model: str, cache: Path, photos: dict[str, np.ndarray]) -> None:
    settings = _settings(cache, model=model)
    onnx = load_serving_encoder(settings)
    torch_enc = load_encoder(settings.model_copy(update={"runtime": "torch"}))
    assert onnx.runtime == "onnx" and torch_enc.runtime == "torch"
    pixels = _pixels(torch_enc, photos)
    for got, want in ((onnx.encode_pixels(pixels), torch_enc.encode_pixels(pixels)),
                      (onnx.encode_texts(TEXTS), torch_enc.encode_texts(TEXTS))):
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        assert np.min(np.sum(got * want, axis=1)) >= 0.999


def test_tiny_model_congruent(tmp_path: Path, photos: dict[str, np.ndarray]) -> None:
    _congruent("glimpse-tiny", tmp_path, photos)


@pytest.mark.slow
def test_vit_b32_congruent(tmp_path: Path, photos: dict[str, np.ndarray]) -> None:
    _congruent("ViT-B-32", tmp_path, photos)


def test_auto_is_onnx_on_cpu_and_torch_on_cuda() -> None:
    assert onnx_runtime.resolve_runtime("auto", "cpu") == "onnx"
    assert onnx_runtime.resolve_runtime("auto", "cuda") == "torch"
    assert onnx_runtime.resolve_runtime("torch", "cpu") == "torch"


def test_second_load_reuses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_exports(monkeypatch)
    first = _entry(load_serving_encoder(_settings(tmp_path)))
    second = _entry(load_serving_encoder(_settings(tmp_path)))
    assert first == second and len(calls) == 1
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temp folder left


def test_weights_are_part_of_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seeded = _entry(load_serving_encoder(_settings(tmp_path)))
    for module in (model_module, onnx_runtime):  # the weights, and the key that names them
        monkeypatch.setattr(module, "RANDOM_WEIGHTS_SEED", 1)
    other = _entry(load_serving_encoder(_settings(tmp_path)))
    assert seeded != other
    checkpoint = tmp_path / "w.pt"
    torch.save(load_encoder(_settings(tmp_path)).model.state_dict(), checkpoint)
    key = onnx_runtime.export_key(_settings(tmp_path, pretrained=str(checkpoint)), "none")
    assert key["weights"].startswith("sha256-")


@pytest.mark.parametrize("damage", ["truncate", "flip", "sidecar"])
def test_damaged_entry_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    entry = _entry(load_serving_encoder(_settings(tmp_path)))
    image = entry / "image.onnx"
    if damage == "truncate":
        image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    elif damage == "flip":
        data = bytearray(image.read_bytes())
        data[len(data) // 2] ^= 0xFF
        image.write_bytes(bytes(data))
    else:
        (entry / "export.json").write_text("{not json")
    calls = _count_exports(monkeypatch)
    again = load_serving_encoder(_settings(tmp_path))
    assert _entry(again) == entry and len(calls) == 1
    assert onnx_runtime._valid(entry, onnx_runtime.export_key(_settings(tmp_path), "none")) is None
    assert again.encode_texts(["a dog"]).shape == (1, 64)


def test_stale_versions_are_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = _entry(load_serving_encoder(_settings(tmp_path)))
    # A sidecar written for other versions in this very folder is not trusted...
    sidecar = json.loads((entry / "export.json").read_text())
    sidecar["key"]["onnxruntime"] = "0.0.1"
    (entry / "export.json").write_text(json.dumps(sidecar))
    calls = _count_exports(monkeypatch)
    assert _entry(load_serving_encoder(_settings(tmp_path))) == entry and len(calls) == 1
    # ...and a new onnxruntime (or torch, onnx, open_clip) makes a new entry.
    real = onnx_runtime._version
    monkeypatch.setattr(onnx_runtime, "_version",
                        lambda dist: "99.0" if dist == "onnxruntime" else real(dist))
    assert _entry(load_serving_encoder(_settings(tmp_path))) != entry and len(calls) == 2


def test_export_failure_falls_back_to_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def unsupported(encoder: ClipEncoder, folder: Path, quantize: str) -> None:
        raise RuntimeError("Exporting the operator 'aten::made_up' is not supported")

    monkeypatch.setattr(onnx_runtime, "export_towers", unsupported)
    with caplog.at_level(logging.WARNING, logger="glimpse.encoder.onnx"):
        encoder = load_serving_encoder(_settings(tmp_path))
    assert type(encoder) is ClipEncoder and encoder.runtime == "torch"
    assert encoder.runtime_note is not None and "aten::made_up" in encoder.runtime_note
    ours = [r.getMessage() for r in caplog.records if r.name == "glimpse.encoder.onnx"]
    assert len(ours) == 1 and "torch serves" in ours[0] and "aten::made_up" in ours[0]
    assert encoder.encode_texts(["a dog"]).shape == (1, 64)
    assert not any((tmp_path / "onnx").iterdir())  # nothing half-written is left to be served


def test_export_that_disagrees_with_torch_is_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = onnx_runtime.export_towers

    def other_weights(encoder: ClipEncoder, folder: Path, quantize: str) -> None:
        with monkeypatch.context() as patch:  # weights other than the served ones
            patch.setattr(model_module, "RANDOM_WEIGHTS_SEED", 5)
            other = load_encoder(_settings(tmp_path, runtime="torch"))
        real(other, folder, quantize)

    monkeypatch.setattr(onnx_runtime, "export_towers", other_weights)
    encoder = load_serving_encoder(_settings(tmp_path))
    assert encoder.runtime == "torch" and "disagrees" in (encoder.runtime_note or "")


def test_info_says_which_runtime_serves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for runtime in ("auto", "torch"):
        with TestClient(create_app(_settings(tmp_path, runtime=runtime))) as client:
            wait_ready(client)
            info = client.get("/v1/info").json()
        assert info["runtime"] == ("onnx" if runtime == "auto" else "torch")
        assert info["runtime_note"] is None

    monkeypatch.setattr(onnx_runtime, "load_sessions", _raise_export_error)
    with TestClient(create_app(_settings(tmp_path, runtime="onnx"))) as client:
        wait_ready(client)
        info = client.get("/v1/info").json()
    assert info["runtime"] == "torch" and "no operator" in info["runtime_note"]


def _raise_export_error(*_: object) -> None:
    raise onnx_runtime.ExportError("no operator for this model")


_STARTER = """
import sys
from glimpse.encoder.config import Settings
from glimpse.encoder.onnx_runtime import load_serving_encoder
enc = load_serving_encoder(Settings(model="glimpse-tiny", pretrained="none", device="cpu",
                                    cache_dir=sys.argv[1]))
assert enc.runtime == "onnx", enc.runtime_note
print(enc.encode_texts(["a dog"])[0][:4].tolist())
"""


def test_concurrent_starts_share_one_whole_entry(tmp_path: Path) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-c", _STARTER, str(tmp_path)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    assert outs[0][0] == outs[1][0]
    entries = list((tmp_path / "onnx").iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith(".")
    key = onnx_runtime.export_key(_settings(tmp_path), "none")
    assert onnx_runtime._valid(entries[0], key) is None


def test_int8_keeps_the_vectors(tmp_path: Path, photos: dict[str, np.ndarray]) -> None:
    settings = _settings(tmp_path, onnx_quantize="int8")
    int8 = load_serving_encoder(settings)
    fp32 = load_serving_encoder(_settings(tmp_path))
    assert _entry(int8) != _entry(fp32)  # its own cache entry
    assert (int8.precision, fp32.precision) == ("int8", "fp32")  # as /v1/info says
    pixels = _pixels(fp32, photos)
    assert np.min(np.sum(int8.encode_pixels(pixels) * fp32.encode_pixels(pixels), axis=1)) >= 0.99
    assert np.min(np.sum(int8.encode_texts(TEXTS) * fp32.encode_texts(TEXTS), axis=1)) >= 0.99


def _age(entry: Path, seconds: float) -> None:
    """Make ``entry`` look last loaded ``seconds`` ago."""
    then = time.time() - seconds
    os.utime(entry / "export.json", (then, then))


def test_a_new_export_prunes_idle_entries_of_other_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = onnx_runtime._version

    def onnxruntime_version(version: str | None) -> None:
        monkeypatch.setattr(onnx_runtime, "_version", lambda dist: (
            version if version and dist == "onnxruntime" else real(dist)))

    idle = _entry(load_serving_encoder(_settings(tmp_path)))
    int8 = _entry(load_serving_encoder(_settings(tmp_path, onnx_quantize="int8")))
    # A load marks its entry as in use: this one is loaded again, so it is recent once more.
    _age(idle, 3600)
    assert _entry(load_serving_encoder(_settings(tmp_path))) == idle
    assert time.time() - (idle / "export.json").stat().st_mtime < 60
    onnxruntime_version("98.0")
    in_use = _entry(load_serving_encoder(_settings(tmp_path)))  # as if another process had it
    for entry in (idle, int8):
        _age(entry, 2 * onnx_runtime.PRUNE_AFTER_S)
    assert {idle, in_use, int8} <= set((tmp_path / "onnx").iterdir())
    onnxruntime_version("99.0")
    newest = _entry(load_serving_encoder(_settings(tmp_path)))
    # Gone: the idle fp32 entry of another version. Kept: the newest, the one loaded a moment
    # ago (its process may still be reading it), and int8, another quantisation.
    assert sorted((tmp_path / "onnx").iterdir()) == sorted([newest, in_use, int8])
    onnxruntime_version(None)
    again = load_serving_encoder(_settings(tmp_path))  # the idle entry's versions: rebuilt
    assert _entry(again) == idle and again.encode_texts(["a dog"]).shape == (1, 64)
