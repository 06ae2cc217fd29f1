"""multipart/form-data request bodies parsed from bytes, for the hot upload paths.

Starlette's ``request.form()`` feeds the body through python-multipart's byte-by-byte state
machine with a callback per piece and writes every file into a SpooledTemporaryFile through
async calls; measured here that cost about 233 µs of event-loop CPU per 61 KiB image, which
alone caps one encoder process far below a GPU's rate. The upload routes bound their bodies
(a Content-Length check or the body-limit middleware) and read every file into memory anyway,
so :func:`parse_form` takes the whole body as bytes and splits it with a substring search (the
C library's ``memmem`` over the body's buffer past 4 KiB, ``bytes.find`` below): each part's
bytes are copied once (one slice of the body), nothing else touches them. Measured on 107 KiB
parts with a 32-character boundary: 4.3 µs to find the end of one with memmem, 11.9 µs with
``bytes.find`` (CPython's two-way search), and 4 µs for the copy. Data crafted to hold many
near-delimiters is searched by the regex engine after the first few, not by a Python loop.

For every body python-multipart accepts as RFC 7578 multipart/form-data, the parts are the ones
Starlette gives, in order, with the same names, filenames, content types and values (the
tests check it against Starlette's parser): Content-Disposition parameters are read the way
python-multipart reads them (quoted strings with ``\\"`` and ``\\\\`` escapes; the ``%22``,
``%0D``, ``%0A`` browsers write stay as they are, as in Starlette; ``filename*`` is ignored, as
RFC 7578 says), a part with a ``filename`` parameter (even an empty one) is a file, anything
else a text field decoded with the body's charset (UTF-8 unless the Content-Type names one,
Latin-1 when that fails). Where this parser differs it is stricter or follows RFC 2046: a body
that ends before its closing boundary is refused (python-multipart drops the unfinished part
silently), and a preamble before the first boundary line is ignored (python-multipart refuses
one that is more than blank lines). ``application/x-www-form-urlencoded`` bodies give their
fields as Starlette does; any other content type gives no parts, as Starlette's empty form.
"""

from __future__ import annotations

import codecs
import ctypes
import ctypes.util
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote_plus, unquote_to_bytes

from glimpse.contracts.errors import ErrorType, GlimpseError

# python-multipart's limits, so a body Starlette refuses for its size is refused here too.
MAX_BOUNDARY_BYTES = 256
MAX_PART_HEADERS = 8
MAX_HEADER_LINE_BYTES = 4096 + 128
# The longest header block that can be valid: MAX_PART_HEADERS full lines and the blank line.
_MAX_HEADER_BLOCK = MAX_PART_HEADERS * (MAX_HEADER_LINE_BYTES + 2) + 2

# RFC 9110 token characters: what a header name may be made of.
_TOKEN_BYTES = (
    b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)
# The Content-Disposition every client sends for a plain name (and filename); anything else
# takes the general parameter parser below, which gives the same answer for these.
_SIMPLE_DISPOSITION = re.compile(r'form-data; name="([^"\\;]*)"(?:; filename="([^"\\;]*)")?')

_PADDING = re.compile(rb"[ \t]*")  # RFC 2046 transport padding after a boundary

# Past this many bytes left to search, the delimiter is looked for with the C library's memmem
# (SIMD): 4.3 µs for one 107 KiB part against 11.9 µs for bytes.find (CPython's two-way
# search), measured here; below it the ctypes call costs more than it saves.
_MEMMEM_FROM = 4096

_CLOSE = -1  # what follows a boundary: the close delimiter
_NOT_A_DELIMITER = -2  # what follows a boundary: data that merely contains the boundary


@dataclass(frozen=True, slots=True)
class FormPart:
    """One part of a form body, in the order it came.

    A file (``filename`` is not None, possibly "") has its bytes in ``data`` (a read-only
    memoryview of the body when parsed with ``file_views``) and its part's Content-Type header,
    if any, in ``content_type``. A text field has ``filename`` and ``content_type`` None, its
    value in ``text`` and the bytes that value came from in ``data``.
    """

    name: str
    filename: str | None
    content_type: str | None
    data: bytes | memoryview
    text: str | None = None

    @property
    def is_file(self) -> bool:
        return self.filename is not None


def parse_form(
    body: bytes,
    content_type: str | None,
    *,
    max_files: int,
    max_fields: int,
    max_field_bytes: int,
    file_views: bool = False,
) -> list[FormPart]:
    """The parts of a form ``body`` sent with the ``content_type`` header, in order.

    More than ``max_files`` file parts is payload_too_large; more than ``max_fields`` text
    fields, a field over ``max_field_bytes``, a missing boundary or a malformed body is
    bad_request. Nothing else is raised, whatever the bytes.

    With ``file_views`` a file part's ``data`` is a read-only memoryview of ``body``, not a
    copy (the encoder's: its parts go on to one packing copy per batch); the body must then
    not change while the parts are in use.
    """
    media, params = parse_options_header(content_type or "")
    if media == "multipart/form-data":
        return _parse_multipart(
            body, params, max_files, max_fields, max_field_bytes, file_views
        )
    if media == "application/x-www-form-urlencoded":
        return _parse_urlencoded(body, max_fields, max_field_bytes)
    return []  # Starlette's form of any other body is empty


def _bad(why: str) -> GlimpseError:
    return GlimpseError(ErrorType.bad_request, f"The multipart body could not be parsed: {why}")


def _too_many_files(limit: int) -> GlimpseError:
    return GlimpseError(
        ErrorType.payload_too_large, f"Too many files in one request; the limit is {limit}."
    )


def _too_many_fields(limit: int) -> GlimpseError:
    return _bad(f"Too many fields. Maximum number of fields is {limit}.")


def _field_too_large(limit: int) -> GlimpseError:
    return _bad(f"Part exceeded maximum size of {_kib(limit)}KB.")


def _kib(limit: int) -> int:
    return int(limit / 1024)  # Starlette's rounding in its size messages


def _charset(name: str | None) -> str:
    try:
        return codecs.lookup(name or "utf-8").name
    except LookupError:
        return "latin-1"


def _decode(raw: bytes, charset: str) -> str:
    try:
        return raw.decode(charset)
    except (UnicodeDecodeError, LookupError):
        return raw.decode("latin-1")


def _parse_multipart(
    body: bytes,
    params: dict[str, str],
    max_files: int,
    max_fields: int,
    max_field_bytes: int,
    file_views: bool,
) -> list[FormPart]:
    boundary = params.get("boundary")
    if boundary is None:
        raise _bad("Missing boundary in multipart.")
    if not boundary or len(boundary) > MAX_BOUNDARY_BYTES or "\r" in boundary or "\n" in boundary:
        raise _bad(f"the boundary must be 1 to {MAX_BOUNDARY_BYTES} characters on one line.")
    if not body:
        return []  # as Starlette: an empty body is an empty form
    charset = _charset(params.get("charset"))
    dash_boundary = b"--" + boundary.encode("latin-1")
    delimiter = b"\r\n" + dash_boundary
    find = _finder(body, delimiter)
    view = memoryview(body).toreadonly() if file_views else None
    pos = _first_part(body, dash_boundary)
    parts: list[FormPart] = []
    files = fields = 0
    while pos != _CLOSE:
        disposition, part_type, data_start = _part_headers(body, pos)
        name, filename = _names(disposition, charset)
        if filename is not None:
            files += 1
            if files > max_files:
                raise _too_many_files(max_files)
        else:
            fields += 1
            if fields > max_fields:
                raise _too_many_fields(max_fields)
        # The part's data runs to the next delimiter: CRLF, the dash-boundary, then optional
        # padding and CRLF, or "--" for the last one. The boundary followed by anything else
        # is data (python-multipart reads it so too).
        search, misses = data_start, 0
        while True:
            if misses < 8:
                end = find(search)
            else:  # data made of near-delimiters: let the regex engine skip them, not Python
                found = _delimiter_pattern(delimiter).search(body, search)
                end = found.start() if found else -1
            if end == -1:
                raise _bad("the body ends before the closing boundary.")
            pos = _after_boundary(body, end + len(delimiter))
            if pos != _NOT_A_DELIMITER:
                break
            search, misses = end + 1, misses + 1
        if filename is not None:
            content_type = part_type.decode("latin-1") if part_type is not None else None
            # The one copy of the part's bytes, or none.
            data = view[data_start:end] if view is not None else body[data_start:end]
            parts.append(FormPart(name, filename, content_type, data))
        else:
            data = body[data_start:end]
            if len(data) > max_field_bytes:
                raise _field_too_large(max_field_bytes)
            parts.append(FormPart(name, None, None, data, _decode(data, charset)))
    return parts


def _load_memmem() -> Callable[..., int | None] | None:
    try:
        # PyDLL, not CDLL: the call keeps the GIL. A few µs of search are not worth handing
        # the GIL to another thread and waiting to get it back (futex calls, a context
        # switch: the event loop measured slower with CDLL).
        libc = ctypes.PyDLL(ctypes.util.find_library("c") or "libc.so.6")
        memmem = libc.memmem
    except (OSError, AttributeError):  # no C library with memmem: bytes.find does it all
        return None
    memmem.restype = ctypes.c_void_p
    memmem.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
    return memmem


_memmem = _load_memmem()


def _finder(body: bytes | bytearray, needle: bytes) -> Callable[[int], int]:
    """``body.find(needle, start)`` as a function of ``start``, by memmem over the body's own
    buffer (no copy) while more than _MEMMEM_FROM bytes are left."""
    if _memmem is None or len(body) < _MEMMEM_FROM:
        return lambda start: body.find(needle, start)
    keep: object
    if isinstance(body, bytes):
        keep = ctypes.c_char_p(body)  # points into the bytes object, which it keeps alive
        base = ctypes.cast(keep, ctypes.c_void_p).value
    else:
        try:
            keep = ctypes.c_char.from_buffer(body)  # its first byte (no array type per length)
        except TypeError:  # a read-only buffer that is not bytes
            return lambda start: body.find(needle, start)
        base = ctypes.addressof(keep)
    assert base is not None
    size, length, memmem = len(body), len(needle), _memmem

    def find(start: int, _keep: object = keep) -> int:
        if size - start < _MEMMEM_FROM:
            return body.find(needle, start)
        at = memmem(base + start, size - start, needle, length)
        return -1 if at is None else at - base

    return find


def _delimiter_pattern(delimiter: bytes) -> re.Pattern[bytes]:
    """The delimiter where it is one (what _after_boundary takes, or refuses, as one)."""
    return re.compile(re.escape(delimiter) + rb"(?:--|[ \t]*\r\n|[ \t]+)")


def _first_part(body: bytes, dash_boundary: bytes) -> int:
    """Where the first part's headers start (or _CLOSE), past any preamble. The first boundary
    in the body must start a line (python-multipart allows only blank lines before it)."""
    at = body.find(dash_boundary)
    if at == -1:
        raise _bad("the body does not hold the boundary given in the Content-Type header.")
    if at > 0 and body[at - 1] not in b"\r\n":
        raise _bad("the first boundary in the body does not start a line.")
    after = _after_boundary(body, at + len(dash_boundary))
    if after == _NOT_A_DELIMITER:
        if len(body) < at + len(dash_boundary) + 2:
            raise _bad("the body ends before the closing boundary.")
        raise _bad("the first boundary line has text after the boundary.")
    return after


def _after_boundary(body: bytes, at: int) -> int:
    """``at`` is just past a boundary: the next part's start, _CLOSE after the close delimiter,
    or _NOT_A_DELIMITER when the boundary is only part of the data."""
    if body.startswith(b"--", at):
        return _CLOSE
    padding = _PADDING.match(body, at)  # always matches, maybe nothing
    end = padding.end() if padding else at
    if body.startswith(b"\r\n", end):
        return end + 2
    if end > at:  # padding after a boundary cannot be data (RFC 2046), nor a delimiter
        raise _bad("a boundary line has text after the boundary.")
    return _NOT_A_DELIMITER


def _part_headers(body: bytes, start: int) -> tuple[bytes | None, bytes | None, int]:
    """The part's Content-Disposition (the last one) and Content-Type (the first one), as
    Starlette picks them, and where the part's data starts."""
    if body.startswith(b"\r\n", start):
        return None, None, start + 2  # no headers at all
    end = body.find(b"\r\n\r\n", start, start + _MAX_HEADER_BLOCK)
    if end == -1:
        if len(body) - start < _MAX_HEADER_BLOCK:
            raise _bad("the body ends inside a part's headers.")
        raise _bad("a part's headers are too long.")
    lines = body[start:end].split(b"\r\n")
    if len(lines) > MAX_PART_HEADERS:
        raise _bad(f"a part has more than {MAX_PART_HEADERS} headers.")
    disposition = part_type = None
    for line in lines:
        if len(line) > MAX_HEADER_LINE_BYTES:
            raise _bad(f"a part header is longer than {MAX_HEADER_LINE_BYTES} bytes.")
        name, colon, value = line.partition(b":")
        if not colon or not name or name.translate(None, _TOKEN_BYTES):
            raise _bad("a part header is not a 'Name: value' line.")
        if b"\r" in value:
            raise _bad("a part header has a carriage return inside.")
        name = name.lower()
        if name == b"content-disposition":
            disposition = value.lstrip(b" ")
        elif name == b"content-type" and part_type is None:
            part_type = value.lstrip(b" ")
    return disposition, part_type, end + 4


def _names(disposition: bytes | None, charset: str) -> tuple[str, str | None]:
    """The part's name and filename (None for a text field) from its Content-Disposition."""
    text = disposition.decode("latin-1") if disposition is not None else ""
    simple = _SIMPLE_DISPOSITION.fullmatch(text)
    if simple is not None:
        raw_name: str | None = simple.group(1)
        raw_filename: str | None = simple.group(2)
    else:
        _, options = parse_options_header(text)
        raw_name, raw_filename = options.get("name"), options.get("filename")
    if raw_name is None:
        raise _bad('The Content-Disposition header field "name" must be provided.')
    if charset == "utf-8" and raw_name.isascii():
        name = raw_name
    else:
        name = _decode(raw_name.encode("latin-1"), charset)
    filename = None if raw_filename is None else _decode(raw_filename.encode("latin-1"), charset)
    return name, filename


def parse_options_header(value: str) -> tuple[str, dict[str, str]]:
    """A header's value and its ``;`` parameters, read as python-multipart's function of the
    name reads them (Latin-1 text here, lower-cased type and parameter names; quoted values
    unquoted; ``name*`` parameters ignored; an old browser's full Windows path cut down to the
    filename)."""
    if not value:
        return "", {}
    if ";" not in value:
        return value.lower().strip(" \t"), {}
    media, *segments = _split_params(value)
    options: dict[str, str] = {}
    for segment in segments:
        key, _, val = segment.partition("=")
        if "*" in key:
            continue
        if len(val) >= 2 and val[0] == '"' and val[-1] == '"':
            val = val[1:-1].replace("\\\\", "\\").replace('\\"', '"')
        if key == "filename" and (val[1:3] == ":\\" or val[:2] == "\\\\"):
            val = val.split("\\")[-1]
        options[key] = val
    return media.lower(), options


def _split_params(s: str) -> list[str]:
    # The standard library's email.message._parseparam, as python-multipart vendors it: split
    # on ';' outside double quotes, lower-case each parameter name.
    s = ";" + s
    out: list[str] = []
    start = 0
    while s.find(";", start) == start:
        start += 1
        end = s.find(";", start)
        ind, diff = start, 0
        while end > 0:
            diff += s.count('"', ind, end) - s.count('\\"', ind, end)
            if diff % 2 == 0:
                break
            end, ind = ind, s.find(";", end + 1)
        if end < 0:
            end = len(s)
        i = s.find("=", start, end)
        if i == -1:
            segment = s[start:end]
        else:
            segment = s[start:i].rstrip(" \t").lower() + "=" + s[i + 1 : end].lstrip(" \t")
        out.append(segment.strip(" \t"))
        start = end
    return out


def _parse_urlencoded(body: bytes, max_fields: int, max_field_bytes: int) -> list[FormPart]:
    """``name=value&...`` fields, decoded as Starlette decodes them (Latin-1 text, then
    percent escapes as UTF-8 and '+' as a space)."""
    parts: list[FormPart] = []
    for pair in body.split(b"&"):
        if not pair:
            continue
        raw_name, _, raw_value = pair.partition(b"=")
        if len(raw_name) + len(raw_value) > max_field_bytes:
            raise _bad(f"Field exceeded maximum size of {_kib(max_field_bytes)}KB.")
        if len(parts) >= max_fields:
            raise _too_many_fields(max_fields)
        name = unquote_plus(raw_name.decode("latin-1"))
        value = unquote_plus(raw_value.decode("latin-1"))
        data = unquote_to_bytes(raw_value.replace(b"+", b" "))
        parts.append(FormPart(name, None, None, data, value))
    return parts
