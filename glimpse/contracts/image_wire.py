"""The image wire between the gateway and the encoder: a JSON head, then the files' bytes.

A body of Content-Type ``application/x-glimpse-images`` is:

- 4 bytes: the length N of the head, big-endian;
- N bytes: the head, a JSON object ``{"names": [str, ...], "lengths": [int, ...]}``, one entry
  per file, in order;
- the files' bytes back to back, in the same order; nothing after the last one.

Multipart is for people and curl (the encoder still takes it); two programs of this repository
need no boundary scan and no per-part headers. Every malformed body is a 400 that names the
problem, never a 500.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple

import orjson

from glimpse.contracts.errors import ErrorType, GlimpseError

CONTENT_TYPE = "application/x-glimpse-images"

_LENGTH = struct.Struct(">I")
# A head of 256 names of a few hundred characters each fits many times over.
MAX_HEAD_BYTES = 1024 * 1024


class WireFile(NamedTuple):
    """One file of a body: the name its sender gave it (a path, or "") and its bytes."""

    name: str
    data: bytes


def pack_pieces(files: Sequence[tuple[str, bytes]]) -> list[bytes]:
    """The body carrying ``files`` ((name, bytes) pairs), in order, as pieces: the length and
    the head, then each file's own bytes, referenced rather than copied."""
    head = orjson.dumps({
        "names": [name for name, _ in files],
        "lengths": [len(data) for _, data in files],
    })
    return [_LENGTH.pack(len(head)) + head, *(data for _, data in files)]


def pack(files: Sequence[tuple[str, bytes]]) -> bytes:
    """The body carrying ``files`` ((name, bytes) pairs), in order, in one piece."""
    return b"".join(pack_pieces(files))


def _bad(why: str) -> GlimpseError:
    return GlimpseError(ErrorType.bad_request, f"The {CONTENT_TYPE} body is malformed: {why}")


def unpack(body: bytes, *, max_files: int) -> list[WireFile]:
    """The files of ``body``, in order. Raises GlimpseError: 400 for a malformed body (too
    short, a head that is not the JSON object above, lengths that do not add up to the bytes
    that follow), 413 for more than ``max_files`` files.

    Each file's own size is its caller's verdict (the encoder answers a file over its byte
    limit in that file's slot); the lengths adding up to the body bounds each by the body.
    """
    if len(body) < _LENGTH.size:
        raise _bad(f"it has {len(body)} bytes, fewer than the {_LENGTH.size} of the head length.")
    (size,) = _LENGTH.unpack_from(body)
    start = _LENGTH.size + size
    if size > MAX_HEAD_BYTES:
        raise _bad(f"its head declares {size} bytes; the limit is {MAX_HEAD_BYTES}.")
    if start > len(body):
        raise _bad(f"its head declares {size} bytes, but only {len(body) - _LENGTH.size} follow.")
    try:
        head = orjson.loads(body[_LENGTH.size:start])
    except orjson.JSONDecodeError as exc:
        raise _bad(f"its head is not JSON ({exc}).") from None
    if not isinstance(head, dict) or set(head) != {"names", "lengths"}:
        raise _bad('its head must be a JSON object with exactly "names" and "lengths".')
    names, lengths = head["names"], head["lengths"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _bad('"names" must be a list of strings.')
    if not isinstance(lengths, list) or not all(
        type(n) is int and n >= 0 for n in lengths
    ):
        raise _bad('"lengths" must be a list of integers, none negative.')
    if len(names) != len(lengths):
        raise _bad(f'it has {len(names)} names but {len(lengths)} lengths.')
    if len(lengths) > max_files:
        raise GlimpseError(
            ErrorType.payload_too_large,
            f"The request holds {len(lengths)} files; the limit is {max_files}.",
        )
    if start + sum(lengths) != len(body):
        raise _bad(
            f"its lengths add up to {sum(lengths)} bytes, but {len(body) - start} follow the head."
        )
    files = []
    for name, length in zip(names, lengths, strict=True):
        files.append(WireFile(name, body[start:start + length]))
        start += length
    return files
