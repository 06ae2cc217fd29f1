"""make_thumbnail: accepted formats and modes, orientation, the pixel cap, bad files; and
sniff_content_type, the stored type of an upload."""

from __future__ import annotations

import io
import struct
import time
import zlib
from typing import Any

import pytest
from PIL import Image

from glimpse.contracts.errors import GlimpseError
from glimpse.gateway.images import _draft_size, make_thumbnail, sniff_content_type
from tests.reliability._images import blank_png, float_tiffs, mistyped_exif_jpeg


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
    assert sniff_content_type(data) == content_type
    thumb = thumb_of(make_thumbnail(data, max_pixels=10**8))
    assert thumb.format == "WEBP" and max(thumb.size) == 320


def test_jpeg_thumbnail_flattens_alpha() -> None:
    data = encode(Image.new("RGBA", (100, 50), (255, 0, 0, 0)), "PNG")
    thumb = thumb_of(make_thumbnail(data, max_pixels=10**8, thumbnail_type="image/jpeg"))
    assert thumb.format == "JPEG" and thumb.size == (100, 50)


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (400, 200), (0, 0, 255))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    data = encode(img, "JPEG", exif=exif)
    assert thumb_of(make_thumbnail(data, max_pixels=10**8)).size == (160, 320)


@pytest.mark.parametrize("side", [8000, 9600, 30000])  # under, over, far over Pillow's own cap
def test_pixel_cap_is_checked_before_decoding(side: int) -> None:
    data = png_header_only(side, side)
    start = time.perf_counter()
    with pytest.raises(GlimpseError) as info:
        make_thumbnail(data, max_pixels=50_000_000)
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
        make_thumbnail(data, max_pixels=10**8)
    assert info.value.error_type == error_type and info.value.status == 422


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_has_no_thumbnail(fmt: str) -> None:
    data = encode(Image.effect_noise((300, 300), 50).convert("RGB"), fmt)
    truncated = data[: len(data) // 2]
    with pytest.raises(GlimpseError) as info:
        make_thumbnail(truncated, max_pixels=10**8)
    assert info.value.error_type == "invalid_image"


def test_unlisted_format_is_unsupported() -> None:
    data = encode(Image.new("RGB", (10, 10)), "PPM")
    with pytest.raises(GlimpseError) as info:
        make_thumbnail(data, max_pixels=10**8)
    assert info.value.status == 415


def test_large_jpeg_is_decoded_at_reduced_size() -> None:
    # A wide photo: asking draft for a square box would keep it at full size.
    data = encode(Image.new("RGB", (2400, 1200), (200, 30, 30)), "JPEG", quality=90)
    thumb = thumb_of(make_thumbnail(data, max_pixels=10**8, thumbnail_size=320))
    assert thumb.size == (320, 160)
    assert thumb.getpixel((160, 80))[0] > 150  # the colour survived the reduced decode


def test_draft_size_keeps_the_thumbnails_aspect() -> None:
    assert _draft_size((640, 480), 320) == (320, 240)
    assert _draft_size((480, 640), 320) == (240, 320)
    assert _draft_size((100, 50), 320) == (100, 50)  # never upscaled
    assert _draft_size((10_000, 1), 320) == (320, 1)


@pytest.mark.parametrize("method", [0, 6])
def test_webp_method_gives_a_valid_thumbnail(method: int) -> None:
    data = encode(Image.new("RGB", (640, 480), (10, 120, 200)), "PNG")
    assert thumb_of(make_thumbnail(data, max_pixels=10**6, webp_method=method)).format == "WEBP"


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("GIF", "image/gif"),
     ("WEBP", "image/webp"), ("BMP", "image/bmp"), ("TIFF", "image/tiff")],
)
def test_sniff_content_type_agrees_with_pillow(fmt: str, content_type: str) -> None:
    data = encode(Image.new("RGB", (8, 8)), fmt)
    assert sniff_content_type(data) == content_type
    assert Image.open(io.BytesIO(data)).format == fmt


def test_every_tiff_header_pillow_reads_is_sniffed_as_tiff() -> None:
    # Pillow takes the byte orders cameras swap and BigTIFF: whatever the encoder read as a
    # TIFF is stored as one.
    from PIL import TiffImagePlugin

    for prefix in TiffImagePlugin.PREFIXES:
        assert sniff_content_type(prefix + b"\0" * 12) == "image/tiff", prefix


def test_sniff_content_type_of_unknown_bytes() -> None:
    assert sniff_content_type(b"") == "application/octet-stream"
    assert sniff_content_type(b"%PDF-1.4") == "application/octet-stream"


def test_the_gateway_decodes_without_torch() -> None:
    # The gateway's image has no torch: the decoder it shares with the encoder must not need it.
    import subprocess
    import sys

    code = ("import sys, glimpse.gateway.images; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-500:]


@pytest.mark.parametrize("name", [n for n in float_tiffs() if "offsets" in n or "corrupt" in n])
def test_broken_float_tiffs_are_the_files_error(name: str) -> None:
    """Issue 25 F8: a float TIFF whose StripOffsets entry Pillow reads as a float, a fraction,
    text or bytes raised TypeError in make_thumbnail; in library mode (thumbnails made at
    ingest) the whole ingest request answered 500."""
    data = float_tiffs()[name]
    with pytest.raises(GlimpseError) as info:
        make_thumbnail(data, max_pixels=10**8)
    assert info.value.error_type == "invalid_image" and info.value.status == 422


def test_a_valid_float_tiff_has_a_thumbnail() -> None:
    assert thumb_of(make_thumbnail(float_tiffs()["float32.tif"], max_pixels=10**8)).size == (64, 48)


def test_mistyped_exif_still_turns_the_thumbnail() -> None:
    """Issue 25 F4 in the gateway: ImageOps.exif_transpose rewrote the EXIF block and raised on
    ResolutionUnit stored as BYTE; the orientation is now applied by transpose alone."""
    data = mistyped_exif_jpeg(6)
    assert thumb_of(make_thumbnail(data, max_pixels=10**8)).size == (20, 40)


@pytest.mark.parametrize(("size", "thumb"), [((30_000, 1), (320, 1)), ((1, 30_000), (1, 320)),
                                             ((60_000_000, 1), (320, 1))])
def test_long_thin_images_have_thumbnails(size: tuple[int, int], thumb: tuple[int, int]) -> None:
    # The gateway bounds pixels only: its thumbnail is sized by the long side, so a strip
    # costs its area, where the encoder (resizing the short side) refuses it.
    data = blank_png(*size)
    assert thumb_of(make_thumbnail(data, max_pixels=60_000_000)).size == thumb


@pytest.mark.parametrize("kind", ["rgba", "palette_trns", "grey16", "rgb16", "bilevel"])
def test_large_images_are_reduced_before_conversion(kind: str, monkeypatch: pytest.MonkeyPatch
                                                     ) -> None:
    """Non-JPEG images are reduced by a whole factor toward the thumbnail size right after
    decoding, band by band: no conversion (nor reduce's own premultiplied copy of an alpha
    image) is made at full size, and the LANCZOS step sees a small image."""
    import glimpse.gateway.images as images

    seen: list[tuple[int, int]] = []
    real_to_rgb = images.to_rgb
    real_convert = Image.Image.convert

    def to_rgb(img: Image.Image) -> Image.Image:
        seen.append(img.size)
        return real_to_rgb(img)

    def convert(img: Image.Image, *args: Any, **kwargs: Any) -> Image.Image:
        seen.append(img.size)
        return real_convert(img, *args, **kwargs)

    monkeypatch.setattr(images, "to_rgb", to_rgb)
    data = blank_png(4000, 3000, kind)
    monkeypatch.setattr(Image.Image, "convert", convert)
    thumb = thumb_of(make_thumbnail(data, max_pixels=10**8, thumbnail_size=320))
    assert thumb.size == (320, 240)
    after_reduce = seen[-1]  # the one conversion after the reduction
    assert after_reduce[0] < 640 and after_reduce[1] < 480, seen
    assert max(height for _, height in seen) < 3000 // 4, seen  # bands, never the whole
