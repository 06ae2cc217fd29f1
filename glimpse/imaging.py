"""Image bytes to pixels, for the encoder and the gateway alike: format allowlist, size caps
read from the header before any decoding, decoding at reduced size, EXIF orientation, any mode
to RGB, and any decoder failure turned into the file's own 4xx.

No torch here: the gateway's image has none. These functions block (PIL decoding); callers run
them in worker threads, never on an event loop.
"""

from __future__ import annotations

import io
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
from PIL import Image, UnidentifiedImageError

from glimpse.contracts.errors import ErrorType, GlimpseError

# Formats a photo collection holds. Everything else (EPS, PSD, ICO, PPM, ...) is refused: a
# smaller parser surface, and EPS would even hand the bytes to Ghostscript. (A multi-picture
# JPEG opens as JPEG and reports itself as MPO.)
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

# The longest side over the shortest, for the encoder. The model resizes the shortest side to
# its input size, so the resize costs this many times the model input at most, where a 30000x1
# strip would cost gigabytes; a 360-degree panorama is about 8:1.
MAX_ASPECT_RATIO = 32

EXIF_ORIENTATION = 0x0112
_WHITE = (255, 255, 255)

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
_ALPHA_MODES = frozenset(("RGBA", "LA", "PA", "RGBa", "La"))


# The bytes of one uploaded file: a read-only memoryview of the request body (the encoder's
# parse_form file_views), bytes or a bytearray elsewhere (calibration images, tests).
ImageBytes: TypeAlias = bytes | bytearray | memoryview


@dataclass(frozen=True)
class ImageLimits:
    """What a file may declare in its header. ``max_bytes`` None: the caller bounded the upload
    already; ``max_aspect_ratio`` None: no bound (the gateway, whose thumbnail is sized by its
    long side)."""

    max_bytes: int | None
    max_pixels: int
    max_aspect_ratio: int | None = MAX_ASPECT_RATIO


# The encoder's default limits; the gateway holds them only until the encoder's /v1/info answers.
DEFAULT_MAX_FILE_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 60_000_000
DEFAULT_LIMITS = ImageLimits(max_bytes=DEFAULT_MAX_FILE_BYTES, max_pixels=DEFAULT_MAX_PIXELS)


def too_many_pixels(width: int, height: int, max_pixels: int) -> GlimpseError:
    """The pixel cap's error (one sentence wherever a header is read)."""
    return GlimpseError(
        ErrorType.image_too_large,
        f"The image is {width}x{height} = {width * height} pixels; the limit is "
        f"{max_pixels} pixels.",
    )


def _identify_other_format(data: ImageBytes) -> str | None:
    """The name of a format PIL knows but we do not accept, from the header only."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return str(img.format)
    except Exception:  # noqa: BLE001 - any failure means "not an image we can name"
        return None


def open_checked(data: ImageBytes, limits: ImageLimits) -> Image.Image:
    """Open ``data`` lazily (header only) and enforce the allowlist and the caps."""
    if not data:
        raise GlimpseError(ErrorType.invalid_image, "The file is empty (0 bytes).")
    if limits.max_bytes is not None and len(data) > limits.max_bytes:
        raise GlimpseError(
            ErrorType.payload_too_large,
            f"The file has {len(data)} bytes; the limit is {limits.max_bytes} bytes per image.",
        )
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # PIL's own bomb guard fires from the header; our cap is lower, so this is ours too.
        raise GlimpseError(
            ErrorType.image_too_large,
            f"The image declares more pixels than allowed ({limits.max_pixels}): {exc}",
        ) from exc
    except UnidentifiedImageError as exc:
        other = _identify_other_format(data)
        if other is not None:
            raise GlimpseError(
                ErrorType.unsupported_media_type,
                f"Images in {other} format are not accepted; send one of "
                f"{', '.join(ALLOWED_FORMATS)}.",
            ) from exc
        raise GlimpseError(
            ErrorType.invalid_image,
            f"The file is not a recognisable image (accepted: {', '.join(ALLOWED_FORMATS)}).",
        ) from exc
    except Exception as exc:  # noqa: BLE001 - any plugin's failure on a header is the file's
        raise GlimpseError(
            ErrorType.invalid_image,
            f"The image header is corrupt: {type(exc).__name__}: {exc}",
        ) from exc
    width, height = img.size
    if width <= 0 or height <= 0:
        raise GlimpseError(
            ErrorType.invalid_image, f"The image declares a size of {width}x{height}."
        )
    if width * height > limits.max_pixels:
        raise too_many_pixels(width, height, limits.max_pixels)
    ratio = limits.max_aspect_ratio
    if ratio is not None and max(width, height) > ratio * min(width, height):
        raise GlimpseError(
            ErrorType.invalid_image,
            f"The image is {width}x{height}: its long side is more than {ratio} "
            "times its short side, the most accepted.",
        )
    return img


def _release(img: Image.Image, exc: BaseException) -> None:
    """Free what a failed decode of ``img`` holds. An error keeps its traceback's frames, and
    with them the image and Pillow's decoder (which holds the image too), as long as the error
    lives: a batch's errors wait for its answer, a reference cycle for the collector, and each
    truncated 60 MP file would pin its pixels till then."""
    img.close()  # the core image
    vars(img).pop("_decoder", None)  # WebP's plugin: libwebp's decoder and its whole canvas
    traceback.clear_frames(exc.__traceback__)  # the finished frames' locals (running ones stay)


def _decode_error(img: Image.Image, exc: Exception) -> GlimpseError:
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return GlimpseError(ErrorType.image_too_large, f"The image is too large to decode: {exc}")
    if isinstance(exc, MemoryError):
        return GlimpseError(ErrorType.image_too_large, "The image is too large to decode.")
    return GlimpseError(
        ErrorType.invalid_image,
        f"The image could not be decoded (truncated or corrupt {img.format}): "
        f"{type(exc).__name__}: {exc}",
    )


@contextmanager
def decoder_errors(img: Image.Image) -> Iterator[None]:
    """Whatever a decoder or a conversion raises inside is this image's error (invalid_image,
    or image_too_large when memory ran out), never the request's: Pillow's plugins raise
    OSError, ValueError, SyntaxError, TypeError, struct.error, IndexError, KeyError and more on
    hostile files. On any failure ``img`` is released (:func:`_release`)."""
    try:
        yield
    except BaseException as exc:
        _release(img, exc)
        if isinstance(exc, GlimpseError) or not isinstance(exc, Exception):
            raise
        raise _decode_error(img, exc) from exc


def has_alpha(img: Image.Image) -> bool:
    return img.mode in _ALPHA_MODES or "transparency" in img.info


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
    """Any PIL mode to 8-bit RGB: palette, alpha (on white), CMYK, 16-bit, float, bilevel."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if has_alpha(img):
        return _flatten_alpha(img)
    if mode == "F" or mode.startswith("I"):
        return _high_bit_depth_to_l(img).convert("RGB")
    return img.convert("RGB")


def orientation_of(value: object) -> int:
    """An EXIF orientation tag's value as 1..8 (1 for anything else: a mistyped tag may hold a
    float, a fraction, bytes or a tuple)."""
    return next((o for o in range(2, 9) if value == o), 1)


def orientation(img: Image.Image) -> int:
    """The EXIF orientation (1 when there is none or the EXIF block is malformed)."""
    try:
        return orientation_of(img.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - malformed EXIF is treated as "no orientation"
        return 1


# Pixels of one band that _reduced converts and reduces at a time (about 4 MB of RGBA).
_BAND_PIXELS = 1 << 20


def _reduced(img: Image.Image, at_least: tuple[int, int]) -> Image.Image:
    """``img`` shrunk by the largest whole factor that keeps its width and height at least
    ``at_least`` (a box filter, as JPEG's DCT scaling is), so that every conversion after it
    works on the small image.

    It goes band by band: a mode Image.reduce does not take is converted one band at a time,
    and reduce itself premultiplies an alpha channel into a full-size copy, so a 60-megapixel
    palette PNG with transparency costs its decoded 60 MB here, not the 240 MB of RGBA twice.
    """
    width, height = img.size
    factor = min(width // max(1, at_least[0]), height // max(1, at_least[1]))
    if factor < 2:
        return img
    mode = img.mode
    # A transparent colour (tRNS) is an alpha channel the reduced image must keep.
    if mode not in _REDUCIBLE or (has_alpha(img) and mode not in _ALPHA_MODES):
        mode = ("RGBA" if has_alpha(img) else "I" if mode.startswith("I;") else
                "L" if mode == "1" else "RGB")
    out = Image.new(mode, (-(-width // factor), -(-height // factor)))
    rows = max(1, _BAND_PIXELS // (width * factor)) * factor
    for top in range(0, height, rows):
        band = img.crop((0, top, width, min(height, top + rows)))
        if band.mode != mode:
            band = band.convert(mode)
        out.paste(band.reduce(factor), (0, top // factor))
    return out


def load_upright(img: Image.Image, at_least: tuple[int, int]) -> Image.Image:
    """Decode ``img`` (fresh from :func:`open_checked`) at the smallest size that keeps its
    stored width and height at least ``at_least`` (JPEG: libjpeg's DCT scaling; others: a
    whole-factor reduction right after decoding), turned upright by its EXIF orientation. Any
    mode; decoder failures are the image's 4xx (:func:`decoder_errors`)."""
    with decoder_errors(img):
        if img.format in ("JPEG", "MPO"):
            img.draft(None, at_least)
        img.load()
        upright = _UPRIGHT.get(orientation(img))
        small = _reduced(img, at_least)
        if upright is None:
            return small
        turned = small.transpose(upright)
        turned.info.pop("exif", None)  # its orientation tag no longer applies
        return turned


def decode_image(data: ImageBytes, limits: ImageLimits, min_side: int) -> Image.Image:
    """Checked, upright, RGB image with both sides at least ``min_side`` (when the image has
    them), which is all the model's resize needs."""
    img = open_checked(data, limits)
    small = load_upright(img, (min_side, min_side))
    with decoder_errors(img):
        return to_rgb(small)
