"""Checking uploaded images and making their thumbnails, with the encoder's decoder
(glimpse/imaging.py).

The pixel count is checked from the header before any decoding, so a decompression bomb costs
a header read; unlike the encoder, no aspect ratio is refused here (a thumbnail is sized by its
long side). Ingest reads headers only (:func:`inspect_image`): the encoder decodes every image
anyway and rejects what it cannot read, and a thumbnail (a decode and a WebP encode, the
costliest step of an image's ingest in bench/bench_ingest.py) is made when it is first asked
for (thumbnails.py). Every function here blocks on CPU; callers run it in a worker thread.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from PIL import Image

from glimpse.imaging import (
    EXIF_ORIENTATION,
    ImageLimits,
    decoder_errors,
    has_alpha,
    load_upright,
    open_checked,
    orientation,
    orientation_of,
    to_rgb,
    too_many_pixels,
)

# Formats a browser can show and the encoder can read; MPO is a multi-picture JPEG (phones).
CONTENT_TYPES: dict[str, str] = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}
_PIL_SAVE = {"image/webp": "WEBP", "image/jpeg": "JPEG"}


@dataclass(frozen=True)
class ImageInfo:
    """What ingest keeps of a valid image's header: its size as displayed, and its type."""

    width: int
    height: int
    content_type: str


# Leading bytes of each accepted format (WebP: RIFF....WEBP, checked below).
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)


def sniff_content_type(data: bytes) -> str:
    """The content type of ``data`` from its first bytes (no decoding); octet-stream if unknown."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for magic, content_type in _MAGIC:
        if data.startswith(magic):
            return content_type
    return "application/octet-stream"


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    # The upload's size was checked when it was read; a thumbnail is sized by its long side.
    return open_checked(data, ImageLimits(max_bytes=None, max_pixels=max_pixels,
                                          max_aspect_ratio=None))


def _displayed_size(img: Image.Image) -> tuple[int, int]:
    """The size as displayed: EXIF orientations 5..8 rotate by 90 degrees."""
    width, height = img.size
    if orientation(img) in (5, 6, 7, 8):
        width, height = height, width
    return width, height


def inspect_image(data: bytes, *, max_pixels: int) -> ImageInfo:
    """The size as displayed and the type of ``data``, from its header alone (no decoding).

    Raises GlimpseError as :func:`make_thumbnail` does for what a header shows: invalid_image
    (not an image), image_too_large (pixel cap), unsupported_media_type. A file whose header
    is fine but whose pixels are not (truncated, corrupt) passes; whoever decodes it refuses it.
    """
    header = _jpeg_header(data)
    if header is not None:
        # The same checks as _open_checked, in its order (a JPEG is an accepted format).
        width, height, turn = header
        if width * height > max_pixels:
            raise too_many_pixels(width, height, max_pixels)
        if turn in (5, 6, 7, 8):
            width, height = height, width
        return ImageInfo(width, height, "image/jpeg")
    img = _open_checked(data, max_pixels)
    width, height = _displayed_size(img)
    return ImageInfo(width, height, CONTENT_TYPES[str(img.format)])


# JPEG markers Pillow reads past on its way to the first scan (besides APPn and the SOFs):
# DHT, DQT (checked below), DRI, COM.
_JPEG_SKIPPED = frozenset((0xC4, 0xDB, 0xDD, 0xFE))
_JPEG_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
                       0xCF))
_XMP = b"http://ns.adobe.com/xap/1.0/\x00"


def _jpeg_header(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, EXIF orientation) of a plainly made JPEG, or None for anything else.

    Pillow's JPEG header parser holds the GIL several times as long as this walk of the
    segments (bench/bench_ingest.py). It answers only where
    Pillow would open the file without complaint and read the same size and orientation:
    segments back to back up to the first scan, one frame header of 8-bit samples and at
    least one pixel, DQT tables whole, and none of the APP segments that Pillow parses
    further (MPO, Photoshop, XMP, short JFIF, Adobe or ICC headers, several EXIF blocks); the
    EXIF block, if any, is read by Pillow's own Exif class, as its getexif does. Anything
    else is None, and Pillow reads the file as before; the tests compare both on mutated
    files.
    """
    if not data.startswith(b"\xff\xd8\xff"):
        return None
    end = len(data)
    pos = 2
    size: tuple[int, int] | None = None
    exif: bytes | None = None
    while True:
        if pos + 4 > end or data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        length = (data[pos + 2] << 8) | data[pos + 3]
        body, pos = pos + 4, pos + 2 + length
        if length < 2 or pos > end:
            return None
        if marker == 0xDA:  # start of scan: the header is over
            break
        if marker in _JPEG_SOF:
            if size is not None or length < 8 or data[body] != 8 or data[body + 5] not in (1, 3, 4):
                return None
            size = ((data[body + 3] << 8) | data[body + 4], (data[body + 1] << 8) | data[body + 2])
        elif 0xE0 <= marker <= 0xEF:
            segment = data[body:pos]
            if marker == 0xE1 and segment.startswith(b"Exif\0\0"):
                if exif is not None:
                    return None
                exif = segment
            elif (
                (marker == 0xE0 and segment.startswith(b"JFIF") and len(segment) < 7)
                or (marker == 0xE1 and segment.startswith(_XMP))
                or (marker == 0xE2 and segment.startswith(b"MPF\0"))
                or (marker == 0xE2 and segment.startswith(b"ICC_PROFILE\0") and len(segment) < 14)
                or (marker == 0xED and segment.startswith(b"Photoshop 3.0\x00"))
                or (marker == 0xEE and segment.startswith(b"Adobe") and len(segment) < 7)
            ):
                return None
        elif marker == 0xDB:
            at = body
            while at < pos:  # each table: a precision/id byte, then 64 values of 1 or 2 bytes
                at += 1 + 64 * (1 if data[at] < 16 else 2)
            if at != pos:
                return None
        elif marker not in _JPEG_SKIPPED:
            return None
    if size is None or size[0] < 1 or size[1] < 1:
        return None  # Pillow refuses a frame without pixels in its own words
    width, height = size
    if Image.MAX_IMAGE_PIXELS is not None and width * height > Image.MAX_IMAGE_PIXELS:
        return None  # Pillow's own decompression-bomb warning or error applies
    turn = 1
    if exif is not None:
        try:
            tags = Image.Exif()
            tags.load(exif)  # what Pillow's getexif reads
            turn = orientation_of(tags.get(EXIF_ORIENTATION, 1))
        except Exception:  # noqa: BLE001 - whatever it is, Pillow's own path decides
            return None
    return width, height, turn


def _draft_size(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """The smallest size to ask of ``Image.draft`` for a thumbnail of longest side ``longest``.

    draft keeps both sides at least as large as asked, so ask for the thumbnail's own aspect
    (asking for a square box would keep a landscape photo at full size).
    """
    width, height = size
    scale = min(1.0, longest / max(width, height))
    return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))


def make_thumbnail(
    data: bytes,
    *,
    max_pixels: int,
    thumbnail_size: int = 320,
    thumbnail_type: str = "image/webp",
    quality: int = 80,
    webp_method: int = 0,
) -> bytes:
    """The thumbnail of ``data``: longest side at most ``thumbnail_size``, EXIF orientation
    applied, WebP or JPEG (alpha flattened on white for JPEG).

    ``webp_method`` is libwebp's effort (0 fastest .. 6 smallest): at 320 px the files of
    method 0 are a little larger, and it encodes several times faster than the default 4.

    Raises GlimpseError: invalid_image (unreadable or truncated), image_too_large (pixel cap),
    unsupported_media_type (a format outside the allowlist).
    """
    img = _open_checked(data, max_pixels)
    with decoder_errors(img):
        # Decoded no larger than the thumbnail needs (JPEG: libjpeg's DCT scaling; others: a
        # whole-factor reduction right after decoding), then LANCZOS for the last step.
        thumb = load_upright(img, _draft_size(img.size, thumbnail_size))
        keep_alpha = thumbnail_type != "image/jpeg" and has_alpha(thumb)
        thumb = thumb.convert("RGBA") if keep_alpha else to_rgb(thumb)
        thumb.thumbnail((thumbnail_size, thumbnail_size), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        options = {"method": webp_method} if thumbnail_type == "image/webp" else {}
        thumb.save(out, format=_PIL_SAVE[thumbnail_type], quality=quality, **options)
    return out.getvalue()
