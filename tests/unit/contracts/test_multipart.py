"""parse_form gives what Starlette's form parser gives, and a 4xx GlimpseError for bad bodies.

Starlette (python-multipart underneath) is the reference: every property test parses the same
body with both, Starlette through ``Request.form()`` over a fake ``receive`` that hands the body
over in chunks, as a server would.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from python_multipart.multipart import parse_options_header as reference_options_header
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from glimpse.contracts.errors import ErrorType, GlimpseError
from glimpse.contracts.multipart import FormPart, parse_form, parse_options_header
from glimpse.gateway.http import multipart_body

PROPERTY = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
BIG = 1 << 20
Parsed = list[tuple[str, str | None, str | None, str | bytes]]


def ours(
    body: bytes,
    content_type: str | None,
    max_files: int = 1000,
    max_fields: int = 1000,
    max_field_bytes: int = BIG,
) -> Parsed:
    parts = parse_form(
        body,
        content_type,
        max_files=max_files,
        max_fields=max_fields,
        max_field_bytes=max_field_bytes,
    )
    out: Parsed = []
    for p in parts:
        assert isinstance(p, FormPart)
        if p.is_file:
            assert p.text is None
            out.append((p.name, p.filename, p.content_type, p.data))
        else:
            assert p.filename is None and p.content_type is None and p.text is not None
            out.append((p.name, None, None, p.text))
    return out


def starlette(
    body: bytes,
    content_type: str | None,
    max_files: int = 1000,
    max_fields: int = 1000,
    max_field_bytes: int = BIG,
    chunk: int = 65536,
) -> Parsed:
    """Starlette's form of the body (MultiPartException when it refuses it)."""
    chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)]

    async def parse() -> Parsed:
        pending = iter(chunks)

        async def receive() -> dict[str, Any]:
            piece = next(pending, None)
            return {"type": "http.request", "body": piece or b"", "more_body": piece is not None}

        headers = [(b"content-length", str(len(body)).encode())]
        if content_type is not None:
            headers.append((b"content-type", content_type.encode("latin-1")))
        request = Request({"type": "http", "method": "POST", "headers": headers}, receive)
        form = await request.form(
            max_files=max_files, max_fields=max_fields, max_part_size=max_field_bytes
        )
        out: Parsed = []
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                out.append((name, value.filename, value.content_type, await value.read()))
            else:
                out.append((name, None, None, value))
        await form.close()
        return out

    return asyncio.run(parse())


def error_of(body: bytes, content_type: str | None, **limits: int) -> GlimpseError:
    with pytest.raises(GlimpseError) as caught:
        parse_form(
            body,
            content_type,
            max_files=limits.get("max_files", 1000),
            max_fields=limits.get("max_fields", 1000),
            max_field_bytes=limits.get("max_field_bytes", BIG),
        )
    return caught.value


CT = "multipart/form-data; boundary=XyZ"


def part(headers: str, data: bytes, boundary: str = "XyZ") -> bytes:
    return f"--{boundary}\r\n{headers}\r\n\r\n".encode() + data + b"\r\n"


def close(boundary: str = "XyZ") -> bytes:
    return f"--{boundary}--\r\n".encode()


# Examples ---------------------------------------------------------------------------------


def test_fields_and_files_in_order() -> None:
    body = (
        part('Content-Disposition: form-data; name="k"', b"12")
        + part(
            'Content-Disposition: form-data; name="files"; filename="a.jpg"\r\n'
            "Content-Type: image/jpeg",
            b"\xff\xd8 \r\n--XyZ- \r\n--Xy\r\n",
        )
        + part('content-disposition: form-data; name="files"; filename="b.png"', b"")
        + part('Content-Disposition: form-data; name="note"', "é 日本".encode())
        + close()
    )
    expected: Parsed = [
        ("k", None, None, "12"),
        ("files", "a.jpg", "image/jpeg", b"\xff\xd8 \r\n--XyZ- \r\n--Xy\r\n"),
        ("files", "b.png", None, b""),
        ("note", None, None, "é 日本"),
    ]
    assert ours(body, CT) == expected == starlette(body, CT)
    parsed = parse_form(body, CT, max_files=2, max_fields=2, max_field_bytes=10)
    assert parsed[1] == FormPart("files", "a.jpg", "image/jpeg", expected[1][3])
    assert parsed[0].data == b"12" and parsed[0].text == "12" and not parsed[0].is_file
    # file_views: the same parts, each file's bytes a read-only view of the body, no copy.
    views = parse_form(bytearray(body), CT, max_files=2, max_fields=2, max_field_bytes=10,
                       file_views=True)
    assert [(p.name, p.filename, p.content_type, p.text) for p in views] == [
        (p.name, p.filename, p.content_type, p.text) for p in parsed
    ]
    for view, copy in zip(views, parsed, strict=True):
        assert bytes(view.data) == copy.data
        assert isinstance(view.data, memoryview) == view.is_file
    assert isinstance(views[1].data, memoryview) and views[1].data.readonly
    assert views[1].data.obj is views[2].data.obj  # both parts look into the one body


@pytest.mark.parametrize(
    "content_type",
    [
        'multipart/form-data; boundary="XyZ"',
        "Multipart/Form-Data;boundary=XyZ",
        "multipart/form-data; charset=utf-8; boundary=XyZ ",
        'multipart/form-data; BOUNDARY="XyZ"; other="a;b"',
    ],
)
def test_the_boundary_is_read_from_the_content_type(content_type: str) -> None:
    body = part('Content-Disposition: form-data; name="a"', b"1") + close()
    assert ours(body, content_type) == [("a", None, None, "1")] == starlette(body, content_type)


def test_an_empty_filename_is_a_file_and_filename_star_is_ignored() -> None:
    body = (
        part('Content-Disposition: form-data; name="f"; filename=""', b"x")
        + part("Content-Disposition: form-data; name=\"g\"; filename*=UTF-8''a.jpg", b"y")
        + part('Content-Disposition: form-data; name="h"; filename="C:\\dir\\x.jpg"', b"z")
        + close()
    )
    expected: Parsed = [("f", "", None, b"x"), ("g", None, None, "y"), ("h", "x.jpg", None, b"z")]
    assert ours(body, CT) == expected == starlette(body, CT)


def test_quoted_names_keep_browser_escapes_as_starlette_does() -> None:
    # Browsers write '"' as %22 and CR/LF as %0D/%0A (WHATWG); Starlette leaves them escaped.
    pieces, content_type = multipart_body(
        {'say "hi"\n': "v1", "naïve;name": "v2"},
        [("files", ('a"b\r.jpg', b"\r\n--\r\n", "image/jpeg"))],
    )
    body = b"".join(pieces)
    expected: Parsed = [
        ("say %22hi%22%0A", None, None, "v1"),
        ("naïve;name", None, None, "v2"),
        ("files", "a%22b%0D.jpg", "image/jpeg", b"\r\n--\r\n"),
    ]
    assert ours(body, content_type) == expected == starlette(body, content_type)
    # Backslash escapes in a quoted string are undone.
    body = part('Content-Disposition: form-data; name="a\\"b\\\\c"', b"1") + close()
    assert ours(body, CT) == [('a"b\\c', None, None, "1")] == starlette(body, CT)


def test_preamble_epilogue_and_padding() -> None:
    parts = part('Content-Disposition: form-data; name="a"', b"1")
    body = b"\r\n\r\n" + parts + b"--XyZ--\r\nepilogue --XyZ\r\n junk"
    assert ours(body, CT) == [("a", None, None, "1")] == starlette(body, CT)
    # A preamble (RFC 2046) is skipped here; python-multipart refuses one.
    assert ours(b"This is a preamble.\r\n" + body, CT) == [("a", None, None, "1")]
    # Transport padding after a delimiter.
    body = b"--XyZ \t\r\n" + parts[len(b"--XyZ\r\n") :] + b"--XyZ  \r\n" + parts[7:] + close()
    assert ours(body, CT) == [("a", None, None, "1")] * 2


def test_data_full_of_near_delimiters() -> None:
    # Past a few near misses in one part the search goes on in the regex engine.
    data = b"\r\n--XyZx" * 20 + b"\r\n--XyZ-x\r\n--XyZ\rx--XyZ" * 5 + b"\r\n--XyZ"[:-1]
    first = part('Content-Disposition: form-data; name="f"; filename="a"', data)
    body = first + part('Content-Disposition: form-data; name="g"', data[:50]) + close()
    expected: Parsed = [("f", "a", None, data), ("g", None, None, data[:50].decode())]
    assert ours(body, CT) == expected == starlette(body, CT)
    error = error_of(first[:-2] + b"\r\n--XyZ \tx\r\n" + close(), CT)
    assert error.message.endswith("a boundary line has text after the boundary.")
    error = error_of(first, CT)
    assert error.message.endswith("the body ends before the closing boundary.")


@pytest.mark.parametrize("as_bytearray", [False, True])
def test_large_parts_are_split_the_same_by_memmem(
    as_bytearray: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past 4 KiB left to search, the delimiter is found by the C library's memmem over the
    # body's own buffer (bytes, or the bytearray the encoder reads into): the same parts as
    # bytes.find gives and as Starlette gives, with near-delimiters on both sides of the 4 KiB
    # switch and a part ending just before it.
    import glimpse.contracts.multipart as multipart

    if multipart._memmem is None:
        pytest.skip("no memmem in this C library")
    rng = random.Random(7)
    near = [b"\r\n--XyZx", b"\r\n--XyZ-x", b"\r\n--XyZ\rx", b"--XyZ", b"\r\n--XyZ"[:-1]]
    body = b""
    expected: Parsed = []
    for i, size in enumerate([150_000, 3_000, 70_000, 4_090, 9_000, 1, 200_000]):
        chunks = [rng.randbytes(rng.randrange(1, 3000)) for _ in range(size // 1500 + 1)]
        data = b"".join(c + rng.choice(near) for c in chunks)[:size]
        body += part(f'Content-Disposition: form-data; name="f{i}"; filename="{i}.jpg"\r\n'
                     "Content-Type: image/jpeg", data)
        expected.append((f"f{i}", f"{i}.jpg", "image/jpeg", data))
    body += close()
    given_body: Any = bytearray(body) if as_bytearray else body
    assert ours(given_body, CT) == expected
    monkeypatch.setattr(multipart, "_memmem", None)
    assert ours(given_body, CT) == expected == starlette(body, CT)
    assert error_of(body[:-len(close()) - 2], CT).message.endswith(
        "the body ends before the closing boundary.")


def test_other_bodies() -> None:
    assert ours(b"", CT) == [] == starlette(b"", CT)
    assert ours(b"--XyZ--", CT) == [] == starlette(b"--XyZ--", CT)
    assert ours(b'{"a": 1}', "application/json") == [] == starlette(b'{"a": 1}', "application/json")
    assert ours(b"a=1", None) == [] == starlette(b"a=1", None)
    encoded = b"k=3&&files=x+y%2B%C3%A9&flag&=v&bad=%ZZ%C3"
    url = "application/x-www-form-urlencoded"
    assert ours(encoded, url) == starlette(encoded, url)
    assert ours(encoded, url)[1] == ("files", None, None, "x y+é")
    fields = parse_form(encoded, url, max_files=0, max_fields=9, max_field_bytes=99)
    assert fields[1].data == "x y+é".encode()


def test_the_charset_of_the_content_type_decodes_names_and_values() -> None:
    body = (
        part('Content-Disposition: form-data; name="café"', "crème".encode("latin-1"))
        + part('Content-Disposition: form-data; name="x"', b"\xff\xfe")
        + close()
    )
    for params in ("; charset=latin-1", "; charset=nonsense", ""):
        content_type = CT + params
        assert ours(body, content_type) == starlette(body, content_type)
    # UTF-8 by default, Latin-1 for bytes that are not UTF-8.
    assert ours(body, CT)[1] == ("x", None, None, "ÿþ")


# Errors -----------------------------------------------------------------------------------


GOOD = part('Content-Disposition: form-data; name="files"; filename="a.jpg"', b"abc")
FIELD = part('Content-Disposition: form-data; name="encoding"', b"base64")


@pytest.mark.parametrize(
    ("body", "content_type", "why"),
    [
        (GOOD + close(), "multipart/form-data", "Missing boundary in multipart."),
        (GOOD + close(), 'multipart/form-data; boundary=""', "the boundary must be 1 to 256"),
        (GOOD + close(), "multipart/form-data; boundary=" + "b" * 257, "the boundary must be"),
        (b"garbage", CT, "the body does not hold the boundary"),
        (GOOD + close(), "multipart/form-data; boundary=other", "does not hold the boundary"),
        (b"x--XyZ\r\n" + GOOD + close(), CT, "the first boundary in the body does not start"),
        (b"--XyZx\r\n" + GOOD + close(), CT, "the first boundary line has text after"),
        (GOOD, CT, "the body ends before the closing boundary."),
        (GOOD + b"--XyZ", CT, "the body ends before the closing boundary."),
        (GOOD[:-2], CT, "the body ends before the closing boundary."),
        (b"--XyZ\r\nContent-Disposition: form-data", CT, "the body ends inside a part's headers"),
        (part("Content-Type: text/plain", b"x") + close(), CT, 'header field "name" must be'),
        (part('Content-Disposition: form-data; filename="a"', b"x") + close(), CT, '"name"'),
        (b"--XyZ\r\n\r\nx\r\n--XyZ--", CT, 'header field "name" must be provided'),
        (part("Content-Disposition form-data", b"x") + close(), CT, "not a 'Name: value' line"),
        (part("Bad Name: x", b"x") + close(), CT, "not a 'Name: value' line"),
        (part("X: a\rb", b"x") + close(), CT, "a carriage return inside"),
        (part("\r\n".join(["X: y"] * 9), b"x") + close(), CT, "more than 8 headers"),
        (part("X: " + "y" * 4300, b"x") + close(), CT, "longer than 4224 bytes"),
        (b"--XyZ\r\n" + b"X: y\r\n" * 6000, CT, "headers are too long"),
        (GOOD + b"--XyZ x\r\n" + close(), CT, "text after the boundary"),
    ],
)
def test_bad_bodies_are_bad_requests(body: bytes, content_type: str, why: str) -> None:
    error = error_of(body, content_type)
    assert error.error_type == ErrorType.bad_request.value and error.status == 400
    assert error.message.startswith("The multipart body could not be parsed: ")
    assert why in error.message


def test_limits() -> None:
    body = GOOD * 3 + FIELD * 2 + close()
    assert len(ours(body, CT, max_files=3, max_fields=2, max_field_bytes=6)) == 5
    error = error_of(body, CT, max_files=2)
    assert (error.error_type, error.status) == (ErrorType.payload_too_large.value, 413)
    assert error.message == "Too many files in one request; the limit is 2."
    error = error_of(body, CT, max_fields=1)
    assert error.error_type == ErrorType.bad_request.value
    assert error.message == (
        "The multipart body could not be parsed: "
        "Too many fields. Maximum number of fields is 1."
    )
    # Starlette's words for a field over the limit; files are not limited by it.
    big = part('Content-Disposition: form-data; name="k"', b"x" * 2049) + close()
    error = error_of(big, CT, max_field_bytes=2048)
    assert error.message == (
        "The multipart body could not be parsed: Part exceeded maximum size of 2KB."
    )
    assert ours(GOOD + close(), CT, max_field_bytes=1)[0][3] == b"abc"
    # A part named files without a filename is a field, and counts as one.
    assert ours(FIELD.replace(b"encoding", b"files") + close(), CT) == [
        ("files", None, None, "base64")
    ]
    url = "application/x-www-form-urlencoded"
    error = error_of(b"a=1&b=2&c=3", url, max_fields=2)
    assert error.message.endswith("Too many fields. Maximum number of fields is 2.")
    error = error_of(b"a=" + b"x" * 1024, url, max_field_bytes=1024)
    assert error.message.endswith("Field exceeded maximum size of 1KB.")


# Properties -------------------------------------------------------------------------------

NAME_CHARS = st.sampled_from(list('az09 _-.;=:,"\\%/éß日\U0001f600\t'))
NAMES = st.text(NAME_CHARS, max_size=8)
Limits = dict[str, int]


def browser(value: str) -> str:
    """What browsers (and glimpse/gateway/http.py) write for a name in Content-Disposition."""
    return value.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


@st.composite
def disposition_param(draw: st.DrawFn, key: str) -> tuple[str, str | None]:
    """A Content-Disposition parameter and the value it carries (None when python-multipart
    reads it otherwise: a backslash before the closing quote ends the quoted string late)."""
    value = draw(NAMES)
    style = draw(st.sampled_from(["browser", "backslash", "bare"]))
    if style == "bare" and value.isalnum():
        return f"{key}={value}", value
    if style == "backslash":
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{key}="{escaped}"', None if "\\" in value else value
    return f'{key}="{browser(value)}"', None if "\\" in value else browser(value)


@st.composite
def part_data(draw: st.DrawFn, boundary: bytes) -> bytes:
    """Bytes that look like the framing around them: CRLFs, dashes, pieces of the boundary,
    the boundary after CRLF followed by what does not make it a delimiter."""
    pieces = [
        b"\r\n",
        b"\r",
        b"\n",
        b"--",
        b"-",
        boundary,
        boundary[:-1],
        b"\r\n--" + boundary[:-1],
        b"\r\n--" + boundary + b"x",
        b"\r\n--" + boundary + b"-x",
        b"\r\n--" + boundary + b"\rx",
    ]
    chosen = draw(st.lists(st.one_of(st.sampled_from(pieces), st.binary(max_size=12)), max_size=8))
    return b"".join(chosen)


def holds_a_delimiter(data: bytes, boundary: bytes) -> bool:
    """Whether a delimiter ends the part inside ``data`` (CRLF--boundary, then CRLF, padding
    or "--"), or ``data`` runs into the one after it (it ends in "\\r", say)."""
    delimiter = b"\r\n--" + boundary
    framed = data + delimiter + b"\r\n"
    at = framed.find(delimiter)
    while at < len(data):
        if framed[at + len(delimiter) : at + len(delimiter) + 2] in (b"\r\n", b"--") or framed[
            at + len(delimiter) : at + len(delimiter) + 1
        ] in (b" ", b"\t"):
            return True
        at = framed.find(delimiter, at + 1)
    return at != len(data)


@st.composite
def form_bodies(draw: st.DrawFn) -> tuple[bytes, str, Parsed | None, int]:
    """A multipart body, its Content-Type, its parts (None where a part's data holds a
    delimiter or a name is read otherwise) and the chunk size Starlette gets it in."""
    boundary = draw(st.sampled_from(["b", "--", "XyZ", "a'()+_,-./:=?", "x" * 70]))
    charset = draw(st.sampled_from([None, "utf-8", "latin-1"]))
    content_type = f'multipart/form-data; boundary="{boundary}"'
    if charset:
        content_type += f"; charset={charset}"
    codec = "latin-1" if charset == "latin-1" else "utf-8"
    body = draw(st.sampled_from([b"", b"\r\n", b"\r\n\r\n"]))
    expected: Parsed | None = []
    for _ in range(draw(st.integers(0, 5))):
        name_param, name = draw(disposition_param("name"))
        is_file = draw(st.booleans())
        params = [name_param]
        filename: str | None = None
        if is_file:
            filename_param, filename = draw(disposition_param("filename"))
            params.append(filename_param)
        headers = ["Content-Disposition: form-data; " + "; ".join(params)]
        content = draw(st.sampled_from([None, "image/jpeg", "text/plain; charset=utf-8"]))
        if content is not None:
            headers.append(f"Content-Type: {content}")
        if draw(st.booleans()):  # header names are case-insensitive
            headers = [h.replace("Content-Disposition:", "content-disposition:") for h in headers]
            headers = [h.replace("Content-Type:", "CONTENT-TYPE:") for h in headers]
        data = draw(part_data(boundary.encode()))
        body += f"--{boundary}\r\n".encode() + "\r\n".join(headers).encode() + b"\r\n\r\n"
        body += data + b"\r\n"
        if (
            expected is None
            or name is None
            or (is_file and filename is None)
            or holds_a_delimiter(data, boundary.encode())
        ):
            expected = None
            continue
        name = name.encode().decode(codec)
        if is_file:
            assert filename is not None
            expected.append((name, filename.encode().decode(codec), content, data))
        else:
            try:
                text = data.decode(codec)
            except UnicodeDecodeError:
                text = data.decode("latin-1")
            expected.append((name, None, None, text))
    body += f"--{boundary}--".encode() + draw(st.sampled_from([b"", b"\r\n", b"\r\nbye"]))
    chunk = draw(st.sampled_from([1, 7, 64, 65536]))
    return body, content_type, expected, chunk


LIMIT_WORDS = ("Too many", "exceeded maximum size")
# Where this parser refuses what Starlette takes: a body cut short (python-multipart drops the
# unfinished part silently), or bytes before the first boundary line that python-multipart
# skips (after a leading CR or LF it jumps to the next "-", whatever lies between).
STRICTER = (
    "ends before the closing boundary",
    "ends inside a part's headers",
    "does not hold the boundary",
    "start a line",
)


def agrees_with_starlette(body: bytes, content_type: str, chunk: int, limits: Limits) -> None:
    """Both parse the body alike, or both refuse it (for the same limit, when one is the
    reason), or just one refuses it where the two differ by design. Never anything but 4xx."""
    try:
        mine: Parsed | GlimpseError = ours(body, content_type, **limits)
    except GlimpseError as exc:
        assert exc.error_type in ("bad_request", "payload_too_large"), exc.message
        mine = exc
    try:
        theirs: Parsed | MultiPartException = starlette(body, content_type, chunk=chunk, **limits)
    except MultiPartException as exc:
        theirs = exc
    if isinstance(mine, GlimpseError) and isinstance(theirs, MultiPartException):
        # Each reports the first problem it meets, and they meet them in the same order
        # except that this one sees a body cut short before the limit it would have passed.
        if any(w in mine.message for w in LIMIT_WORDS) and any(
            w in theirs.message for w in LIMIT_WORDS
        ):
            if "Too many files" in theirs.message:
                assert mine.error_type == "payload_too_large", mine.message
            else:
                assert mine.message.endswith(theirs.message), (mine.message, theirs.message)
    elif isinstance(mine, GlimpseError):
        assert any(w in mine.message for w in STRICTER), (mine.message, theirs)
    elif not isinstance(theirs, MultiPartException):
        assert mine == theirs


@PROPERTY
@given(form_bodies())
def test_valid_bodies_parse_as_starlette_parses_them(
    case: tuple[bytes, str, Parsed | None, int],
) -> None:
    body, content_type, expected, chunk = case
    if expected is None:  # a part's data holds a delimiter: a body with other parts
        agrees_with_starlette(body, content_type, chunk, {})
        return
    assert ours(body, content_type) == expected == starlette(body, content_type, chunk=chunk)


@PROPERTY
@given(form_bodies(), st.data())
def test_broken_bodies_are_4xx_or_parse_as_starlette_parses_them(
    case: tuple[bytes, str, Parsed | None, int], data: st.DataObject
) -> None:
    body, content_type, _, chunk = case
    mutated = bytearray(body)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(mutated)))
        op = data.draw(st.sampled_from(["cut", "insert", "flip", "delete"]))
        if op == "cut":
            del mutated[at:]
        elif op == "insert":
            piece = data.draw(st.sampled_from([b"\r\n", b"--", b"\r\n--", b"\r\n\r\n", b";", b'"']))
            mutated[at:at] = piece
        elif op == "flip" and at < len(mutated):
            mutated[at] ^= data.draw(st.integers(1, 255))
        else:
            del mutated[at : at + data.draw(st.integers(1, 8))]
    limits = {
        "max_files": data.draw(st.integers(0, 4)),
        "max_fields": data.draw(st.integers(0, 4)),
        "max_field_bytes": data.draw(st.sampled_from([BIG, 8])),
    }
    agrees_with_starlette(bytes(mutated), content_type, chunk, limits)


@PROPERTY
@given(
    st.dictionaries(NAMES, st.text(max_size=20), max_size=4),
    st.lists(
        st.tuples(NAMES, NAMES, st.binary(max_size=64), st.sampled_from(["image/png", "a/b"])),
        max_size=4,
    ),
)
def test_the_gateway_multipart_builder_round_trips(
    fields: dict[str, str], files: list[tuple[str, str, bytes, str]]
) -> None:
    pieces, content_type = multipart_body(fields, [(n, (f, d, t)) for n, f, d, t in files])
    body = b"".join(pieces)
    mine = ours(body, content_type)
    assert mine == starlette(body, content_type)
    expected: Parsed = [(browser(n), None, None, v) for n, v in fields.items()]
    expected += [(browser(n), browser(f), t, d) for n, f, d, t in files]
    # A backslash is an escape inside a quoted string, for both parsers.
    assume(not any("\\" in n for n in fields) and not any("\\" in n + f for n, f, _, _ in files))
    assert mine == expected


@PROPERTY
@given(st.text(st.sampled_from(list('ab =;"\\*:\t\r\n%é')), max_size=40))
def test_header_parameters_read_as_python_multipart_reads_them(value: str) -> None:
    media, options = parse_options_header(value)
    their_media, their_options = reference_options_header(value)
    assert media.encode("latin-1") == their_media
    assert {k.encode("latin-1"): v.encode("latin-1") for k, v in options.items()} == their_options
