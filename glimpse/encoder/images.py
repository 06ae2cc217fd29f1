"""Image bytes to model input: the shared decoding (glimpse/imaging.py: caps read from the
header, reduced-size decoding, EXIF orientation, any mode to RGB), then the model's
preprocessing, and the checks that send a JPEG to the device decoder.

These functions block (PIL decoding); the service runs them in its decode thread pool, beside
the model thread, never on the event loop. PIL releases the GIL while it decodes and resizes,
so the pool really runs in parallel with the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from glimpse.encoder.jpeg_header import JpegHeader, scan_plain_jpeg
from glimpse.imaging import (
    ALLOWED_FORMATS,
    MAX_ASPECT_RATIO,
    ImageBytes,
    ImageLimits,
    decode_image,
    open_checked,
    orientation,
    to_rgb,
)

__all__ = [
    "ALLOWED_FORMATS",
    "MAX_ASPECT_RATIO",
    "ImageBytes",
    "ImageLimits",
    "PixelRecipe",
    "decode_image",
    "ends_with_eoi",
    "gpu_decodable_jpeg",
    "open_checked",
    "plain_jpeg",
    "prepare_pixels",
    "to_rgb",
]


@dataclass(frozen=True)
class PixelRecipe:
    """open_clip's usual inference preprocessing (Resize of the shortest side, bicubic;
    CenterCrop; ToTensor; Normalize), redone with PIL and numpy.

    The decode threads then never call torch: torch's element-wise ops on a 3x224x224 image
    would start an OpenMP thread team per decode thread, competing with the model's own
    intra-op threads for the same cores.
    """

    size: int
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def of(cls, preprocess: Callable[[Image.Image], torch.Tensor]) -> PixelRecipe | None:
        """The recipe when ``preprocess`` is exactly that pipeline, else None."""
        from open_clip.transform import MaybeConvertMode
        from torchvision import transforms as T

        steps = list(getattr(preprocess, "transforms", []))
        steps = [s for s in steps if not isinstance(s, MaybeConvertMode)]
        if len(steps) != 4:
            return None
        resize, crop, to_tensor, normalize = steps
        if not (
            type(resize) is T.Resize
            and type(crop) is T.CenterCrop
            and isinstance(to_tensor, T.ToTensor)
            and type(normalize) is T.Normalize
        ):
            return None
        size = resize.size if isinstance(resize.size, int) else None
        if isinstance(resize.size, list | tuple) and len(resize.size) == 1:
            size = int(resize.size[0])
        if (
            size is None
            or resize.max_size is not None
            or resize.interpolation != T.InterpolationMode.BICUBIC
            or tuple(crop.size) != (size, size)
        ):
            return None
        return cls(
            size=size,
            mean=np.asarray(normalize.mean, dtype=np.float32),
            std=np.asarray(normalize.std, dtype=np.float32),
        )

    def __call__(self, img: Image.Image) -> torch.Tensor:
        size = self.size
        width, height = img.size
        # Same arithmetic as torchvision's Resize(int) and CenterCrop on a PIL image.
        if width <= height:
            new_w, new_h = size, int(size * height / width)
        else:
            new_w, new_h = int(size * width / height), size
        if (new_w, new_h) != (width, height):
            img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
        top = int(round((new_h - size) / 2.0))
        left = int(round((new_w - size) / 2.0))
        img = img.crop((left, top, left + size, top + size))
        pixels = np.asarray(img, dtype=np.float32) / np.float32(255.0)
        pixels = (pixels - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def prepare_pixels(
    data: ImageBytes,
    limits: ImageLimits,
    min_side: int,
    preprocess: Callable[[Image.Image], torch.Tensor],
) -> torch.Tensor:
    """Bytes to the model's input tensor (3, S, S) with the model's preprocessing (or the
    equivalent PixelRecipe)."""
    img = decode_image(data, limits, min_side)
    return preprocess(img)


def ends_with_eoi(data: ImageBytes) -> bool:
    """The stream ends with the JPEG end marker, zero padding after it allowed. (Slices, which
    a memoryview has too, and a copy of the data only when it is padded.)"""
    if data[-2:] == b"\xff\xd9":
        return True
    return data[-1:] == b"\x00" and bytes(data).rstrip(b"\x00").endswith(b"\xff\xd9")


def plain_jpeg(data: ImageBytes, limits: ImageLimits) -> JpegHeader | None:
    """The header of a JPEG the device decoder can take as is, read without Pillow; None when
    it is not one or the quick reader is not sure (gpu_decodable_jpeg then asks Pillow)."""
    header = scan_plain_jpeg(data)
    ratio = limits.max_aspect_ratio
    if (
        header is not None
        and (limits.max_bytes is None or len(data) <= limits.max_bytes)
        and header.width * header.height <= limits.max_pixels
        and (ratio is None or max(header.width, header.height) <= ratio * min(header.width,
                                                                             header.height))
        # See gpu_decodable_jpeg: only a stream that ends with its end marker is complete.
        and ends_with_eoi(data)
    ):
        return header
    return None


def gpu_decodable_jpeg(data: ImageBytes, limits: ImageLimits) -> JpegHeader | None:
    """Header of a JPEG that nvJPEG can decode as is (baseline, RGB or grey, upright), else None.

    Raises the same errors as :func:`open_checked` for bytes that are no acceptable image, so
    a bad file is rejected before it reaches the GPU batch.
    """
    header = plain_jpeg(data, limits)
    if header is not None:
        return header
    # Anything the quick reader does not vouch for is Pillow's to judge (and to name).
    img = open_checked(data, limits)
    try:
        if img.format != "JPEG" or img.mode not in ("RGB", "L"):
            return None
        # nvJPEG decodes a truncated stream without an error (seen on an H200: a picture came
        # back), where Pillow refuses it. Entropy-coded data never holds FF D9, so a
        # stream that ends with it is complete; anything else (truncated, or data appended after
        # the image as motion photos do) goes to the CPU decoder, which decides.
        if not ends_with_eoi(data):
            return None
        if img.info.get("progressive") or img.info.get("progression"):
            return None
        if orientation(img) != 1:
            return None
        width, height = img.size
        return JpegHeader(width=width, height=height)
    finally:
        img.close()
