"""Image bytes to model input: format allowlist, size caps read from the header before any
decoding, EXIF orientation, any mode to RGB, reduced-size JPEG decoding.

These functions block (PIL decoding); the service runs them in its decode thread pool, beside
the model thread, never on the event loop. PIL releases the GIL while it decodes and resizes,
so the pool really runs in parallel with the model.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from glimpse.contracts.errors import ErrorType, GlimpseError
from glimpse.encoder.jpeg_header import JpegHeader, scan_plain_jpeg

# Formats a photo collection holds. Everything else (EPS, PSD, ICO, PPM, ...) is refused: a
# smaller parser surface, and EPS would even hand the bytes to Ghostscript.
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

_EXIF_ORIENTATION = 0x0112
_WHITE = (255, 255, 255)

# The longest side over the shortest. The model resizes the shortest side to its input size, so
# the resize costs this many times the model input at most, where a 30000x1 strip would cost
# gigabytes; a 360-degree panorama is about 8:1.
MAX_ASPECT_RATIO = 32

# What each EXIF orientation needs to stand upright (ImageOps.exif_transpose's table, applied
# here without rewriting the EXIF block, which raises on mistyped tags).
_UPRIGHT: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Modes Image.reduce takes; the others are converted to the nearest one first.
_REDUCIBLE = frozenset(("L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I", "F"))


# The bytes of one uploaded file: a read-only memoryview of the request body (parse_form's
# file_views; the body a bytearray when the server read it straight into one buffer,
# direct_body.py), bytes or a bytearray elsewhere (calibration images, tests).
ImageBytes: TypeAlias = bytes | bytearray | memoryview


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int


def _reject(error_type: ErrorType, message: str) -> GlimpseError:
    return GlimpseError(error_type, message)


def _identify_other_format(data: ImageBytes) -> str | None:
    """The name of a format PIL knows but we do not accept, from the header only."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return str(img.format)
    except Exception:  # noqa: BLE001 - any failure means "not an image we can name"
        return None


def open_checked(data: ImageBytes, limits: ImageLimits) -> Image.Image:
    """Open ``data`` lazily (header only) and enforce the allowlist and both size caps."""
    if not data:
        raise _reject(ErrorType.invalid_image, "The file is empty (0 bytes).")
    if len(data) > limits.max_bytes:
        raise _reject(
            ErrorType.payload_too_large,
            f"The file has {len(data)} bytes; the limit is {limits.max_bytes} bytes per image.",
        )
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # PIL's own bomb guard fires from the header; our cap is lower, so this is ours too.
        raise _reject(
            ErrorType.image_too_large,
            f"The image declares more pixels than allowed ({limits.max_pixels}): {exc}",
        ) from exc
    except UnidentifiedImageError as exc:
        other = _identify_other_format(data)
        if other is not None:
            raise _reject(
                ErrorType.unsupported_media_type,
                f"Images in {other} format are not accepted; send one of "
                f"{', '.join(ALLOWED_FORMATS)}.",
            ) from exc
        raise _reject(
            ErrorType.invalid_image,
            f"The file is not a recognisable image (accepted: {', '.join(ALLOWED_FORMATS)}).",
        ) from exc
    except Exception as exc:  # noqa: BLE001 - any plugin's failure on a header is the file's
        raise _reject(
            ErrorType.invalid_image,
            f"The image header is corrupt: {type(exc).__name__}: {exc}",
        ) from exc
    width, height = img.size
    if width <= 0 or height <= 0:
        raise _reject(ErrorType.invalid_image, f"The image declares a size of {width}x{height}.")
    if width * height > limits.max_pixels:
        raise _reject(
            ErrorType.image_too_large,
            f"The image is {width}x{height} = {width * height} pixels; the limit is "
            f"{limits.max_pixels} pixels.",
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise _reject(
            ErrorType.invalid_image,
            f"The image is {width}x{height}: its long side is more than {MAX_ASPECT_RATIO} "
            "times its short side, the most accepted.",
        )
    return img


def _flatten_alpha(img: Image.Image) -> Image.Image:
    # Transparent pixels often hold black or garbage colour; CLIP should see what a viewer sees
    # on a white page, not what hides under the alpha channel.
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    """16-bit or 32-bit integer and float greyscale to 8-bit greyscale."""
    arr = np.asarray(img, dtype=np.float64)
    arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    top = float(arr.max()) if arr.size else 0.0
    if img.mode == "F" and top <= 1.0:
        scale = 255.0
    elif top > 255.0:
        scale = 255.0 / (65535.0 if top <= 65535.0 else top)
    else:
        scale = 1.0
    return Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: palette, alpha, CMYK, 16-bit, greyscale, bilevel."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        return _flatten_alpha(img) if "transparency" in img.info else img.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        return _flatten_alpha(img)
    if mode == "F" or mode.startswith("I"):
        return _high_bit_depth_to_l(img).convert("RGB")
    return img.convert("RGB")


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - malformed EXIF is treated as "no orientation"
        return 1


def _reduced(img: Image.Image, min_side: int) -> Image.Image:
    """``img`` shrunk by the largest whole factor that keeps both sides at least ``min_side``
    (a box filter, as JPEG's DCT scaling is), so that every conversion after it works on the
    small image: a 60-megapixel RGBA PNG would otherwise be copied four times at full size."""
    factor = min(img.size) // max(1, min_side)
    if factor < 2:
        return img
    if img.mode not in _REDUCIBLE:
        has_alpha = img.mode in ("P", "PA") and (
            "transparency" in img.info or img.mode == "PA"
        )
        img = img.convert("RGBA" if has_alpha else "I" if img.mode.startswith("I;") else
                          "L" if img.mode == "1" else "RGB")
    return img.reduce(factor)


def decode_image(data: ImageBytes, limits: ImageLimits, min_side: int) -> Image.Image:
    """Checked, oriented, RGB image with both sides at least ``min_side`` (when the image has
    them), which is all the model's resize needs: JPEGs decode at the smallest DCT scale that
    keeps them, other formats are reduced right after decoding.

    Whatever a decoder raises is this image's error (invalid_image, or image_too_large when
    memory ran out), never the request's: Pillow's plugins raise OSError, ValueError,
    SyntaxError, struct.error, IndexError, KeyError and more on hostile files.
    """
    img = open_checked(data, limits)
    try:
        if img.format == "JPEG":
            img.draft(None, (min_side, min_side))
        img.load()
        orientation = _orientation(img)
        rgb = to_rgb(_reduced(img, min_side))
        upright = _UPRIGHT.get(orientation)
        return rgb.transpose(upright) if upright is not None else rgb
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _reject(
            ErrorType.image_too_large, f"The image is too large to decode: {exc}"
        ) from exc
    except MemoryError as exc:
        raise _reject(ErrorType.image_too_large, "The image is too large to decode.") from exc
    except Exception as exc:  # noqa: BLE001 - see the docstring
        raise _reject(
            ErrorType.invalid_image,
            f"The image could not be decoded (truncated or corrupt {img.format}): "
            f"{type(exc).__name__}: {exc}",
        ) from exc


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
    """The header of a JPEG the device decoder can take as is, read without Pillow (a few
    µs); None when it is not one or the quick reader is not sure (gpu_decodable_jpeg
    then asks Pillow)."""
    header = scan_plain_jpeg(data)
    if (
        header is not None
        and len(data) <= limits.max_bytes
        and header.width * header.height <= limits.max_pixels
        and max(header.width, header.height) <= MAX_ASPECT_RATIO * min(header.width, header.height)
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
        if _orientation(img) != 1:
            return None
        width, height = img.size
        return JpegHeader(width=width, height=height)
    finally:
        img.close()
