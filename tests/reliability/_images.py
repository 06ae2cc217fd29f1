"""Hostile and odd images, generated in the test (nothing binary is committed).

Bombs are written by hand, chunk by chunk, so building a 20,000 x 20,000 PNG never holds its
pixels in memory: the file is a few tens of kilobytes, the decoded image would be gigabytes.
"""

from __future__ import annotations

import io
import struct
import zlib
from functools import cache

import numpy as np
from PIL import Image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@cache
def png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid one-colour (black, 1-bit greyscale) PNG of width x height pixels."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)  # filter byte 0, then packed bits
    comp = zlib.compressobj(9)
    parts = []
    block = row * 256
    full, rest = divmod(height, 256)
    for _ in range(full):
        parts.append(comp.compress(block))
    parts.append(comp.compress(row * rest))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


@cache
def gif_bomb(width: int = 65_535, height: int = 65_535) -> bytes:
    """A GIF whose screen and one frame declare width x height, with a tiny LZW stream."""
    header = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0)  # 2-colour table
    palette = b"\x00\x00\x00\xff\xff\xff"
    descriptor = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0)
    # LZW minimum code size 2: clear (4), a few zero pixels, end (5), packed LSB-first.
    lzw = bytes([0x02, 0x04, 0x84, 0x8C, 0x2D, 0x00])
    return header + palette + descriptor + lzw + b"\x00" + b"\x3b"


def jpeg_bytes(img: Image.Image, **save: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **save)
    return buf.getvalue()


def png_bytes(img: Image.Image, **save: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **save)
    return buf.getvalue()


def save_bytes(img: Image.Image, fmt: str, **save: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


@cache
def jpeg_header_bomb(width: int = 10_000, height: int = 10_000) -> bytes:
    """A small real JPEG whose frame header (SOF0) is patched to claim width x height."""
    data = bytearray(jpeg_bytes(Image.new("RGB", (16, 16), (200, 30, 30)), quality=90))
    sof = data.find(b"\xff\xc0")
    assert sof > 0, "PIL wrote no baseline SOF0 marker"
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def gradient(size: tuple[int, int] = (96, 64), seed: int = 0) -> Image.Image:
    """An asymmetric RGB picture (so a rotation changes what a model sees)."""
    w, h = size
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None].repeat(w, 1)
    arr = np.stack([x, y, 255 - x], axis=2)
    arr[: h // 3, : w // 4] = (250, 250, 20)  # a yellow block in the top-left corner
    arr += rng.normal(0, 4, arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def exif_rotated_jpeg(orientation: int = 6, size: tuple[int, int] = (96, 64)) -> bytes:
    """A JPEG whose stored pixels are ``size`` but whose EXIF says to rotate them."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg_bytes(gradient(size), quality=95, exif=exif.tobytes())


def upright_of_exif_rotated(orientation: int = 6, size: tuple[int, int] = (96, 64)) -> bytes:
    """What a viewer shows for :func:`exif_rotated_jpeg`, stored upright (no EXIF)."""
    from PIL import ImageOps

    exif = Image.Exif()
    exif[0x0112] = orientation
    img = gradient(size)
    img.info["exif"] = exif.tobytes()
    img.getexif()[0x0112] = orientation
    upright = ImageOps.exif_transpose(img)
    return jpeg_bytes(upright, quality=95)


def odd_valid_images() -> dict[str, tuple[bytes, str]]:
    """Valid images in modes a collection really holds: name -> (bytes, content type)."""
    base = gradient()
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    palette_t = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette_t.info["transparency"] = 0
    grey16 = Image.fromarray(
        (np.linspace(0, 65535, 96 * 64).reshape(64, 96)).astype(np.uint16)
    )  # PIL mode I;16
    return {
        "cmyk.jpg": (jpeg_bytes(base.convert("CMYK"), quality=90), "image/jpeg"),
        "grey.jpg": (jpeg_bytes(base.convert("L")), "image/jpeg"),
        "progressive.jpg": (jpeg_bytes(base, progressive=True), "image/jpeg"),
        "exif6.jpg": (exif_rotated_jpeg(6), "image/jpeg"),
        "exif3.jpg": (exif_rotated_jpeg(3), "image/jpeg"),
        "exif8.jpg": (exif_rotated_jpeg(8), "image/jpeg"),
        "grey16.png": (png_bytes(grey16), "image/png"),
        "palette.png": (png_bytes(base.convert("P", palette=Image.Palette.ADAPTIVE)), "image/png"),
        "palette_transparent.png": (png_bytes(palette_t), "image/png"),
        "rgba.png": (png_bytes(rgba), "image/png"),
        "la.png": (png_bytes(base.convert("LA")), "image/png"),
        "bilevel.png": (png_bytes(base.convert("1")), "image/png"),
        "rgba.webp": (save_bytes(rgba, "WEBP"), "image/webp"),
        "animated.gif": (
            save_bytes(base.convert("P"), "GIF", save_all=True,
                       append_images=[base.rotate(90).convert("P")]),
            "image/gif",
        ),
        "rgb.bmp": (save_bytes(base, "BMP"), "image/bmp"),
        "cmyk.tiff": (save_bytes(base.convert("CMYK"), "TIFF"), "image/tiff"),
        "one_pixel.png": (png_bytes(Image.new("RGB", (1, 1), (1, 2, 3))), "image/png"),
        "tall_strip.png": (png_bytes(Image.new("RGB", (40, 1280), (9, 9, 9))), "image/png"),
    }


def malformed_images(seed: int = 0) -> dict[str, tuple[bytes, str]]:
    """Bytes that are no usable image: name -> (bytes, claimed content type)."""
    rng = np.random.default_rng(seed)
    jpg = jpeg_bytes(gradient(), quality=90)
    png = png_bytes(gradient())
    bad_crc = bytearray(png)
    bad_crc[40] ^= 0xFF
    return {
        "zero.jpg": (b"", "image/jpeg"),
        "random.jpg": (rng.bytes(4096), "image/jpeg"),
        "random.png": (rng.bytes(100), "image/png"),
        "truncated_half.jpg": (jpg[: len(jpg) // 2], "image/jpeg"),
        "truncated_header.jpg": (jpg[:20], "image/jpeg"),
        "truncated_half.png": (png[: len(png) // 2], "image/png"),
        "truncated_sig.png": (png[:8], "image/png"),
        "bad_crc.png": (bytes(bad_crc), "image/png"),
        "text.png": (b"this is not an image\n" * 10, "image/png"),
        "html.jpg": (b"<html><body>hello</body></html>", "image/jpeg"),
        "svg.svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
                    "image/svg+xml"),
        "eps.eps": (
            b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "application/postscript"
        ),
        "ico.ico": (save_bytes(gradient((32, 32)), "ICO"), "image/x-icon"),
        "zero_size_png_header.png": (
            b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0))
            + _png_chunk(b"IEND", b""),
            "image/png",
        ),
    }


def bombs() -> dict[str, bytes]:
    """Files that declare (or decode to) more pixels than any sane limit."""
    return {
        "png_20000x20000.png": png_bomb(),
        "png_100mp.png": png_bomb(10_000, 10_000),
        "gif_65535x65535.gif": gif_bomb(),
        "jpeg_100mp_header.jpg": jpeg_header_bomb(10_000, 10_000),
        "jpeg_65500x65500_header.jpg": jpeg_header_bomb(65_500, 65_500),
    }


# PNG colour types by what a worst case needs: (colour type, bit depth, bytes per pixel row
# unit); a palette gets a 2-entry PLTE and, with "trns", a tRNS chunk.
_PNG_KINDS: dict[str, tuple[int, int]] = {
    "bilevel": (0, 1),
    "grey": (0, 8),
    "grey16": (0, 16),
    "rgb": (2, 8),
    "rgb16": (2, 16),
    "rgba": (6, 8),
    "palette": (3, 8),
    "palette_trns": (3, 8),
}
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 6: 4}


@cache
def blank_png(width: int, height: int, kind: str = "grey") -> bytes:
    """A valid all-zero PNG of ``kind`` (see _PNG_KINDS), written as a zlib stream of zero rows
    a few at a time, so a 60-megapixel RGBA file never exists as pixels here."""
    colour, depth = _PNG_KINDS[kind]
    row = bytes(1 + (width * _PNG_CHANNELS[colour] * depth + 7) // 8)
    comp = zlib.compressobj(9)
    rows_per_block = max(1, (1 << 22) // len(row))
    block = row * rows_per_block
    parts = []
    full, rest = divmod(height, rows_per_block)
    for _ in range(full):
        parts.append(comp.compress(block))
    parts.append(comp.compress(row * rest))
    parts.append(comp.flush())
    chunks = [_png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))]
    if colour == 3:
        chunks.append(_png_chunk(b"PLTE", b"\x00\x00\x00\xff\xff\xff"))
        if kind == "palette_trns":
            chunks.append(_png_chunk(b"tRNS", b"\x00"))
    chunks += [_png_chunk(b"IDAT", b"".join(parts)), _png_chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def tiff_bytes(width: int, height: int, *, bits: int = 32, sample_format: int = 3,
               samples: int = 1, compression: int = 1, strip: bytes | None = None,
               offsets_type: int = 4) -> bytes:
    """A little-endian one-strip TIFF written by hand: float samples by default (SampleFormat
    3), the strip of zeros unless given (uncompressed, or a zlib stream with compression 8);
    ``offsets_type`` is the TIFF type of the StripOffsets entry (4 = LONG, as it should be)."""
    if strip is None:
        raw = bytes(width * height * samples * bits // 8)
        strip = zlib.compress(raw, 9) if compression == 8 else raw
    tags = [(256, 4, width), (257, 4, height), (258, 3, bits), (259, 3, compression),
            (262, 3, 2 if samples >= 3 else 1), (273, offsets_type, 0), (277, 3, samples),
            (278, 4, height), (279, 4, len(strip)), (339, 3, sample_format)]
    data_at = 8 + 2 + 12 * len(tags) + 4
    out = bytearray(b"II*\x00" + struct.pack("<IH", 8, len(tags)))
    for tag, kind, value in tags:
        if tag == 273:
            value = data_at
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, 1) + packed
    return bytes(out + b"\x00\x00\x00\x00" + strip)


def float_tiffs() -> dict[str, bytes]:
    """Issue 25 F8, float TIFFs: one a decoder takes, and broken ones whose StripOffsets entry
    has a type Pillow reads as a float, a fraction, text or bytes (the gateway's thumbnail
    raised TypeError: the whole ingest request answered 500)."""
    import numpy as np

    good = save_bytes(Image.fromarray(np.linspace(0, 1, 64 * 48, dtype=np.float32)
                                      .reshape(48, 64)), "TIFF")
    out = {"float32.tif": good, "float32_nan.tif": tiff_bytes(
        64, 48, strip=np.full(64 * 48, np.nan, np.float32).tobytes())}
    for name, kind in (("float", 11), ("double", 12), ("rational", 5), ("srational", 10),
                       ("ascii", 2), ("undefined", 7)):
        out[f"float32_offsets_{name}.tif"] = tiff_bytes(64, 48, offsets_type=kind)
    out["float32_truncated.tif"] = good[: len(good) // 2]
    out["float64.tif"] = tiff_bytes(64, 48, bits=64)
    out["float32_deflate_corrupt.tif"] = tiff_bytes(64, 48, compression=8, strip=b"x\x9c junk")
    return out


def mistyped_exif_jpeg(orientation: int = 6) -> bytes:
    """Issue 25 F4: a JPEG whose EXIF stores ResolutionUnit (0x0128) as BYTE instead of SHORT,
    one byte off what Pillow writes (found by mutating Pillow's own output)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x0128] = 2
    data = jpeg_bytes(gradient((40, 20)), quality=90, exif=exif.tobytes())
    at = data.find(b"\x01\x28\x00\x03")  # the tag, then type SHORT (big-endian, as Pillow writes)
    assert at > 0, "Pillow wrote no ResolutionUnit tag"
    return data[: at + 2] + b"\x00\x01" + data[at + 4:]


def long_thin_pngs() -> dict[str, bytes]:
    """Issue 25 F3 and F2: strips whose area is small but whose resize to the model's input
    would cost gigabytes (30000x1) or overflow (60000000x1, within the pixel cap)."""
    return {
        "strip_30000x1.png": blank_png(30_000, 1),
        "strip_1x30000.png": blank_png(1, 30_000),
        "strip_60000000x1.png": blank_png(60_000_000, 1),
    }


def tiff_entries(data: bytes) -> tuple[list[int], str]:
    """Offsets of the 12-byte entries of the first TIFF IFD in ``data`` (a TIFF file, or the
    EXIF block of a JPEG, PNG or WebP) and its byte order ('<' or '>'); none if there is no
    readable one."""
    for magic, order in ((b"II*\x00", "<"), (b"MM\x00*", ">")):
        start = data.find(magic)
        if start < 0 or start + 8 > len(data):
            continue
        ifd = start + struct.unpack_from(order + "I", data, start + 4)[0]
        if ifd + 2 > len(data):
            continue
        count = struct.unpack_from(order + "H", data, ifd)[0]
        entries = [ifd + 2 + 12 * i for i in range(count) if ifd + 14 + 12 * i <= len(data)]
        return entries, order
    return [], "<"


def retyped_tag(data: bytes, entry: int, order: str, kind: int, count: int | None) -> bytes:
    """``data`` with the TIFF entry at ``entry`` given another type (and count)."""
    out = bytearray(data)
    struct.pack_into(order + "H", out, entry + 2, kind)
    if count is not None:
        struct.pack_into(order + "I", out, entry + 4, count)
    return bytes(out)


def resized_header(data: bytes, width: int, height: int) -> bytes:
    """``data`` whose header declares width x height, the pixel data left as it was: a PNG's
    IHDR (its CRC fixed, so the decoder believes it), a JPEG's frame header, a WebP's canvas,
    a TIFF's ImageWidth and ImageLength. Other bytes come back unchanged."""
    out = bytearray(data)
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR" and len(data) >= 33:
        struct.pack_into(">II", out, 16, width & 0xFFFFFFFF, height & 0xFFFFFFFF)
        struct.pack_into(">I", out, 29, zlib.crc32(bytes(out[12:29])))
    elif data.startswith(b"\xff\xd8"):
        for sof in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
            at = data.find(sof)
            if 0 < at <= len(data) - 9:
                struct.pack_into(">HH", out, at + 5, height & 0xFFFF, width & 0xFFFF)
                break
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        chunk = data[12:16]
        if chunk == b"VP8X" and len(data) >= 30:
            out[24:27] = ((width - 1) & 0xFFFFFF).to_bytes(3, "little")
            out[27:30] = ((height - 1) & 0xFFFFFF).to_bytes(3, "little")
        elif chunk == b"VP8 " and len(data) >= 30:
            struct.pack_into("<HH", out, 26, width & 0x3FFF, height & 0x3FFF)
        elif chunk == b"VP8L" and len(data) >= 25:
            bits = ((width - 1) & 0x3FFF) | (((height - 1) & 0x3FFF) << 14)
            bits |= int.from_bytes(data[21:25], "little") & ~((1 << 28) - 1)
            out[21:25] = bits.to_bytes(4, "little")
    else:
        entries, order = tiff_entries(data)
        for entry in entries:
            tag, kind = struct.unpack_from(order + "HH", data, entry)
            if tag in (256, 257):
                value = width if tag == 256 else height
                if kind == 3:
                    struct.pack_into(order + "HH", out, entry + 8, value & 0xFFFF, 0)
                else:
                    struct.pack_into(order + "I", out, entry + 8, value & 0xFFFFFFFF)
    return bytes(out)


def fuzz_seeds() -> dict[str, bytes]:
    """Valid files of the four formats the image fuzzer mutates (JPEG, PNG, WebP, TIFF), in
    the modes and with the EXIF blocks cameras and editors write."""
    import numpy as np

    base = gradient((48, 32), seed=5)
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation
    exif[0x0128] = 2  # resolution unit
    exif[0x011A] = 72.0  # x resolution (a RATIONAL)
    exif[0x010F] = "camera maker"
    exif_bytes = exif.tobytes()
    palette_t = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette_t.info["transparency"] = 0
    grey16 = Image.fromarray(np.linspace(0, 65535, 48 * 32, dtype=np.uint16).reshape(32, 48))
    floats = Image.fromarray(np.linspace(0, 1, 48 * 32, dtype=np.float32).reshape(32, 48))
    return {
        "exif.jpg": jpeg_bytes(base, quality=85, exif=exif_bytes),
        "progressive.jpg": jpeg_bytes(base, progressive=True),
        "cmyk.jpg": jpeg_bytes(base.convert("CMYK")),
        "rgb.png": png_bytes(base),
        "rgba_exif.png": png_bytes(rgba, exif=exif_bytes),
        "palette_trns.png": png_bytes(palette_t),
        "grey16.png": png_bytes(grey16),
        "lossy.webp": save_bytes(base, "WEBP", quality=70),
        "lossless_alpha.webp": save_bytes(rgba, "WEBP", lossless=True),
        "exif.webp": save_bytes(base, "WEBP", exif=exif_bytes),
        "rgb.tif": save_bytes(base, "TIFF"),
        "deflate.tif": save_bytes(base, "TIFF", compression="tiff_deflate"),
        "float.tif": save_bytes(floats, "TIFF"),
        "cmyk.tif": save_bytes(base.convert("CMYK"), "TIFF"),
    }


# docs/encoder.md, "Decoding memory": the most an image at the pixel cap raises the
# encoder's resident memory, per decode thread, in bytes per pixel of the cap (measured worst:
# a float TIFF deflated in one strip, 8.4, its image beside libtiff's strip buffer).
DECODE_BYTES_PER_PIXEL = 10


class PeakGrowth:
    """How far a process's resident memory rose above where it was on entry, read from the
    kernel's high-water mark (VmHWM, reset on entry through clear_refs), so no short peak is
    missed; where that reset is not allowed, a 5 ms sampler's peak."""

    def __init__(self, pid: int) -> None:
        from tests.reliability._upload import RssSampler

        self.pid = pid
        self.sampler = RssSampler(pid)
        self.exact = False
        self.growth = 0
        self.peak = 0

    def _status(self, field: str) -> int:
        with open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {field} in /proc/{self.pid}/status")

    def __enter__(self) -> PeakGrowth:
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as fh:
                fh.write("5")
            self.exact = True
        except OSError:
            self.exact = False
        self.baseline = self._status("VmRSS")
        self.sampler.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sampler.__exit__(*exc)
        peak = self.sampler.peak
        if self.exact:
            peak = max(peak, self._status("VmHWM"))
        self.peak = peak
        self.growth = max(0, peak - self.baseline)


def _zlib_zeros(total: int) -> bytes:
    """A zlib stream of ``total`` zero bytes, compressed a few megabytes at a time."""
    comp = zlib.compressobj(9)
    block = bytes(1 << 22)
    full, rest = divmod(total, len(block))
    parts = [comp.compress(block) for _ in range(full)]
    parts += [comp.compress(bytes(rest)), comp.flush()]
    return b"".join(parts)


@cache
def cap_worst_cases(max_pixels: int) -> dict[str, bytes]:
    """The images that cost the most to decode at the pixel cap: long and thin at the most
    accepted aspect (32:1) and tall and thin, RGBA, palette with transparency, 16-bit grey and
    RGB, bilevel, the square RGB, CMYK JPEG, and a float TIFF deflated in one strip. None holds
    its pixels here but the JPEG, which Pillow must encode."""
    import math

    short = math.isqrt(max_pixels // 32)
    wide = (32 * short, short)
    side = math.isqrt(max_pixels)
    cmyk = Image.new("CMYK", wide, (0, 40, 80, 0))
    return {
        "rgba_32to1_wide.png": blank_png(*wide, "rgba"),
        "rgba_32to1_tall.png": blank_png(short, 32 * short, "rgba"),
        "palette_trns_32to1.png": blank_png(*wide, "palette_trns"),
        "grey16_32to1.png": blank_png(*wide, "grey16"),
        "rgb16_32to1.png": blank_png(*wide, "rgb16"),
        "bilevel_32to1.png": blank_png(*wide, "bilevel"),
        "rgb_square.png": blank_png(side, side, "rgb"),
        "cmyk_32to1.jpg": jpeg_bytes(cmyk, quality=90),
        "float_32to1_deflate.tif": tiff_bytes(*wide, compression=8,
                                              strip=_zlib_zeros(wide[0] * wide[1] * 4)),
    }
