"""Metadata read at ingest: each field from real EXIF, IPTC and XMP written here, the mtime
fallback, and hostile values (a bad field is left out, the others kept; nothing raises)."""

from __future__ import annotations

import io
import random
import struct
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from PIL import ExifTags, Image, TiffImagePlugin

from glimpse.contracts.errors import GlimpseError
from glimpse.contracts.index import meta_problem
from glimpse.gateway.ingest import ingest_files
from glimpse.gateway.media import MediaStore
from glimpse.gateway.metadata import (
    MAX_META_SHARE,
    extract_metadata,
    parse_mtimes,
    wall_clock_ts,
)

Base, GPS, IFD = ExifTags.Base, ExifTags.GPS, ExifTags.IFD
R = TiffImagePlugin.IFDRational


def jpeg(exif: dict[int, Any] | None = None, sub: dict[int, Any] | None = None,
         gps: dict[int, Any] | None = None, xmp: bytes | None = None,
         iptc: list[tuple[int, bytes]] | None = None) -> bytes:
    data = Image.Exif()
    for tag, value in (exif or {}).items():
        data[tag] = value
    if sub:
        data.get_ifd(IFD.Exif).update(sub)
    if gps:
        data.get_ifd(IFD.GPSInfo).update(gps)
    out = io.BytesIO()
    extra: dict[str, Any] = {"xmp": xmp} if xmp else {}
    Image.new("RGB", (32, 24), "teal").save(out, format="JPEG", exif=data, **extra)
    raw = out.getvalue()
    if iptc:
        raw = raw[:2] + _app13(iptc) + raw[2:]
    return raw


def _app13(records: list[tuple[int, bytes]]) -> bytes:
    """An APP13 "Photoshop 3.0" segment holding IPTC-IIM record 2 datasets."""
    iim = b"".join(b"\x1c\x02" + bytes([tag]) + struct.pack(">H", len(v)) + v for tag, v in records)
    if len(iim) % 2:
        iim += b"\x00"
    resource = b"8BIM" + struct.pack(">H", 0x0404) + b"\x00\x00" + struct.pack(">I", len(iim)) + iim
    payload = b"Photoshop 3.0\x00" + resource
    return b"\xff\xed" + struct.pack(">H", len(payload) + 2) + payload


GOOD_GPS = {
    GPS.GPSLatitudeRef: "S", GPS.GPSLatitude: (R(33), R(51), R(3072, 100)),
    GPS.GPSLongitudeRef: "E", GPS.GPSLongitude: (R(151), R(12), R(3600, 100)),
}


def test_exif_fields() -> None:
    meta = extract_metadata(
        jpeg(exif={Base.Make: "Canon", Base.Model: "Canon EOS R5", Base.Orientation: 6},
             sub={Base.DateTimeOriginal: "2023:06:14 10:22:03", Base.OffsetTimeOriginal: "+02:00",
                  Base.LensModel: "RF24-105mm F4 L IS USM"},
             gps=GOOD_GPS),
        "Holidays/2023/IMG_1.jpg",
    )
    assert meta["taken"] == "2023-06-14T10:22:03"
    assert meta["taken_ts"] == wall_clock_ts(datetime(2023, 6, 14, 10, 22, 3))
    assert meta["taken_offset"] == "+02:00" and meta["taken_source"] == "exif"
    assert (meta["camera_make"], meta["camera_model"]) == ("Canon", "Canon EOS R5")
    assert meta["camera"] == ["canon", "eos", "r5"]  # the make said once
    assert meta["lens"] == "RF24-105mm F4 L IS USM"
    assert meta["lat"] == pytest.approx(-33.8585333) and meta["lon"] == pytest.approx(151.21)
    assert meta["orientation"] == 6 and meta["file_type"] == "jpeg"
    assert meta["folder"] == "Holidays/2023"


def test_iptc_and_xmp_keywords_title_description() -> None:
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description>'
           b"<dc:subject><rdf:Bag><rdf:li>Beach</rdf:li><rdf:li>Sand &amp; Sea</rdf:li>"
           b"</rdf:Bag></dc:subject>"
           b'<dc:title><rdf:Alt><rdf:li xml:lang="x-default">XMP title</rdf:li></rdf:Alt>'
           b"</dc:title><dc:description><rdf:Alt><rdf:li>A long day</rdf:li></rdf:Alt>"
           b"</dc:description></rdf:Description></rdf:RDF></x:xmpmeta>")
    iptc = [(25, b"Zanzibar"), (25, b"Stone Town"), (5, b"IPTC title"),
            (120, "Caf\u00e9 by the sea".encode())]
    meta = extract_metadata(jpeg(xmp=xmp, iptc=iptc), "a.jpg")
    assert meta["keywords"] == ["zanzibar", "stone town", "beach", "sand & sea"]
    assert meta["title"] == "IPTC title"  # IPTC read first; XMP only fills what is missing
    assert meta["description"] == "Caf\u00e9 by the sea"
    assert meta["folder"] == ""


def test_mtime_is_the_fallback_date() -> None:
    mtime = datetime(2021, 3, 4, 5, 6, 7).timestamp()  # local time, as the gateway reads it
    meta = extract_metadata(jpeg(), "x/y.jpg", mtime=mtime)
    assert (meta["taken"], meta["taken_source"]) == ("2021-03-04T05:06:07", "mtime")
    exif = extract_metadata(jpeg(sub={Base.DateTimeOriginal: "2019:01:02 03:04:05"}), "y.jpg",
                            mtime=mtime)
    assert (exif["taken"], exif["taken_source"]) == ("2019-01-02T03:04:05", "exif")
    assert "taken" not in extract_metadata(jpeg(), "z.jpg")


@pytest.mark.parametrize(
    ("kwargs", "missing"),
    [
        ({"sub": {Base.DateTimeOriginal: "2023:13:45 99:99:99"}}, "taken"),
        ({"sub": {Base.DateTimeOriginal: "0000:00:00 00:00:00"}}, "taken"),
        ({"gps": {**GOOD_GPS, GPS.GPSLatitude: (R(1, 0), R(0), R(0))}}, "lat"),
        ({"gps": {**GOOD_GPS, GPS.GPSLatitude: (R(95), R(0), R(0))}}, "lat"),
        ({"gps": {GPS.GPSLatitude: (R(10),)}}, "lat"),
        ({"exif": {Base.Orientation: 99}}, "orientation"),
        ({"exif": {Base.Make: "\x01\x02\x03"}}, "camera_make"),
    ],
)
def test_a_bad_value_leaves_out_its_field_only(kwargs: dict[str, Any], missing: str) -> None:
    meta = extract_metadata(jpeg(exif={Base.Model: "Pixel 7", **kwargs.pop("exif", {})},
                                 **kwargs), "p/q.jpg")
    assert missing not in meta
    assert meta["camera_model"] == "Pixel 7" and meta["folder"] == "p"


def test_bytes_that_are_no_image_keep_the_folder() -> None:
    assert extract_metadata(b"not an image at all", "a/b.jpg", mtime=0.0)["folder"] == "a"


def test_mutated_exif_never_raises_and_stays_storable() -> None:
    """Random byte flips in a JPEG full of metadata: every answer is storable meta."""
    base = jpeg(exif={Base.Make: "Canon", Base.Model: "X", Base.Orientation: 1},
                sub={Base.DateTimeOriginal: "2023:06:14 10:22:03"}, gps=GOOD_GPS,
                iptc=[(25, b"k")])
    rng = random.Random(26)
    for _ in range(300):
        raw = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            raw[rng.randrange(2, min(len(raw), 600))] = rng.randrange(256)
        meta = extract_metadata(bytes(raw), "f/g.jpg")
        assert meta_problem(meta) is None


def test_huge_text_is_cut_to_the_meta_share() -> None:
    words = [("\U0001f600" * 40 + str(i)).encode() for i in range(200)]
    meta = extract_metadata(jpeg(iptc=[(25, w) for w in words] + [(120, b"d" * 5000)]), "a.jpg")
    assert len(orjson.dumps(meta)) <= MAX_META_SHARE
    assert 0 < len(meta["keywords"]) <= 50 and len(meta["description"]) == 500


async def test_ingest_stores_the_fields_in_each_items_meta(tmp_path: Path) -> None:
    """Through ingest_files, with the upstream fakes of test_ingest.py."""
    from tests.unit.gateway.test_ingest import Upstreams, state_with, upload

    upstreams = Upstreams()
    state = state_with(MediaStore(tmp_path), upstreams)
    shot = jpeg(exif={Base.Make: "Google", Base.Model: "Pixel 7"},
                sub={Base.DateTimeOriginal: "2023:06:14 10:22:03"})
    mtime = datetime(2020, 1, 2, 3, 4, 5).timestamp()
    answers = await ingest_files(state, [upload("Trips/Rome/a.jpg", shot), upload("b.jpg", jpeg())],
                                 mtimes={"b.jpg": mtime, "a.jpg": 0.0})
    assert [a["status"] for a in answers] == ["added", "added"]
    first, second = (item["meta"] for item in upstreams.added)
    assert first["camera"] == ["google", "pixel", "7"] and first["folder"] == "Trips/Rome"
    assert (first["taken"], first["taken_source"]) == ("2023-06-14T10:22:03", "exif")
    assert first["thumbnail_type"] == "image/webp"  # the gateway's own fields stay
    assert (second["taken"], second["taken_source"]) == ("2020-01-02T03:04:05", "mtime")


@pytest.mark.parametrize(
    "text", ["[1]", '{"a.jpg": "noon"}', '{"a.jpg": -1}', "{", '{"a.jpg": true}'])
def test_bad_mtimes_are_a_422_naming_the_field(text: str) -> None:
    with pytest.raises(GlimpseError) as caught:
        parse_mtimes(text)
    assert caught.value.error_type == "validation_error" and "mtimes" in caught.value.message


def test_mtimes_parse() -> None:
    assert parse_mtimes(None) == {}
    assert parse_mtimes('{"a/b.jpg": 1600000000, "c.jpg": 1.5}') == {"a/b.jpg": 1.6e9, "c.jpg": 1.5}
