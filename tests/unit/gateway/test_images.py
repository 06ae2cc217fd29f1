"""prepare_image: accepted formats and modes, orientation, the pixel cap, bad files."""

from __future__ import annotations

import io
import struct
import time
import zlib

import pytest
from PIL import Image

from contracts.errors import GlimpseError
from gateway.images import prepare_image


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **kwargs)
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a huge size: what a decompression bomb looks like from its header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
        + b"\x00\x00\x00\x00IDAT" + b"\x00" * 4
    )


def thumb_of(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


@pytest.mark.parametrize(
    ("mode", "fmt", "content_type"),
    [
        ("RGB", "JPEG", "image/jpeg"),
        ("RGBA", "PNG", "image/png"),
        ("P", "GIF", "image/gif"),
        ("L", "PNG", "image/png"),
        ("I;16", "PNG", "image/png"),
        ("CMYK", "JPEG", "image/jpeg"),
        ("RGB", "WEBP", "image/webp"),
        ("RGB", "BMP", "image/bmp"),
        ("RGB", "TIFF", "image/tiff"),
    ],
)
def test_accepts_common_formats_and_modes(mode: str, fmt: str, content_type: str) -> None:
    data = encode(Image.new(mode, (640, 480)), fmt)
    prepared = prepare_image(data, max_pixels=10**8)
    assert (prepared.width, prepared.height, prepared.content_type) == (640, 480, content_type)
    thumb = thumb_of(prepared.thumbnail)
    assert thumb.format == "WEBP" and max(thumb.size) == 320


def test_jpeg_thumbnail_flattens_alpha() -> None:
    data = encode(Image.new("RGBA", (100, 50), (255, 0, 0, 0)), "PNG")
    prepared = prepare_image(data, max_pixels=10**8, thumbnail_type="image/jpeg")
    thumb = thumb_of(prepared.thumbnail)
    assert thumb.format == "JPEG" and thumb.size == (100, 50)


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (400, 200), (0, 0, 255))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    prepared = prepare_image(encode(img, "JPEG", exif=exif), max_pixels=10**8)
    assert (prepared.width, prepared.height) == (200, 400)
    assert thumb_of(prepared.thumbnail).size == (160, 320)


@pytest.mark.parametrize("side", [8000, 9600, 30000])  # under, over, far over Pillow's own cap
def test_pixel_cap_is_checked_before_decoding(side: int) -> None:
    data = png_header_only(side, side)
    start = time.perf_counter()
    with pytest.raises(GlimpseError) as info:
        prepare_image(data, max_pixels=50_000_000)
    assert info.value.error_type == "image_too_large" and info.value.status == 413
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    ("data", "error_type"),
    [
        (b"", "invalid_image"),
        (b"\x00" * 100, "invalid_image"),
        (b"GIF89a" + b"\xff" * 10, "invalid_image"),
    ],
)
def test_bad_bytes_are_rejected(data: bytes, error_type: str) -> None:
    with pytest.raises(GlimpseError) as info:
        prepare_image(data, max_pixels=10**8)
    assert info.value.error_type == error_type and info.value.status == 422


def test_truncated_image_is_rejected() -> None:
    data = encode(Image.effect_noise((300, 300), 50).convert("RGB"), "PNG")
    with pytest.raises(GlimpseError) as info:
        prepare_image(data[: len(data) // 2], max_pixels=10**8)
    assert info.value.error_type == "invalid_image"


def test_unlisted_format_is_unsupported() -> None:
    data = encode(Image.new("RGB", (10, 10)), "PPM")
    with pytest.raises(GlimpseError) as info:
        prepare_image(data, max_pixels=10**8)
    assert info.value.status == 415
