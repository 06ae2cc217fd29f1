"""Which hits of a search are relevant: a per-query cutoff from the query's own candidates.

A flat score threshold fails because every model, and every query, has its own score scale. The
cutoff here reads the scale off the query's candidate list instead. Most of a query's candidates
are background (items unrelated to it), and the distances of a point's nearest background
neighbours follow a power law of their rank: the i-th nearest of N points spread around the query
with local dimension m lies at ``d_i ~ (i / (lambda N)) ** (1 / m)`` (the law behind the
Levina-Bickel intrinsic-dimension estimate). Fitting ``log d = a + b log rank`` to the
candidates below the top gives the query's own background; the background then puts a point
below the distance of rank ALPHA, ``exp(a + b log ALPHA)``, with probability about ALPHA (its
points are a Poisson process in ``d ** m``). Hits nearer than that are relevant.

The distance is ``1 - score`` (the index scores unit vectors by cosine). The cutoff moves with
any scale of the distances and any local dimension, both fitted per query, so it needs no
per-model constant; the one constant, ALPHA, is a probability. docs/relevance.md measures it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# The chance that a query whose collection holds nothing like it still gets a relevant hit.
ALPHA = 0.01
# How many candidates the gateway reads a query's background from (at least k + offset).
CANDIDATES = 200
# The background fit starts below this share of the candidates, so that a group of relevant
# items at the top does not pass for background.
FIT_START_SHARE = 0.1
# Fewer background scores than this cannot give a trustworthy slope: no cutoff.
MIN_FIT = 8
# Distances are floored here: an identical item (distance 0) has no logarithm.
_TINY = 1e-12


@dataclass(frozen=True)
class Cutoff:
    """A query's cutoff: hits scoring above ``score`` are relevant."""

    score: float | None  # None: too few candidates to judge, every hit counts as relevant
    relevant_count: int  # how many of the candidates clear it

    @property
    def no_good_match(self) -> bool:
        return self.relevant_count == 0


def cutoff(scores: Sequence[float], *, complete: bool, alpha: float = ALPHA) -> Cutoff:
    """The cutoff of a query from its candidates' scores, best first.

    ``complete`` says the candidates are the whole collection (the index had no more), so their
    far end is the bulk of the distribution, not its near tail, and only the nearer half is
    fitted. ``alpha`` is ALPHA unless a measurement asks for another.
    """
    s = np.asarray(scores, dtype=np.float64)
    n = len(s)
    end = max(n // 2, 1) if complete else n
    start = max(1, int(n * FIT_START_SHARE))
    if end - start < MIN_FIT:
        return Cutoff(score=None, relevant_count=n)
    distance = np.maximum(1.0 - s[start:end], _TINY)
    ranks = np.arange(start + 1, end + 1, dtype=np.float64)
    slope, intercept = np.polyfit(np.log(ranks), np.log(distance), 1)
    # A background whose distances do not grow with rank has no scale to stand out from.
    slope = max(float(slope), 0.0)
    threshold = 1.0 - math.exp(float(intercept) + slope * math.log(alpha))
    return Cutoff(score=threshold, relevant_count=int(np.count_nonzero(s > threshold)))
