"""Settings of the encoder service, read from ``ENCODER_*`` environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from glimpse.encoder.presets import PRESETS
from glimpse.imaging import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_PIXELS

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "fp16", "bf16"]
GpuDecode = Literal["auto", "on", "off"]
Runtime = Literal["auto", "torch", "onnx"]
OnnxQuantize = Literal["none", "int8"]


class Settings(BaseSettings):
    """Every knob of the encoder; each default works for a local run."""

    model_config = SettingsConfigDict(env_prefix="ENCODER_", env_nested_delimiter="__")

    model: str = Field(
        default="ViT-B-32",
        description="A preset (" + ", ".join(PRESETS) + ": model, weights and dimension "
        "together; glimpse/encoder/presets.py) or any open_clip model name; 'glimpse-tiny' is "
        "the tiny test model shipped here.",
    )
    pretrained: str = Field(
        default="laion2b_s34b_b79k",
        description="Weights: an open_clip tag (fetched from the hub once, then cached), "
        "a local checkpoint path, or 'none' for seeded random weights. With a preset, unset "
        "means the preset's weights, and a value set here wins.",
    )
    cache_dir: str | None = Field(
        default=None, description="Where hub weights are cached (open_clip's default if unset)."
    )
    device: Device = Field(default="auto", description="auto (cuda when present), cpu or cuda.")
    precision: Precision = Field(
        default="auto", description="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16."
    )
    max_batch: int = Field(default=64, ge=1, description="Most inputs in one forward pass.")
    decode_workers: int = Field(
        default=0, ge=0, description="Image decoding threads; 0 picks from the CPU count."
    )
    runtime: Runtime = Field(
        default="auto",
        description="What runs the model: auto (ONNX Runtime on a CPU, torch on CUDA), torch, "
        "or onnx (the model exported once into the cache folder; torch if the export fails).",
    )
    onnx_quantize: OnnxQuantize = Field(
        default="none",
        description="int8: ONNX Runtime runs int8 dynamically quantised weights (none: fp32, "
        "the default: int8 is faster but its relevance cutoff keeps fewer near-duplicates, "
        "bench/results/onnx_near_duplicates.csv).",
    )
    gpu_decode: GpuDecode = Field(
        default="auto",
        description="JPEG decoding on the GPU (torchvision.io.decode_jpeg): auto = on CUDA, "
        "whichever of the GPU decoder and the CPU pool is measured faster at warm-up (on when "
        "warm-up is off); on; off.",
    )
    text_cache_size: int = Field(
        default=4096, ge=0, description="Text embeddings kept in the LRU cache (0 disables)."
    )
    max_file_bytes: int = Field(
        default=DEFAULT_MAX_FILE_BYTES,
        ge=1,
        description="Largest accepted image file in bytes; the gateway reads it from /v1/info.",
    )
    max_pixels: int = Field(
        default=DEFAULT_MAX_PIXELS,
        ge=1,
        description="Largest accepted image in pixels (width x height), read from the header; "
        "the gateway reads it from /v1/info.",
    )

    @model_validator(mode="after")
    def _apply_preset(self) -> Settings:
        # A preset name becomes its open_clip model here, so everything downstream (the ONNX
        # export, /v1/info, the index) sees the real model, and explicit weights still win.
        preset = PRESETS.get(self.model)
        if preset is not None:
            self.model = preset.model
            if "pretrained" not in self.model_fields_set:
                self.pretrained = preset.pretrained
        return self
