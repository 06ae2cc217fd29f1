from __future__ import annotations

import numpy as np
import pytest

from glimpse.contracts.errors import GlimpseError
from glimpse.contracts.vectors import decode_vectors, encode_vector, encode_vectors


def test_base64_round_trip_is_exact() -> None:
    rng = np.random.default_rng(0)
    m = rng.standard_normal((3, 7)).astype(np.float32)
    wire = encode_vectors(m, "base64")
    assert all(isinstance(w, str) for w in wire)
    assert np.array_equal(decode_vectors(wire, 7), m)
    assert np.array_equal(decode_vectors(encode_vectors(m, "float"), 7), m)


def test_mixed_forms_in_one_batch() -> None:
    v = np.arange(1, 5, dtype=np.float32)
    out = decode_vectors([v.tolist(), encode_vector(v)], 4)
    assert np.array_equal(out[0], out[1])


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ([[1.0, 2.0]], "dimension 2, expected 3"),
        ([[1.0, float("nan"), 2.0]], "NaN or Inf"),
        ([[1.0, float("inf"), 2.0]], "NaN or Inf"),
        ([[0.0, 0.0, 0.0]], "zero vector"),
        (["!!notbase64"], "not valid base64"),
        (["AAAAAAA="], "not a whole number"),
    ],
)
def test_bad_vectors_are_named(values: list[object], fragment: str) -> None:
    with pytest.raises(GlimpseError) as info:
        decode_vectors(values, 3)  # type: ignore[arg-type]
    assert info.value.status == 422
    assert fragment in info.value.message
    assert "vectors[0]" in info.value.message


def test_empty_batch_is_rejected() -> None:
    with pytest.raises(GlimpseError, match="empty"):
        decode_vectors([], 3)
