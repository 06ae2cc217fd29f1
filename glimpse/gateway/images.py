"""Thumbnails of stored images, with the encoder's decoder (glimpse/imaging.py), and the
content type of an upload from its first bytes.

The gateway reads no image header at ingest: the encoder decodes every image anyway, refuses
what it cannot read, and answers each one's size as displayed beside its vector (ingest.py).
A thumbnail (a decode and a WebP encode, the costliest step of an image's ingest in
bench/bench_ingest.py) is made when it is first asked for (thumbnails.py); its pixel count is
checked from the header before any decoding, so a decompression bomb costs a header read.
Unlike the encoder, no aspect ratio is refused here (a thumbnail is sized by its long side).
Every function here that decodes blocks on CPU; callers run it in a worker thread.
"""

from __future__ import annotations

import io
import math

from PIL import Image

from glimpse.imaging import (
    ImageLimits,
    decoder_errors,
    has_alpha,
    load_upright,
    open_checked,
    to_rgb,
)

_PIL_SAVE = {"image/webp": "WEBP", "image/jpeg": "JPEG"}
# The longest side of a thumbnail, one size for all: the page's tiles are 180 CSS pixels wide
# and up (style.css), so 320 stays sharp on most screens.
THUMBNAIL_SIZE = 320

# Leading bytes of each accepted format, as Pillow's own plugins recognise them (WebP:
# RIFF....WEBP, checked below): an image the encoder read has the type its bytes start with.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"MM*\x00", "image/tiff"),
    (b"II\x00*", "image/tiff"),
    (b"MM\x00+", "image/tiff"),  # BigTIFF
    (b"II+\x00", "image/tiff"),
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
    thumbnail_size: int = THUMBNAIL_SIZE,
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
