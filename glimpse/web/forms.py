"""multipart/form-data bodies, split by python-multipart, as the list of parts the routes use.

The upload routes bound their bodies and hold every file in memory anyway, so the whole body
is handed to python-multipart's parser in one write; this adapter only collects its callbacks
into :class:`FormPart` objects and turns every refusal into a 4xx with the error body.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from glimpse.contracts.errors import ErrorType, GlimpseError


@dataclass(frozen=True, slots=True)
class FormPart:
    """One part of a form body, in the order it came: a file (``filename`` not None, maybe "")
    with its part's Content-Type, or a text field with its value in ``text``.

    ``data`` is a copy of the part, not a view of the body: views kept each whole body alive
    for the request and measured slower in the encoder (docs/encoder.md, "The library way").
    """

    name: str
    filename: str | None
    content_type: str | None
    data: bytes
    text: str | None = None

    @property
    def is_file(self) -> bool:
        return self.filename is not None


def _bad(why: str) -> GlimpseError:
    return GlimpseError(ErrorType.bad_request, f"The multipart body could not be parsed: {why}")


def _charset(params: dict[bytes, bytes]) -> str:
    """The charset names and values are decoded with: UTF-8 unless the Content-Type names
    another that keeps ASCII as it is (the framing is ASCII), else 415."""
    name = params.get(b"charset", b"utf-8").decode("latin-1")
    try:
        if "ascii-safe".encode(name) == b"ascii-safe":
            return codecs.lookup(name).name
    except (LookupError, UnicodeError, ValueError):
        pass
    raise GlimpseError(
        ErrorType.unsupported_media_type,
        f"The form's charset {name[:40]!r} is not supported; send UTF-8.",
    )


def _decode(raw: bytes, charset: str) -> str:
    try:
        return raw.decode(charset)
    except UnicodeError:  # Starlette's fallback for bytes the charset cannot read
        return raw.decode("latin-1")


# Browsers and httpx write '"', CR and LF in a part's name and filename as exactly these
# escapes (the WHATWG multipart/form-data encoding); any other '%' is the name's own.
_NAME_ESCAPES = re.compile("%22|%0D|%0A")
_NAME_CHARS = {"%22": '"', "%0D": "\r", "%0A": "\n"}


def _decode_name(raw: bytes, charset: str) -> str:
    """A part's name or filename as the sender's form had it."""
    return _NAME_ESCAPES.sub(lambda m: _NAME_CHARS[m[0]], _decode(raw, charset))


def parse_form(
    body: bytes, content_type: str | None, *, max_files: int, max_fields: int, max_field_bytes: int
) -> list[FormPart]:
    """The parts of a multipart/form-data ``body``, in order (none for any other body).

    More than ``max_files`` files is 413; more than ``max_fields`` text fields, a field over
    ``max_field_bytes``, a bad charset (415) or a malformed or unfinished body is a 4xx.
    """
    media, params = parse_options_header(content_type)
    if media != b"multipart/form-data" or not body:
        return []
    boundary = params.get(b"boundary")
    if not boundary:
        raise _bad("Missing boundary in multipart.")
    charset = _charset(params)
    parts: list[FormPart] = []
    count = {"files": 0, "fields": 0}
    headers: dict[bytes, bytes] = {}
    field: list[bytes] = []
    value: list[bytes] = []
    chunks: list[bytes] = []
    ended = False

    def on_header_end() -> None:
        key = b"".join(field).lower()
        if key not in headers or key != b"content-type":  # the last disposition, first type
            headers[key] = b"".join(value)
        field.clear()
        value.clear()

    def on_part_end() -> None:
        _, options = parse_options_header(headers.get(b"content-disposition"))
        if b"name" not in options:
            raise _bad('The Content-Disposition header field "name" must be provided.')
        name = _decode_name(options[b"name"], charset)
        data = b"".join(chunks)  # the one slice itself when the part came in one piece
        if b"filename" in options:
            count["files"] += 1
            if count["files"] > max_files:
                raise GlimpseError(ErrorType.payload_too_large,
                                   f"Too many files in one request; the limit is {max_files}.")
            kind = headers.get(b"content-type")
            parts.append(FormPart(name, _decode_name(options[b"filename"], charset),
                                  kind.decode("latin-1") if kind is not None else None, data))
        else:
            count["fields"] += 1
            if count["fields"] > max_fields:
                raise _bad(f"Too many fields. Maximum number of fields is {max_fields}.")
            if len(data) > max_field_bytes:
                raise _bad(f"Part exceeded maximum size of {max_field_bytes // 1024}KB.")
            parts.append(FormPart(name, None, None, data, _decode(data, charset)))
        headers.clear()
        chunks.clear()

    def on_end() -> None:
        nonlocal ended
        ended = True

    try:
        parser = MultipartParser(boundary, {
            "on_header_field": lambda d, s, e: field.append(d[s:e]),
            "on_header_value": lambda d, s, e: value.append(d[s:e]),
            "on_header_end": on_header_end,
            "on_part_data": lambda d, s, e: chunks.append(d[s:e]),
            "on_part_end": on_part_end,
            "on_end": on_end,
        })
        parser.write(body)
    except FormParserError as exc:
        raise _bad(f"{exc}.") from None
    if not ended:
        raise _bad("the body ends before the closing boundary.")
    return parts
