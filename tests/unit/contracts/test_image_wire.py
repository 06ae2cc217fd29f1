"""The gateway-to-encoder image wire: what pack writes unpack reads back, and every malformed
body is a 4xx GlimpseError that names its problem."""

from __future__ import annotations

import struct

import orjson
import pytest

from glimpse.contracts.errors import GlimpseError
from glimpse.contracts.image_wire import MAX_HEAD_BYTES, WireFile, pack, unpack


def test_pack_then_unpack_gives_the_files_back_in_order() -> None:
    files = [("a/b.jpg", b"\xff\xd8\xff" + bytes(range(256))), ("", b""), ("c é.png", b"x" * 7)]
    body = pack(files)
    assert unpack(body, max_files=3) == [WireFile(n, d) for n, d in files]
    (head_length,) = struct.unpack(">I", body[:4])
    assert orjson.loads(body[4:4 + head_length]) == {
        "names": ["a/b.jpg", "", "c é.png"], "lengths": [259, 0, 7],
    }


def test_an_empty_list_is_a_valid_body() -> None:
    assert unpack(pack([]), max_files=1) == []


def _body(head: object, rest: bytes = b"") -> bytes:
    raw = head if isinstance(head, bytes) else orjson.dumps(head)
    return struct.pack(">I", len(raw)) + raw + rest


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"", "fewer than the 4"),
        (b"\x00\x00", "fewer than the 4"),
        (struct.pack(">I", 10) + b"{}", "only 2 follow"),
        (struct.pack(">I", MAX_HEAD_BYTES + 1), "the limit is"),
        (_body(b"{not json"), "not JSON"),
        (_body([1, 2]), "exactly"),
        (_body({"names": []}), "exactly"),
        (_body({"names": [], "lengths": [], "encoding": "x"}), "exactly"),
        (_body({"names": [1], "lengths": [1]}, b"x"), '"names"'),
        (_body({"names": ["a"], "lengths": [-1]}), '"lengths"'),
        (_body({"names": ["a"], "lengths": [True]}, b"x"), '"lengths"'),
        (_body({"names": ["a"], "lengths": [1.0]}, b"x"), '"lengths"'),
        (_body({"names": ["a", "b"], "lengths": [1]}, b"x"), "2 names but 1 lengths"),
        (_body({"names": ["a"], "lengths": [3]}, b"xy"), "add up to 3 bytes, but 2"),
        (_body({"names": ["a"], "lengths": [1]}, b"xy"), "add up to 1 bytes, but 2"),
    ],
)
def test_a_malformed_body_is_a_400_naming_the_problem(body: bytes, words: str) -> None:
    with pytest.raises(GlimpseError) as caught:
        unpack(body, max_files=4)
    assert caught.value.status == 400 and caught.value.error_type == "bad_request"
    assert words in caught.value.message


def test_too_many_files_is_a_413() -> None:
    with pytest.raises(GlimpseError) as caught:
        unpack(pack([("a", b"1"), ("b", b"2"), ("c", b"3")]), max_files=2)
    assert caught.value.status == 413 and caught.value.error_type == "payload_too_large"
    assert "3 files; the limit is 2" in caught.value.message
