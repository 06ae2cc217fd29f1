"""Factory strings are parsed before Faiss sees them (issue 25, F6)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from glimpse.index.config import Settings
from glimpse.index.factory import AUTO, FactoryError, parse_factory
from glimpse.index.live import build_empty
from glimpse.index.rules import auto_factory
from glimpse.index.structure import candidates

# Each with the words its refusal must contain. HNSW1 segfaults Faiss's first add, HNSW0
# aborts the process, IVF0,Flat fails every search; the rest Faiss refuses more or less late.
REFUSED = {
    "HNSW1": "HNSW's M (links per node) is 1",
    "HNSW0": "HNSW's M (links per node) is 0",
    "HNSW300": "between 2 and 256",
    "IVF0,Flat": "IVF's list count is 0",
    "IVF99999999,Flat": "IVF's list count is 99999999",
    "PQ0": "PQ0 is not a stage",
    "PQ8": "PQ8 is not a stage",
    "IVF1,PQ3x8": "PQ3 does not divide the 64 dimensions",
    "IVF4,PQ0": "PQ's sub-quantizer count is 0",
    "IVF4,PQ128": "PQ's sub-quantizer count is 128",
    "OPQ7,IVF4,PQ2": "OPQ7 does not divide the 64 dimensions",
    "OPQ8,IVF4,PQ3": "PQ3 does not divide the 64 dimensions",
    "OPQ8_0,IVF4,PQ8": "OPQ's output dimension is 0",
    "OPQ8,HNSW32": "OPQ is only accepted before IVF<n>,PQ<m>",
    "IVF16,PQ8x5": "PQ codes of 5 bits",
    "IVF16,PQ8x8fs": "fast-scan PQ ('fs') needs 4-bit codes",
    "IVF16_HNSW1,PQ8x4": "the IVF quantizer's HNSW M is 1",
    "IVF16,PQ8x4,RFlat": "re-rank",
    "IVF16,PQ8x4,Refine(Flat)": "re-rank",
    "IVF16,Flat,Flat": "at most two stages",
    "Flat,Flat": "Flat is not a stage",
    "": "empty",
    "garbage": "garbage is not a stage",
    " Flat": "is not a stage",
    "IVF٣,Flat": "is not a stage",  # digits other than ASCII ones
    "IVF\x00,Flat": "is not a stage",
    "LSH": "LSH is not a stage",
    "IDMap,Flat": "IDMap is not a stage",
    "x" * 201: "at most 200",
}


@pytest.mark.parametrize("text", list(REFUSED))
def test_refused_strings_name_the_problem(text: str) -> None:
    with pytest.raises(FactoryError) as caught:
        parse_factory(text, 64)
    assert REFUSED[text] in str(caught.value)
    with pytest.raises(ValueError, match="."):
        build_empty(text, 64)  # never reaches Faiss


@pytest.mark.parametrize("text", [
    "Flat", "HNSW2", "HNSW32", "HNSW32_SQ8", "HNSW16_Flat", "IVF1,Flat", "IVF16,PQ8",
    "IVF16,PQ8x4", "IVF16,PQ16x4fs", "IVF1024_HNSW32,PQ32x8", "OPQ8,IVF16,PQ8x4",
    "OPQ8_32,IVF16,PQ8x4fs",
])
def test_accepted_strings_build(text: str) -> None:
    parse_factory(text, 64)
    assert build_empty(text, 64).d == 64


def test_a_collection_too_small_for_its_lists_or_codebooks_is_refused() -> None:
    assert parse_factory("IVF16,PQ8x4", 64, items=16).nlist == 16
    with pytest.raises(FactoryError, match="needs at least 17 items .* holds 16"):
        parse_factory("IVF17,Flat", 64, items=16)
    with pytest.raises(FactoryError, match="needs at least 256 items"):
        parse_factory("IVF4,PQ8x8", 64, items=255)
    with pytest.raises(FactoryError, match="needs at least 256 items"):
        parse_factory("OPQ8,IVF4,PQ8x4", 64, items=100)
    parse_factory("HNSW32", 64, items=0)  # nothing to train


def test_every_structure_the_service_builds_itself_parses() -> None:
    for n in (10, 5_000, 60_000, 1_000_000):
        for dim in (32, 384, 512):
            for per_byte in (16, 32):
                for hq in (True, False):
                    parse_factory(auto_factory(n, dim, per_byte, hq), dim)
            for c in candidates(n, dim, rule_nlist=1024, rule_m=dim // 16, rule_nbits=8,
                                hnsw_quantizer_from=1024):
                parse_factory(c.factory, dim)


def test_index_factory_setting_is_parsed_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="INDEX_FACTORY: HNSW's M .* is 1"):
        Settings(data_dir=tmp_path, dim=64, factory="HNSW1")
    with pytest.raises(ValidationError, match="INDEX_FACTORY: PQ3 does not divide the 64"):
        Settings(data_dir=tmp_path, dim=64, factory="IVF1,PQ3x8")
    assert Settings(data_dir=tmp_path, dim=64, factory=AUTO).factory is None
    assert Settings(data_dir=tmp_path, dim=64, factory="IVF16,PQ8x4").factory == "IVF16,PQ8x4"
