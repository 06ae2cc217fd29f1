"""Batched JPEG decoding and preprocessing on the GPU (nvJPEG via torchvision.io.decode_jpeg).

Plain upright baseline JPEGs can skip the CPU pool and be decoded, resized and normalised on
the device inside the model thread, same-sized images resized together. Whether that is faster
depends on the host (on an H200 with 16 cores it timed 7,700-8,900 images/s against 1,050-1,280
for the CPU pool, docs/encoder.md), so with ENCODER_GPU_DECODE=auto the service times both
decoders at warm-up and keeps the faster (``EncoderRuntime.choose_decoder``).

Not on this project's CI or development machines (no GPU there): the tests run this module's
code with torchvision's CPU decoder. On a GPU, bench/gpu_check.py compares it with the CPU
path (run once on an H200, 2026-11-27: cosine >= 0.99997 on the sample photos, docs/encoder.md).
It is only reachable when the device is CUDA (``EncoderRuntime`` checks).
Any JPEG nvJPEG refuses falls back to the CPU decoder, one image at a time.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torchvision.transforms import CenterCrop, InterpolationMode, Normalize, Resize

from glimpse.encoder.images import ImageBytes, ImageLimits, prepare_pixels
from glimpse.encoder.model import ClipEncoder


def supports_gpu_preprocessing(encoder: ClipEncoder) -> bool:
    """True when the model's own preprocessing is Resize(shortest side) + CenterCrop +
    Normalize, which this module reproduces on tensors; other resize modes stay on the CPU."""
    transforms = getattr(encoder.preprocess, "transforms", None)
    if not transforms or encoder.device != "cuda":
        return False
    resize = transforms[0]
    return (
        isinstance(resize, Resize)
        and isinstance(resize.size, int | list | tuple)
        and (isinstance(resize.size, int) or len(resize.size) == 1)
        and resize.interpolation == InterpolationMode.BICUBIC
        and any(isinstance(t, CenterCrop) for t in transforms)
        and any(isinstance(t, Normalize) for t in transforms)
    )


@functools.lru_cache(maxsize=8)
def _mean_std(
    device: str, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalisation constants on the device, made once: building them per image was a
    blocking host-to-device copy per image, which serialised the CPU and the GPU."""
    return (
        torch.tensor(mean, dtype=torch.float32, device=device).view(3, 1, 1),
        torch.tensor(std, dtype=torch.float32, device=device).view(3, 1, 1),
    )


# At most this many pixels (N x H x W) are resized in one call: the bicubic resize works in
# float32, so a group of camera-size photos would otherwise need gigabytes at once.
MAX_GROUP_PIXELS = 64_000_000


def _resize_crop_normalize(images: torch.Tensor, encoder: ClipEncoder) -> torch.Tensor:
    """(N, 3, H, W) uint8 on the device to model inputs (N, 3, S, S), as open_clip does on
    PIL. One call per group of same-sized images: per image, the dozen small kernels of each
    step cost more host time than the decode itself (0.8-0.9 ms per image on an H200)."""
    from torchvision.transforms.v2 import functional as tvf

    size = encoder.image_size
    resized = tvf.resize(
        images, [size], interpolation=InterpolationMode.BICUBIC, antialias=True
    )
    cropped = tvf.center_crop(resized, [size, size])
    mean, std = _mean_std(str(images.device), tuple(encoder.mean), tuple(encoder.std))
    return cropped.float().div_(255.0).sub_(mean).div_(std)


Slotted = list[tuple[int, torch.Tensor]]


def _same_size_groups(images: Slotted) -> list[Slotted]:
    """``(slot, image)`` pairs grouped by image shape, each group cut to MAX_GROUP_PIXELS."""
    by_shape: dict[tuple[int, ...], Slotted] = {}
    for slot, image in images:
        by_shape.setdefault(tuple(image.shape), []).append((slot, image))
    groups = []
    for shape, members in by_shape.items():
        per_group = max(1, MAX_GROUP_PIXELS // max(1, shape[-1] * shape[-2]))
        groups += [members[i:i + per_group] for i in range(0, len(members), per_group)]
    return groups


@dataclass
class PreparedBatch:
    """Model inputs of a list of JPEGs, as one tensor: row ``r`` of ``pixels`` is input
    ``rows[r]``; ``errors`` holds the inputs that could not be used (by input index)."""

    pixels: torch.Tensor | None
    rows: list[int]
    errors: dict[int, BaseException] = field(default_factory=dict)
    # The host buffer the JPEG streams were read from: whoever runs the batch keeps it until
    # the next batch, so a pinned block is not handed out again while nvJPEG may still copy
    # from it (torch's pinned-memory cache does not see nvJPEG's use of it).
    staging: torch.Tensor | None = None


def gpu_prepare_batch(
    jpegs: Sequence[ImageBytes], encoder: ClipEncoder, limits: ImageLimits
) -> PreparedBatch:
    """Decode, resize, crop and normalise ``jpegs`` on the encoder's device, in one tensor.

    The host's work is per batch where it can be: the JPEG bytes are packed into one buffer
    (pinned on CUDA, so nvJPEG's copies to the device run at full speed without a staging
    copy) and each stream is a view of it; same-sized images are resized as one group.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    staging, datas = _packed_streams(jpegs, pin=encoder.device == "cuda")
    decoded: list[Any]
    try:
        decoded = list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=encoder.device))
    except RuntimeError:
        # One bad stream fails the whole batched call: decode one by one to find it.
        decoded = []
        for data in datas:
            try:
                decoded.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=encoder.device))
            except RuntimeError as exc:
                decoded.append(exc)
    images = [(i, image) for i, image in enumerate(decoded) if isinstance(image, torch.Tensor)]
    pieces: list[torch.Tensor] = []
    rows: list[int] = []
    for group in _same_size_groups(images):
        pieces.append(_resize_crop_normalize(torch.stack([image for _, image in group]), encoder))
        rows += [slot for slot, _ in group]
    errors: dict[int, BaseException] = {}
    fallback: list[torch.Tensor] = []
    for slot, (raw, image) in enumerate(zip(jpegs, decoded, strict=True)):
        if isinstance(image, torch.Tensor):
            continue
        try:  # the CPU decoder is more lenient (and names the problem if it is not)
            fallback.append(prepare_pixels(raw, limits, encoder.image_size, encoder.preprocess))
            rows.append(slot)
        except Exception as exc:  # noqa: BLE001 - reported in the file's slot
            errors[slot] = exc
    if fallback:
        pieces.append(torch.stack(fallback).to(encoder.device, non_blocking=True))
    pixels = None if not pieces else pieces[0] if len(pieces) == 1 else torch.cat(pieces)
    return PreparedBatch(pixels, rows, errors, staging)


def _packed_streams(
    jpegs: Sequence[ImageBytes], *, pin: bool
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The JPEG streams as uint8 views of one host buffer: one allocation and one copy per
    batch instead of a bytearray and a tensor per image."""
    sizes = [len(data) for data in jpegs]
    buffer = torch.empty(sum(sizes), dtype=torch.uint8, pin_memory=pin)
    flat = buffer.numpy()
    views = []
    at = 0
    for data, size in zip(jpegs, sizes, strict=True):
        flat[at:at + size] = memoryview(data)
        views.append(buffer[at:at + size])
        at += size
    return buffer, views


def gpu_prepare(
    jpegs: Sequence[ImageBytes], encoder: ClipEncoder, limits: ImageLimits
) -> list[torch.Tensor | BaseException]:
    """Model inputs on the device for JPEG bytes, or the error of each one that fails (the
    per-image view of :func:`gpu_prepare_batch`)."""
    batch = gpu_prepare_batch(jpegs, encoder, limits)
    out: list[torch.Tensor | BaseException | None] = [None] * len(jpegs)
    for row, slot in enumerate(batch.rows):
        assert batch.pixels is not None
        out[slot] = batch.pixels[row]
    for slot, error in batch.errors.items():
        out[slot] = error
    done = [x for x in out if x is not None]
    if len(done) != len(out):
        raise RuntimeError("gpu_prepare left a file without an answer")
    return done
