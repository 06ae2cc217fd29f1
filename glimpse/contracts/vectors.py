"""Vectors on the wire: JSON float lists, or base64 of little-endian float32 bytes.

A million vectors as JSON float lists is gigabytes of text, so every body that carries vectors
accepts either form per vector: ``[0.1, -0.2, ...]`` or ``"<base64 of d little-endian float32>"``
(about 2.7 KB for d=512 instead of ~10 KB). Answers use the form the request asked for.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Literal, TypeAlias

import numpy as np

from glimpse.contracts.errors import ErrorType, GlimpseError

VectorLike: TypeAlias = list[float] | str
VectorEncoding: TypeAlias = Literal["float", "base64"]

_LE_FLOAT32 = np.dtype("<f4")


def encode_vector(vector: np.ndarray) -> str:
    """Base64 of the vector as little-endian float32."""
    return base64.b64encode(np.ascontiguousarray(vector, dtype=_LE_FLOAT32).tobytes()).decode()


def encode_vectors(matrix: np.ndarray, encoding: VectorEncoding = "float") -> list[VectorLike]:
    """Rows of ``matrix`` in the requested wire form."""
    if encoding == "base64":
        return [encode_vector(row) for row in matrix]
    return np.asarray(matrix, dtype=np.float32).tolist()


def _decode_one(value: VectorLike, position: int, what: str) -> np.ndarray:
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise GlimpseError(
                ErrorType.invalid_vector, f"{what}[{position}] is not valid base64: {exc}."
            ) from exc
        if len(raw) % 4:
            raise GlimpseError(
                ErrorType.invalid_vector,
                f"{what}[{position}] holds {len(raw)} bytes, not a whole number of float32 values.",
            )
        return np.frombuffer(raw, dtype=_LE_FLOAT32).astype(np.float32)
    return np.asarray(value, dtype=np.float32)


def decode_vectors(
    values: Sequence[VectorLike],
    dim: int | None,
    *,
    what: str = "vectors",
    allow_zero: bool = False,
) -> np.ndarray:
    """Decode and check vectors: one dimension (``dim`` if given), finite, not all zeros.

    Raises GlimpseError(invalid_vector) naming the first offending vector and the problem, so
    nothing is half-stored: callers decode the whole batch before touching any state.
    """
    if len(values) == 0:
        raise GlimpseError(
            ErrorType.validation_error, f"{what} is empty; send at least one vector."
        )
    rows = [_decode_one(v, i, what) for i, v in enumerate(values)]
    expected = dim if dim is not None else rows[0].shape[0]
    for i, row in enumerate(rows):
        if row.ndim != 1 or row.shape[0] != expected:
            raise GlimpseError(
                ErrorType.invalid_vector,
                f"{what}[{i}] has dimension {row.shape[0] if row.ndim == 1 else row.shape}, "
                f"expected {expected}.",
            )
    matrix = np.vstack(rows) if rows else np.zeros((0, expected), np.float32)
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise GlimpseError(ErrorType.invalid_vector, f"{what}[{bad}] contains NaN or Inf.")
    if not allow_zero:
        norms = np.linalg.norm(matrix, axis=1)
        zero = norms <= 1e-12
        if zero.any():
            bad = int(np.flatnonzero(zero)[0])
            raise GlimpseError(
                ErrorType.invalid_vector,
                f"{what}[{bad}] is a zero vector; it has no direction to compare by.",
            )
    return np.ascontiguousarray(matrix, dtype=np.float32)


def l2_normalize(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32). Zero rows must have been rejected before."""
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.ascontiguousarray(matrix / norms, dtype=np.float32)
