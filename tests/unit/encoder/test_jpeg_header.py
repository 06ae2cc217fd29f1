"""The quick JPEG header reader against Pillow: wherever it answers, Pillow says the same
(size, mode L or RGB, not progressive, upright); where it is unsure it says None and the
caller asks Pillow."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from glimpse.encoder.images import ImageLimits, gpu_decodable_jpeg, plain_jpeg
from glimpse.encoder.jpeg_header import JpegHeader, scan_plain_jpeg
from glimpse.encoder.service import calibration_jpegs
from tests.unit.encoder.conftest import encoded

LIMITS = ImageLimits(10_000_000, 10_000_000)
_RGB = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))


def _exif(**tags: object) -> bytes:
    exif = Image.Exif()
    for tag, value in tags.items():
        exif[int(tag[1:], 16)] = value
    return exif.tobytes()


CASES = {
    "rgb": encoded(_RGB, "JPEG"),
    "grey": encoded(_RGB.convert("L"), "JPEG"),
    "cmyk": encoded(_RGB.convert("CMYK"), "JPEG"),
    "progressive": encoded(_RGB, "JPEG", progressive=True),
    "quality 100": encoded(_RGB, "JPEG", quality=100),
    "4:4:4": encoded(_RGB, "JPEG", subsampling=0),
    "optimised tables": encoded(_RGB, "JPEG", optimize=True),
    "rotated 90": encoded(_RGB, "JPEG", exif=_exif(x0112=6)),
    "upright in exif": encoded(_RGB, "JPEG", exif=_exif(x0112=1)),
    "exif without orientation": encoded(_RGB, "JPEG", exif=_exif(x010F="Canon")),
    "icc profile": encoded(_RGB, "JPEG", icc_profile=b"x" * 3000),
    "camera-like 640x480": calibration_jpegs(1)[0],
}


def _pillow_says(data: bytes) -> JpegHeader | None:
    with Image.open(io.BytesIO(data)) as img:
        plain = (
            img.format == "JPEG"
            and img.mode in ("L", "RGB")
            and not (img.info.get("progressive") or img.info.get("progression"))
            and img.getexif().get(0x0112, 1) == 1
        )
        return JpegHeader(*img.size) if plain else None


@pytest.mark.parametrize("name", list(CASES))
def test_the_reader_agrees_with_pillow_where_it_answers(name: str) -> None:
    data = CASES[name]
    expected = _pillow_says(data)
    assert scan_plain_jpeg(data) == expected
    assert scan_plain_jpeg(memoryview(data)) == expected  # the encoder's file parts are views
    assert gpu_decodable_jpeg(data, LIMITS) == expected


def test_files_it_does_not_follow_are_left_to_pillow() -> None:
    whole = CASES["rgb"]
    sof = whole.index(b"\xff\xc0")
    for broken in (
        b"",
        b"junk",
        encoded(_RGB, "PNG"),
        whole[:sof + 6],  # ends inside the frame header
        whole[:sof + 1] + b"\x00" + whole[sof + 2:],  # a marker that is not one
        whole[:sof + 4] + b"\x0c" + whole[sof + 5:],  # 12-bit samples
    ):
        assert scan_plain_jpeg(broken) is None
    # Two frames in one stream, or a DQT segment that is not whole tables.
    assert scan_plain_jpeg(whole[:sof] + whole[sof:sof + 19] + whole[sof:]) is None
    dqt = whole.index(b"\xff\xdb")
    length = int.from_bytes(whole[dqt + 2:dqt + 4], "big")
    cut = whole[:dqt + 2] + (length - 1).to_bytes(2, "big") + whole[dqt + 4:dqt + 1 + length]
    assert scan_plain_jpeg(cut + whole[dqt + 2 + length:]) is None


def test_the_quick_verdict_keeps_the_limits_and_the_end_marker() -> None:
    data = CASES["camera-like 640x480"]
    assert plain_jpeg(data, LIMITS) == JpegHeader(640, 480)
    assert plain_jpeg(data, ImageLimits(10_000_000, 640 * 480 - 1)) is None
    assert plain_jpeg(data, ImageLimits(len(data) - 1, 10_000_000)) is None
    assert plain_jpeg(data[:-2], LIMITS) is None  # no end marker: the CPU decoder decides
    assert plain_jpeg(data + b"\x00\x00", LIMITS) == JpegHeader(640, 480)
