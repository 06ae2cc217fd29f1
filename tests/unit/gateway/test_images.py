"""inspect_image (ingest's header check) and make_thumbnail: accepted formats and modes,
orientation, the pixel cap, bad files."""

from __future__ import annotations

import io
import random
import struct
import time
import warnings
import zlib
from typing import Any

import pytest
from PIL import Image

from glimpse.contracts.errors import GlimpseError
from glimpse.gateway.images import _draft_size, inspect_image, make_thumbnail, sniff_content_type
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
    info = inspect_image(data, max_pixels=10**8)
    assert (info.width, info.height, info.content_type) == (640, 480, content_type)
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
    info = inspect_image(data, max_pixels=10**8)
    assert (info.width, info.height) == (200, 400)
    assert thumb_of(make_thumbnail(data, max_pixels=10**8)).size == (160, 320)


BOTH = [inspect_image, make_thumbnail]


@pytest.mark.parametrize("check", BOTH)
@pytest.mark.parametrize("side", [8000, 9600, 30000])  # under, over, far over Pillow's own cap
def test_pixel_cap_is_checked_before_decoding(side: int, check: Any) -> None:
    data = png_header_only(side, side)
    start = time.perf_counter()
    with pytest.raises(GlimpseError) as info:
        check(data, max_pixels=50_000_000)
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
@pytest.mark.parametrize("check", BOTH)
def test_bad_bytes_are_rejected(data: bytes, error_type: str, check: Any) -> None:
    with pytest.raises(GlimpseError) as info:
        check(data, max_pixels=10**8)
    assert info.value.error_type == error_type and info.value.status == 422


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_passes_the_header_check_and_has_no_thumbnail(fmt: str) -> None:
    # Ingest reads headers only; the encoder, which decodes every file, refuses this one.
    data = encode(Image.effect_noise((300, 300), 50).convert("RGB"), fmt)
    truncated = data[: len(data) // 2]
    assert inspect_image(truncated, max_pixels=10**8).width == 300
    with pytest.raises(GlimpseError) as info:
        make_thumbnail(truncated, max_pixels=10**8)
    assert info.value.error_type == "invalid_image"


@pytest.mark.parametrize("check", BOTH)
def test_unlisted_format_is_unsupported(check: Any) -> None:
    data = encode(Image.new("RGB", (10, 10)), "PPM")
    with pytest.raises(GlimpseError) as info:
        check(data, max_pixels=10**8)
    assert info.value.status == 415


def test_large_jpeg_is_decoded_at_reduced_size_with_its_true_size_reported() -> None:
    # A wide photo: asking draft for a square box would keep it at full size.
    data = encode(Image.new("RGB", (2400, 1200), (200, 30, 30)), "JPEG", quality=90)
    info = inspect_image(data, max_pixels=10**8)
    assert (info.width, info.height) == (2400, 1200)
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
    assert inspect_image(data, max_pixels=10**6).content_type == content_type


def test_sniff_content_type_of_unknown_bytes() -> None:
    assert sniff_content_type(b"") == "application/octet-stream"
    assert sniff_content_type(b"%PDF-1.4") == "application/octet-stream"


def _jpegs() -> dict[str, bytes]:
    """JPEGs as cameras, phones and editors write them: modes, progressive, restart
    intervals, EXIF orientations, ICC profiles, XMP, comments."""
    rgb = Image.new("RGB", (64, 48), (200, 40, 40))
    out = {
        "baseline": encode(rgb, "JPEG", quality=90),
        "progressive": encode(rgb, "JPEG", progressive=True, optimize=True),
        "grey": encode(rgb.convert("L"), "JPEG"),
        "cmyk": encode(rgb.convert("CMYK"), "JPEG"),
        "restart": encode(rgb, "JPEG", restart_marker_blocks=1),
        "16-bit tables": encode(rgb, "JPEG", qtables=[[300] * 64]),
        "icc": encode(rgb, "JPEG", icc_profile=b"\0" * 2000),
        "comment": encode(rgb, "JPEG", comment=b"made here"),
        "xmp": encode(rgb, "JPEG", xmp=b'<x tiff:Orientation="6"/>'),
    }
    dqt = out["baseline"].index(b"\xff\xdb")
    # A table byte that asks for 16-bit values the segment has no room for (Pillow refuses
    # it), and segment lengths below the length field's own two bytes.
    out["dqt overrun"] = _patched(out["baseline"], dqt + 4, 0x10)
    out["length 0"] = _patched(_patched(out["baseline"], dqt + 2, 0), dqt + 3, 0)
    out["length 1"] = _patched(_patched(out["baseline"], dqt + 2, 0), dqt + 3, 1)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        exif[0x010F] = "camera maker"
        out[f"orientation {orientation}"] = encode(rgb, "JPEG", exif=exif.tobytes())
    return out


def _patched(data: bytes, at: int, value: int) -> bytes:
    return data[:at] + bytes([value]) + data[at + 1:]


def _outcome(data: bytes) -> list[object]:
    # Under a cap the 64x48 frames pass (the size as displayed compared), and over one (the
    # size in the error's message).
    outcomes: list[object] = []
    for max_pixels in (10**6, 2_000):
        try:
            outcomes.append(inspect_image(data, max_pixels=max_pixels))
        except GlimpseError as exc:
            outcomes.append((exc.error_type, exc.message))
    return outcomes


def _mutations(data: bytes, rng: random.Random, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(min(len(mutated), 700))  # the header, mostly
            op = rng.choice(["flip", "cut", "insert", "zero"])
            if op == "flip":
                mutated[at] ^= rng.randint(1, 255)
            elif op == "cut":
                del mutated[at:]
            elif op == "insert":
                mutated[at:at] = rng.randbytes(rng.randint(1, 8))
            else:
                mutated[at:at + 4] = bytes(len(mutated[at:at + 4]))
            if not mutated:
                break
        out.append(bytes(mutated))
    return out


def test_the_quick_jpeg_header_read_agrees_with_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    # inspect_image reads plain JPEG headers itself and leaves the rest to Pillow; on every
    # file, well made or mutated, the answer (size, type, or error and message) must be
    import glimpse.gateway.images as images

    rng = random.Random(16)
    files = _jpegs()
    cases = [(name, data) for name, data in files.items()]
    cases += [(f"{name} mutated", m) for name, data in files.items()
              for m in _mutations(data, rng, 60)]
    quick = [images._jpeg_header(data) is not None for _, data in cases]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's notices about corrupt EXIF
        ours = [_outcome(data) for _, data in cases]
        monkeypatch.setattr(images, "_jpeg_header", lambda data: None)
        pillow = [_outcome(data) for _, data in cases]
    differ = [(name, a, b) for (name, _), a, b in zip(cases, ours, pillow, strict=True) if a != b]
    assert not differ, differ[:5]
    # The quick read answered for the plain files (not XMP: Pillow reads an orientation
    # there) and for many mutated ones; Pillow for the rest.
    plain = [name for name in files if name != "xmp" and not name.startswith(("dqt", "len"))]
    assert all(q for (name, _), q in zip(cases, quick, strict=True) if name in plain)
    assert sum(quick) > len(files) * 10


def test_the_orientation_turns_the_quick_size() -> None:
    files = _jpegs()
    sizes = {n: inspect_image(files[f"orientation {n}"], max_pixels=10**6) for n in range(1, 9)}
    assert {(s.width, s.height) for n, s in sizes.items() if n < 5} == {(64, 48)}
    assert {(s.width, s.height) for n, s in sizes.items() if n >= 5} == {(48, 64)}
    assert (inspect_image(files["xmp"], max_pixels=10**6).width) == 48  # via Pillow


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
    assert inspect_image(data, max_pixels=10**8).width == 64  # the header is fine
    with pytest.raises(GlimpseError) as info:
        make_thumbnail(data, max_pixels=10**8)
    assert info.value.error_type == "invalid_image" and info.value.status == 422


def test_a_valid_float_tiff_has_a_thumbnail() -> None:
    assert thumb_of(make_thumbnail(float_tiffs()["float32.tif"], max_pixels=10**8)).size == (64, 48)


def test_mistyped_exif_still_turns_the_thumbnail() -> None:
    """Issue 25 F4 in the gateway: ImageOps.exif_transpose rewrote the EXIF block and raised on
    ResolutionUnit stored as BYTE; the orientation is now applied by transpose alone."""
    data = mistyped_exif_jpeg(6)
    assert (inspect_image(data, max_pixels=10**8).width, thumb_of(
        make_thumbnail(data, max_pixels=10**8)).size) == (20, (20, 40))


@pytest.mark.parametrize(("size", "thumb"), [((30_000, 1), (320, 1)), ((1, 30_000), (1, 320)),
                                             ((60_000_000, 1), (320, 1))])
def test_long_thin_images_have_thumbnails(size: tuple[int, int], thumb: tuple[int, int]) -> None:
    # The gateway bounds pixels only: its thumbnail is sized by the long side, so a strip
    # costs its area, where the encoder (resizing the short side) refuses it.
    data = blank_png(*size)
    assert inspect_image(data, max_pixels=60_000_000).width == size[0]
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
