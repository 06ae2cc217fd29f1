"""What an image says about itself, read at ingest into its meta: when it was taken, by which
camera and lens, where, its orientation and type, its folder, and its IPTC/XMP keywords, title
and description (issue 26, "Extract at ingest").

Every value comes from bytes anyone can write, so each field is read on its own: a value that
is missing, of the wrong type, out of range or that makes Pillow raise leaves that field out,
never the image (one log line per image names the fields skipped). Text is cut so the whole
meta stays far inside the index's limits (16 KiB, depth 8; contracts/index.py).

Field names are flat, so both index backends can filter on them (glimpse/index/filters.py):

- ``taken``: local wall-clock time, ISO ``YYYY-MM-DDTHH:MM:SS``; ``taken_ts``: the same wall
  clock as Unix seconds read as if it were UTC (what date filters compare, so "June" means the
  photo's own June wherever it was taken); ``taken_offset``: the UTC offset when EXIF gives one;
  ``taken_source``: "exif" or "mtime".
- ``camera_make``, ``camera_model`` as written; ``camera``: the words of both, lower case
  (what the camera filter matches); ``lens``.
- ``lat``, ``lon`` (degrees, WGS 84); ``orientation`` (EXIF 1-8); ``file_type`` ("jpeg", ...).
- ``folder``: the path's folder ("" at the top); ``keywords`` (lower case, unique), ``title``,
  ``description``.
"""

from __future__ import annotations

import calendar
import io
import logging
import math
import posixpath
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
from PIL import ExifTags, Image, ImageFile, IptcImagePlugin

from glimpse.contracts.errors import ErrorType, GlimpseError
from glimpse.contracts.filters import camera_words
from glimpse.contracts.index import MAX_META_BYTES
from glimpse.imaging import DEFAULT_MAX_PIXELS

logger = logging.getLogger("glimpse.gateway")

MAX_TEXT = 500  # characters of a title, description, camera or lens
MAX_KEYWORD = 64  # characters of one keyword
MAX_KEYWORDS = 50
MAX_XMP_BYTES = 256 * 1024  # an XMP packet past this is not read (real ones are a few KiB)
# The folder is kept whole up to this; a longer one is cut (and then matches prefixes only).
MAX_FOLDER = 1024
# Of the index's meta limit, what these fields may take: the rest is the gateway's own fields.
MAX_META_SHARE = MAX_META_BYTES // 2

_EXIF_DATE = re.compile(r"^\s*(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_OFFSET = re.compile(r"^\s*([+-])(\d{2}):(\d{2})\s*$")
# XMP is XML, read with patterns instead of a parser: nothing in it is expanded or fetched.
_XMP_BAG = re.compile(r"<dc:subject\b[^>]*>(.*?)</dc:subject>", re.S)
_XMP_ALT = {
    "title": re.compile(r"<dc:title\b[^>]*>(.*?)</dc:title>", re.S),
    "description": re.compile(r"<dc:description\b[^>]*>(.*?)</dc:description>", re.S),
}
_XMP_LI = re.compile(r"<rdf:li\b[^>]*>(.*?)</rdf:li>", re.S)
_XML_ENTITIES = {"&lt;": "<", "&gt;": ">", "&quot;": '"', "&apos;": "'", "&amp;": "&"}
_XML_ENTITY = re.compile("|".join(_XML_ENTITIES))
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")

_IPTC_KEYWORDS = (2, 25)
_IPTC_TITLE = (2, 5)
_IPTC_CAPTION = (2, 120)


def wall_clock_ts(when: datetime) -> float:
    """A naive wall-clock time as Unix seconds read as UTC (what ``taken_ts`` holds)."""
    return float(calendar.timegm(when.timetuple()))


def _text(value: Any, limit: int = MAX_TEXT) -> str | None:
    """Printable text from an EXIF/IPTC value (bytes decoded as UTF-8, else Latin-1), cut to
    ``limit``; None when empty or not text."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            value = value.decode("latin-1")
    if not isinstance(value, str):
        return None
    value = _CONTROL.sub(" ", value).strip()
    return value[:limit] or None


def _exif_time(value: Any, offset: Any) -> tuple[datetime, str | None] | None:
    text = _text(value, 64)
    match = _EXIF_DATE.match(text or "")
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups())
    when = datetime(year, month, day, hour, minute, second)  # ValueError on month 13 and such
    if not 1800 <= when.year <= 2200:
        raise ValueError(f"year {when.year}")
    off = _OFFSET.match(_text(offset, 16) or "")
    if off is None:
        return when, None
    sign, hours, minutes = off.groups()
    if int(hours) > 14 or int(minutes) > 59:
        return when, None
    return when, f"{sign}{hours}:{minutes}"


def _rational(value: Any) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("not a finite number")
    return number


def _degrees(dms: Any, ref: Any, limit: float) -> float:
    d, m, s = (_rational(v) for v in dms)
    degrees = d + m / 60.0 + s / 3600.0
    if _text(ref, 4) in ("S", "W"):
        degrees = -degrees
    if not -limit <= degrees <= limit:
        raise ValueError(f"{degrees} is out of range")
    return round(degrees, 7)


def _xmp_text(raw: str) -> str:
    return _XML_ENTITY.sub(lambda m: _XML_ENTITIES[m[0]], re.sub(r"<[^>]*>", "", raw))


def _xmp_packet(image: Image.Image) -> str | None:
    for name in ("xmp", "XML:com.adobe.xmp"):
        raw = image.info.get(name)
        if isinstance(raw, (bytes, str)) and 0 < len(raw) <= MAX_XMP_BYTES:
            return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return None


class _Reader:
    """The fields of one image, each read by its own step; a step that raises is skipped."""

    def __init__(self, image: Image.Image) -> None:
        self.image = image
        self.meta: dict[str, Any] = {}
        self.skipped: list[str] = []
        self.exif = image.getexif()

    def step(self, name: str, read: Callable[[], None]) -> None:
        try:
            read()
        except Exception:  # hostile bytes raise anything from anywhere in Pillow
            self.skipped.append(name)

    def taken(self) -> None:
        ifd = self.exif.get_ifd(ExifTags.IFD.Exif)
        found = _exif_time(ifd.get(ExifTags.Base.DateTimeOriginal),
                           ifd.get(ExifTags.Base.OffsetTimeOriginal))
        if found is None:  # some cameras write only the IFD0 DateTime
            found = _exif_time(self.exif.get(ExifTags.Base.DateTime),
                               ifd.get(ExifTags.Base.OffsetTime))
        if found is not None:
            when, offset = found
            self.meta.update(taken=when.isoformat(timespec="seconds"), taken_ts=wall_clock_ts(when),
                             taken_source="exif")
            if offset is not None:
                self.meta["taken_offset"] = offset

    def camera(self) -> None:
        make = _text(self.exif.get(ExifTags.Base.Make), 100)
        model = _text(self.exif.get(ExifTags.Base.Model), 100)
        if make:
            self.meta["camera_make"] = make
        if model:
            self.meta["camera_model"] = model
        # Models often repeat the make ("Canon" + "Canon EOS R5"): said once.
        both = model if make and model and model.lower().startswith(make.lower()) else " ".join(
            v for v in (make, model) if v)
        if both and camera_words(both):
            self.meta["camera"] = camera_words(both)

    def lens(self) -> None:
        ifd = self.exif.get_ifd(ExifTags.IFD.Exif)
        lens = _text(ifd.get(ExifTags.Base.LensModel), 200)
        if lens:
            self.meta["lens"] = lens

    def gps(self) -> None:
        gps = self.exif.get_ifd(ExifTags.IFD.GPSInfo)
        if not gps:
            return
        lat = _degrees(gps[ExifTags.GPS.GPSLatitude], gps.get(ExifTags.GPS.GPSLatitudeRef), 90)
        lon = _degrees(gps[ExifTags.GPS.GPSLongitude], gps.get(ExifTags.GPS.GPSLongitudeRef), 180)
        self.meta.update(lat=lat, lon=lon)

    def orientation(self) -> None:
        value = self.exif.get(ExifTags.Base.Orientation)
        if value is not None:
            number = int(value)
            if not 1 <= number <= 8:
                raise ValueError(f"orientation {number}")
            self.meta["orientation"] = number

    def file_type(self) -> None:
        if self.image.format:
            self.meta["file_type"] = self.image.format.lower()

    def iptc(self) -> None:
        if not isinstance(self.image, ImageFile.ImageFile):
            return
        info = IptcImagePlugin.getiptcinfo(self.image) or {}
        raw = info.get(_IPTC_KEYWORDS)
        words = raw if isinstance(raw, list) else [raw] if raw is not None else []
        self._keywords(_text(w, MAX_KEYWORD) for w in words)
        for name, tag in (("title", _IPTC_TITLE), ("description", _IPTC_CAPTION)):
            value = _text(info.get(tag))
            if value:
                self.meta.setdefault(name, value)

    def xmp(self) -> None:
        packet = _xmp_packet(self.image)
        if packet is None:
            return
        bag = _XMP_BAG.search(packet)
        if bag is not None:
            self._keywords(_text(_xmp_text(li), MAX_KEYWORD) for li in _XMP_LI.findall(bag[1]))
        for name, pattern in _XMP_ALT.items():
            found = pattern.search(packet)
            if found is not None:
                items = _XMP_LI.findall(found[1]) or [found[1]]
                value = _text(_xmp_text(items[0]))
                if value:
                    self.meta.setdefault(name, value)

    def _keywords(self, words: Any) -> None:
        keywords: list[str] = self.meta.setdefault("keywords", [])
        for word in words:
            if word and word.lower() not in keywords and len(keywords) < MAX_KEYWORDS:
                keywords.append(word.lower())
        if not keywords:
            del self.meta["keywords"]


def folder_of(path: str) -> str:
    """The folder of a relative path ("" for a file at the top), cut to MAX_FOLDER."""
    return posixpath.dirname(path)[:MAX_FOLDER]


def from_mtime(mtime: float) -> dict[str, Any]:
    """The date fields from a file's modification time (Unix seconds), in the gateway's local
    time: the fallback when EXIF has no date."""
    when = datetime.fromtimestamp(mtime).replace(microsecond=0)
    return {"taken": when.isoformat(timespec="seconds"), "taken_ts": wall_clock_ts(when),
            "taken_source": "mtime"}


def extract_metadata(
    data: bytes, path: str, mtime: float | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> dict[str, Any]:
    """The meta fields of one image's bytes (see the module docstring); never raises.

    An image over ``max_pixels`` (the encoder's cap: it will be refused) is not read at all:
    Pillow decodes a whole PNG to reach chunks after its pixels, so a bomb would cost its
    decoded size here (tests/reliability/test_images.py)."""
    meta: dict[str, Any] = {"folder": folder_of(path)}
    skipped: list[str] = []
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > max_pixels:
                raise ValueError("over the pixel cap")
            reader = _Reader(image)
            for name in ("taken", "camera", "lens", "gps", "orientation", "file_type", "iptc",
                         "xmp"):
                reader.step(name, getattr(reader, name))
            meta.update(reader.meta)
            skipped = reader.skipped
    except Exception:  # not readable at all: the encoder judges the image; only the path is kept
        skipped = ["all"]
    if "taken" not in meta and mtime is not None:
        try:
            meta.update(from_mtime(mtime))
        except (ValueError, OverflowError, OSError):
            skipped.append("mtime")
    _fit(meta)
    if skipped:
        logger.info("metadata of %s: skipped unreadable %s", path[:200], ", ".join(skipped))
    return meta


def _fit(meta: dict[str, Any]) -> None:
    """Drop keywords, then the description and title, until the fields take at most
    MAX_META_SHARE bytes of JSON (text of 4-byte characters is four times its length)."""
    while len(orjson.dumps(meta)) > MAX_META_SHARE:
        keywords = meta.get("keywords")
        if keywords:
            keywords.pop()
            if not keywords:
                del meta["keywords"]
        elif "description" in meta:
            del meta["description"]
        elif "title" in meta:
            del meta["title"]
        else:
            return


def extract_all(
    files: list[tuple[bytes, str, float | None]], max_pixels: int = DEFAULT_MAX_PIXELS
) -> list[dict[str, Any]]:
    """:func:`extract_metadata` of each (bytes, path, mtime): one thread hop per request."""
    return [extract_metadata(data, path, mtime, max_pixels) for data, path, mtime in files]


MTIMES_DOC = (
    "Optional: a JSON object of each file's relative path to its modification time in Unix "
    "seconds, the date taken of a file whose EXIF has none."
)


def parse_mtimes(text: str | None) -> dict[str, float]:
    """The ``mtimes`` form field of /ingest (MTIMES_DOC); a 422 naming it when malformed."""
    if text is None:
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict) or not all(
        isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t < 2**35
        for t in value.values()
    ):
        raise GlimpseError(
            ErrorType.validation_error,
            "Invalid request: mtimes: send a JSON object of relative path to Unix seconds "
            "(a number from 0).",
        )
    return {str(path): float(t) for path, t in value.items()}
