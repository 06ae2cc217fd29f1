"""glimpse.web.forms: what the upload routes get from a multipart body, and the 4xx (never
anything else) for every body python-multipart or the limits refuse."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glimpse.contracts.errors import ErrorType, GlimpseError
from glimpse.gateway.http import multipart_body
from glimpse.web.forms import FormPart, parse_form

CT = "multipart/form-data; boundary=XyZ"
BIG = 1 << 20
Parsed = list[tuple[str, str | None, str | None, str | bytes]]


def ours(body: bytes, content_type: str | None, max_files: int = 1000, max_fields: int = 1000,
         max_field_bytes: int = BIG) -> Parsed:
    parts = parse_form(body, content_type, max_files=max_files, max_fields=max_fields,
                       max_field_bytes=max_field_bytes)
    out: Parsed = []
    for p in parts:
        if p.is_file:
            assert p.text is None
            out.append((p.name, p.filename, p.content_type, p.data))
        else:
            assert p.filename is None and p.content_type is None and p.text is not None
            out.append((p.name, None, None, p.text))
    return out


def error_of(body: bytes, content_type: str | None, **limits: int) -> GlimpseError:
    with pytest.raises(GlimpseError) as caught:
        ours(body, content_type, **limits)
    return caught.value


def part(headers: str, data: bytes, boundary: str = "XyZ") -> bytes:
    return f"--{boundary}\r\n{headers}\r\n\r\n".encode() + data + b"\r\n"


def close(boundary: str = "XyZ") -> bytes:
    return f"--{boundary}--\r\n".encode()


GOOD = part('Content-Disposition: form-data; name="files"; filename="a.jpg"', b"abc")
FIELD = part('Content-Disposition: form-data; name="encoding"', b"base64")


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
    assert ours(body, CT) == [
        ("k", None, None, "12"),
        ("files", "a.jpg", "image/jpeg", b"\xff\xd8 \r\n--XyZ- \r\n--Xy\r\n"),
        ("files", "b.png", None, b""),
        ("note", None, None, "é 日本"),
    ]
    parsed = parse_form(body, CT, max_files=2, max_fields=2, max_field_bytes=10)
    assert parsed[0] == FormPart("k", None, None, b"12", "12") and not parsed[0].is_file
    assert parsed[1].is_file and isinstance(parsed[1].data, bytes)


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
    assert ours(body, content_type) == [("a", None, None, "1")]


def test_names_empty_filenames_filename_star_and_windows_paths() -> None:
    body = (
        part('Content-Disposition: form-data; name="f"; filename=""', b"x")
        + part("Content-Disposition: form-data; name=\"g\"; filename*=UTF-8''a.jpg", b"y")
        + part('Content-Disposition: form-data; name="h"; filename="C:\\dir\\x.jpg"', b"z")
        + part('Content-Disposition: form-data; name="a\\"b\\\\c"', b"1")
        + close()
    )
    # An empty filename is still a file; filename* is ignored (RFC 7578); an old browser's
    # full Windows path is cut to the name; backslash escapes in quotes are undone.
    assert ours(body, CT) == [
        ("f", "", None, b"x"), ("g", None, None, "y"), ("h", "x.jpg", None, b"z"),
        ('a"b\\c', None, None, "1"),
    ]


def test_browser_escapes_in_names_are_decoded() -> None:
    # Browsers (and the gateway's client) write '"' as %22 and CR/LF as %0D/%0A (WHATWG);
    # exactly those three escapes are decoded, any other '%' is the name's own.
    pieces, content_type = multipart_body(
        {'say "hi"\n': "v1", "naïve;name": "v2", "%41%0a%2": "v3"},
        [("files", ('a"b\r.jpg', b"\r\n--\r\n", "image/jpeg"))],
    )
    assert ours(b"".join(pieces), content_type) == [
        ('say "hi"\n', None, None, "v1"),
        ("naïve;name", None, None, "v2"),
        ("%41%0a%2", None, None, "v3"),
        ("files", 'a"b\r.jpg', "image/jpeg", b"\r\n--\r\n"),
    ]


def test_other_bodies_hold_no_parts() -> None:
    assert ours(b"", CT) == []
    assert ours(b"--XyZ--", CT) == []
    assert ours(b'{"a": 1}', "application/json") == []
    assert ours(b"a=1", None) == []
    assert ours(b"a=1", "application/x-www-form-urlencoded") == []


def test_the_charset_decodes_names_and_values() -> None:
    body = (
        part('Content-Disposition: form-data; name="café"', "crème".encode("latin-1"))
        + part('Content-Disposition: form-data; name="x"', b"\xff\xfe")
        + close()
    )
    # The name's bytes are UTF-8 here, read as Latin-1 when the Content-Type says so.
    assert ours(body, CT + "; charset=latin-1")[0] == ("cafÃ©", None, None, "crème")
    # UTF-8 by default, Latin-1 for bytes that are not UTF-8 (as Starlette).
    assert ours(body, CT)[0] == ("café", None, None, "crème")
    assert ours(body, CT)[1] == ("x", None, None, "ÿþ")


@pytest.mark.parametrize("charset", ["undefined", "punycode", "nonsense", "utf-16", "rot13",
                                     "base64", "a\x00b", "x" * 300])
def test_an_unknown_or_unusable_charset_is_415(charset: str) -> None:
    # F1 (issue 25): 'undefined' raised UnicodeError inside the hand parser, a 500.
    error = error_of(GOOD + FIELD + close(), f"{CT}; charset={charset}")
    assert (error.status, error.error_type) == (415, ErrorType.unsupported_media_type.value)
    assert "charset" in error.message and error.message.endswith("send UTF-8.")


@pytest.mark.parametrize(
    ("body", "content_type", "why"),
    [
        (GOOD + close(), "multipart/form-data", "Missing boundary"),
        (GOOD + close(), 'multipart/form-data; boundary=""', "Missing boundary"),
        (GOOD + close(), "multipart/form-data; boundary=" + "b" * 257, "exceeds maximum of 256"),
        (b"garbage", CT, "Expected boundary character"),
        (GOOD + close(), "multipart/form-data; boundary=other", "Expected boundary character"),
        (b"x--XyZ\r\n" + GOOD + close(), CT, "Expected boundary character"),
        (b"--XyZx\r\n" + GOOD + close(), CT, "Did not find CR at end of boundary"),
        (GOOD, CT, "the body ends before the closing boundary."),
        (GOOD + b"--XyZ", CT, "the body ends before the closing boundary."),
        (GOOD[:-2], CT, "the body ends before the closing boundary."),
        (b"--XyZ\r\nContent-Disposition: form-data", CT, "ends before the closing boundary"),
        (part("Content-Type: text/plain", b"x") + close(), CT, 'header field "name" must be'),
        (part('Content-Disposition: form-data; filename="a"', b"x") + close(), CT, '"name"'),
        (b"--XyZ\r\n\r\nx\r\n--XyZ--", CT, 'header field "name" must be provided'),
        (part("Content-Disposition form-data", b"x") + close(), CT, "invalid character"),
        (part("Bad Name: x", b"x") + close(), CT, "invalid character"),
        (part("X: a\rb", b"x") + close(), CT, "Did not find LF"),
        (part("\r\n".join(["X: y"] * 9), b"x") + close(), CT, "header count exceeded"),
        (part("X: " + "y" * 4300, b"x") + close(), CT, "header size exceeded"),
        (b"--XyZ\r\n" + b"X: y\r\n" * 6000, CT, "header count exceeded"),
        (GOOD + b"--XyZ x\r\n" + close(), CT, "padding"),
    ],
)
def test_malformed_bodies_are_400(body: bytes, content_type: str, why: str) -> None:
    error = error_of(body, content_type)
    assert (error.status, error.error_type) == (400, ErrorType.bad_request.value)
    assert error.message.startswith("The multipart body could not be parsed: ")
    assert why in error.message and error.message.endswith(".")


def test_limits() -> None:
    body = GOOD * 3 + FIELD * 2 + close()
    assert len(ours(body, CT, max_files=3, max_fields=2, max_field_bytes=6)) == 5
    error = error_of(body, CT, max_files=2)
    assert (error.error_type, error.status) == (ErrorType.payload_too_large.value, 413)
    assert error.message == "Too many files in one request; the limit is 2."
    error = error_of(body, CT, max_fields=1)
    assert (error.error_type, error.status) == (ErrorType.bad_request.value, 400)
    assert error.message == (
        "The multipart body could not be parsed: Too many fields. Maximum number of fields is 1."
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


def test_a_large_part_with_near_delimiters_in_it() -> None:
    near = b"\r\n--XyZx" * 20 + b"\r\n--XyZ-x\r\n--XyZ\rx--XyZ" * 5 + b"\r\n--XyZ"[:-1]
    data = bytes(range(256)) * 800 + near + bytes(range(256)) * 800
    body = (part('Content-Disposition: form-data; name="f"; filename="a"', data)
            + part('Content-Disposition: form-data; name="g"', near) + close())
    assert ours(body, CT) == [("f", "a", None, data), ("g", None, None, near.decode())]


PROPERTY = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
NAMES = st.text(st.sampled_from(list('az09 _-.;=:,"\\%/éß日\U0001f600\t')), max_size=8)


@PROPERTY
@given(
    st.dictionaries(NAMES, st.text(max_size=20), max_size=4),
    st.lists(st.tuples(NAMES, NAMES, st.binary(max_size=64)), max_size=4),
    st.data(),
)
def test_any_body_is_parts_or_a_4xx(
    fields: dict[str, str], files: list[tuple[str, str, bytes]], data: st.DataObject
) -> None:
    """The gateway's own multipart writer round-trips, and every mutation of its bodies is
    parsed or refused with a 4xx, never another exception."""
    pieces, content_type = multipart_body(fields, [(n, (f, d, "a/b")) for n, f, d in files])
    body = bytearray(b"".join(pieces))
    if not any("\\" in n for n in fields) and not any("\\" in n + f for n, f, _ in files):
        # NAMES cannot spell an escape (%22, %0D, %0A) itself, so every name comes back.
        assert ours(bytes(body), content_type) == [
            *((n, None, None, v) for n, v in fields.items()),
            *((n, f, "a/b", d) for n, f, d in files),
        ]
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(body)))
        op = data.draw(st.sampled_from(["cut", "insert", "flip"]))
        if op == "cut":
            del body[at:]
        elif op == "insert":
            body[at:at] = data.draw(st.sampled_from([b"\r\n", b"--", b"\r\n--", b";", b'"']))
        elif at < len(body):
            body[at] ^= data.draw(st.integers(1, 255))
    limits = {"max_files": data.draw(st.integers(0, 4)), "max_fields": data.draw(st.integers(0, 4)),
              "max_field_bytes": data.draw(st.sampled_from([BIG, 8]))}
    try:
        ours(bytes(body), content_type, **limits)
    except GlimpseError as exc:
        assert 400 <= exc.status < 500, exc.message
