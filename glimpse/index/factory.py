"""Faiss factory strings the index service accepts, checked by parsing before Faiss sees them.

Faiss's own parser accepts strings it then crashes on (``HNSW1`` segfaults in the first add,
``HNSW0`` aborts the process, ``IVF0,Flat`` fails every search), so nothing reaches
``faiss.index_factory`` that this grammar has not accepted, with every parameter in range:

    [OPQ<m>[_<d>],] IVF<nlist>[_HNSW<M>],(Flat | PQ<m>[x<bits>][fs])
    HNSW<M>[_Flat | _SQ8]
    Flat

These are the structures the service builds itself (``index.auto_factory``, the candidates of
``structure.py``) and knows how to search, re-rank and remove from. Anything else, a Faiss
re-rank suffix (``,RFlat``) included, is refused with a sentence naming the part at fault.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: What a rebuild request or INDEX_FACTORY may say instead of a string: the automatic choice.
AUTO = "auto"

# Graph links per node: below 2 Faiss's HNSW crashes; above 256 a node's links alone outweigh
# a 512-d float vector, which no search here needs.
HNSW_M_RANGE = (2, 256)
# Lists of an IVF index before the collection is known (a rebuild also caps them at its items).
MAX_NLIST = 1 << 20
PQ_BITS = (4, 8)
MAX_LENGTH = 200

_OPQ = re.compile(r"OPQ([0-9]+)(?:_([0-9]+))?")
_IVF = re.compile(r"IVF([0-9]+)(?:_HNSW([0-9]+))?")
_HNSW = re.compile(r"HNSW([0-9]+)(?:_(Flat|SQ8))?")
_PQ = re.compile(r"PQ([0-9]+)(?:x([0-9]+))?(fs)?")


class FactoryError(ValueError):
    """A factory string the service does not build; the message names the part at fault."""


@dataclass(frozen=True)
class Factory:
    """A parsed factory string (``family``: "flat", "hnsw" or "ivf")."""

    text: str
    family: str
    nlist: int | None = None
    pq_m: int | None = None
    pq_bits: int | None = None
    opq: bool = False

    def min_items(self) -> int:
        """Items a training needs: one per list, and the 2**bits points of each PQ codebook
        (OPQ trains an 8-bit quantizer of its own)."""
        need = self.nlist or 0
        if self.pq_bits is not None:
            need = max(need, 1 << self.pq_bits)
        if self.opq:
            need = max(need, 256)
        return need


def _number(text: str, what: str, low: int, high: int) -> int:
    value = int(text)
    if not low <= value <= high:
        raise FactoryError(f"{what} is {value}; it must be between {low} and {high}")
    return value


def _hnsw_m(text: str, what: str) -> int:
    return _number(text, what, *HNSW_M_RANGE)


def parse_factory(text: str, dim: int, items: int | None = None) -> Factory:
    """Check ``text`` against the grammar above for ``dim``-d vectors (and, given ``items``,
    a collection of that many: no more lists than items, enough to train the codebooks).

    Raises FactoryError (a ValueError) with a sentence naming the problem.
    """
    if not isinstance(text, str) or not text:
        raise FactoryError("the factory string is empty")
    if len(text) > MAX_LENGTH:
        raise FactoryError(f"the factory string is {len(text)} characters; at most {MAX_LENGTH}")
    parts = text.split(",")
    shown = text if text.isprintable() else repr(text)
    if any(p == "RFlat" or p.startswith("Refine") for p in parts):
        raise FactoryError(
            f"{shown!s}: a Faiss re-rank stage cannot take this service's ids; the service "
            "re-ranks with its stored vectors itself (INDEX_RERANK), so drop it"
        )
    factory = _parse(text, parts, dim, shown)
    if items is not None and factory.min_items() > items:
        raise FactoryError(
            f"{shown} needs at least {factory.min_items()} items to train "
            f"(one per list, 2**bits per PQ codebook); the index holds {items}"
        )
    return factory


def _parse(text: str, parts: list[str], dim: int, shown: str) -> Factory:
    opq_dim: int | None = None
    if (m := _OPQ.fullmatch(parts[0])) is not None:
        opq_m = _number(m.group(1), "OPQ's sub-quantizer count", 1, dim)
        opq_dim = _number(m.group(2), "OPQ's output dimension", 1, dim) if m.group(2) else dim
        if opq_dim % opq_m:
            raise FactoryError(
                f"OPQ{opq_m} does not divide the {opq_dim} dimensions it rotates into"
            )
        parts = parts[1:]
        if len(parts) != 2 or not parts[0].startswith("IVF") or not parts[1].startswith("PQ"):
            raise FactoryError(f"{shown}: OPQ is only accepted before IVF<n>,PQ<m>")
    if len(parts) == 1:
        if parts[0] == "Flat":
            return Factory("Flat", "flat")
        if (m := _HNSW.fullmatch(parts[0])) is not None:
            _hnsw_m(m.group(1), "HNSW's M (links per node)")
            return Factory(text, "hnsw")
        raise _unknown(parts[0], shown)
    if len(parts) != 2:
        raise FactoryError(f"{shown}: expected at most two stages, e.g. IVF1024,PQ32x8")
    coarse, codes = parts
    if (m := _IVF.fullmatch(coarse)) is None:
        raise _unknown(coarse, shown)
    nlist = _number(m.group(1), "IVF's list count", 1, MAX_NLIST)
    if m.group(2):
        _hnsw_m(m.group(2), "the IVF quantizer's HNSW M")
    if codes == "Flat":
        return Factory(text, "ivf", nlist=nlist)
    if (p := _PQ.fullmatch(codes)) is None:
        raise _unknown(codes, shown)
    width = opq_dim or dim
    pq_m = _number(p.group(1), "PQ's sub-quantizer count", 1, width)
    if width % pq_m:
        raise FactoryError(f"PQ{pq_m} does not divide the {width} dimensions of the vectors")
    bits = int(p.group(2)) if p.group(2) else 8
    if bits not in PQ_BITS:
        raise FactoryError(f"PQ codes of {bits} bits; only 4 or 8 bits are accepted")
    if p.group(3) and bits != 4:
        raise FactoryError(f"fast-scan PQ ('fs') needs 4-bit codes, not {bits}")
    return Factory(text, "ivf", nlist=nlist, pq_m=pq_m, pq_bits=bits, opq=opq_dim is not None)


def _unknown(part: str, shown: str) -> FactoryError:
    part = part if part.isprintable() else repr(part)
    return FactoryError(
        f"{shown}: {part!s} is not a stage this service builds (accepted: Flat, HNSW<M>[_SQ8], "
        "[OPQ<m>,]IVF<n>[_HNSW<M>],Flat|PQ<m>x<4|8>[fs])"
    )
