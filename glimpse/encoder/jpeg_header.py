"""What the device JPEG path needs from a JPEG's header, read without Pillow.

When the GPU decodes, the host's only per-image work is to look at the header: is this a plain
upright baseline JPEG nvJPEG can take, and how large is it. Pillow's ``Image.open`` answers
that too, but builds an image object and parses every quantisation table into Python lists,
which alone would cap one process's images/s on a GPU (bench/bench_host.py). This walks the
marker segments up to the start of the scan.

It answers only for what it fully understands and leaves the rest to Pillow: ``None`` means
"ask Pillow" (which also names the error of a bad file), never "refuse".
"""

from __future__ import annotations

from dataclasses import dataclass

_SOI = b"\xff\xd8\xff"
_SOS = 0xDA
_DQT = 0xDB
_APP1 = 0xE1
_APP14 = 0xEE  # Adobe: colour transform flags, left to Pillow
# Start-of-frame markers (C0-CF but DHT C4, JPG C8, DAC CC); only baseline and extended
# sequential Huffman (C0, C1) are the plain kind: progressive, lossless and arithmetic-coded
# frames are left to Pillow, which routes them to the CPU decoder.
_SOF_ANY = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_SOF_PLAIN = frozenset((0xC0, 0xC1))
_STANDALONE = frozenset((0x01, *range(0xD0, 0xD8)))  # TEM and RSTn carry no length
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True, slots=True)
class JpegHeader:
    """What the GPU decoder needs to know of a JPEG it may decode without the CPU."""

    width: int
    height: int


def scan_plain_jpeg(data: bytes | bytearray | memoryview) -> JpegHeader | None:
    """Size of a baseline 8-bit greyscale or 3-component JPEG with no rotation in its EXIF
    (what Pillow opens as mode L or RGB, upright, not progressive); None when the data is
    anything else or anything this reader does not follow."""
    if data[: len(_SOI)] != _SOI:  # slices and indexes only: a memoryview has no startswith
        return None
    n = len(data)
    pos = 2
    size: JpegHeader | None = None
    seen_exif = False
    while True:
        if pos + 4 > n or data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker < 0xC0:
            return None
        length = (data[pos + 2] << 8) | data[pos + 3]
        start, end = pos + 4, pos + 2 + length
        if length < 2 or end > n:
            return None
        if marker == _SOS:
            break
        if marker in _SOF_ANY:
            if marker not in _SOF_PLAIN or size is not None or length < 8:
                return None
            components = data[start + 5]
            if data[start] != 8 or components not in (1, 3) or length != 8 + 3 * components:
                return None
            height = (data[start + 1] << 8) | data[start + 2]
            width = (data[start + 3] << 8) | data[start + 4]
            if not width or not height:
                return None
            size = JpegHeader(width, height)
        elif marker == _DQT:
            if not _tables_fit(data, start, end):
                return None
        elif marker == _APP1 and data[start : start + 6] == b"Exif\x00\x00":
            if not seen_exif:  # Pillow reads the first EXIF block
                seen_exif = True
                if _orientation(data, start + 6, end) != 1:
                    return None
        elif marker == _APP14:
            return None
        pos = end
    return size


def _tables_fit(data: bytes | bytearray | memoryview, start: int, end: int) -> bool:
    """The DQT segment is whole quantisation tables (Pillow refuses one that is not)."""
    while start < end:
        table_bytes = 65 if data[start] >> 4 == 0 else 129
        start += table_bytes
    return start == end


def _orientation(data: bytes | bytearray | memoryview, tiff: int, end: int) -> int | None:
    """The orientation tag of IFD0 (1 when absent); None when the block is not readable."""
    if end - tiff < 8:
        return None
    order = data[tiff:tiff + 2]
    if order == b"II":
        big = False
    elif order == b"MM":
        big = True
    else:
        return None

    def u16(at: int) -> int:
        return int.from_bytes(data[at:at + 2], "big" if big else "little")

    def u32(at: int) -> int:
        return int.from_bytes(data[at:at + 4], "big" if big else "little")

    if u16(tiff + 2) != 42:
        return None
    ifd = tiff + u32(tiff + 4)
    if ifd + 2 > end:
        return None
    count = u16(ifd)
    if ifd + 2 + 12 * count > end:
        return None
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        if u16(entry) == _EXIF_ORIENTATION:
            if u16(entry + 2) != 3 or u32(entry + 4) != 1:  # one SHORT, as it must be
                return None
            return u16(entry + 8)
    return 1
