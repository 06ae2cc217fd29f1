"""Which hits of a search are relevant: a per-query cutoff from the query's own candidates.

A flat score threshold fails because every model, and every query, has its own score scale. The
cutoff here reads the scale off the query's candidate list instead. Around a query, the
background (items unrelated to it) is locally a Poisson process in ``d ** m``, with ``d`` the
distance (``1 - score``: the index scores unit vectors by cosine) and ``m`` the data's local
dimension there. Two facts of that process make a test:

- ``m`` is estimated from the next K background distances by the Levina-Bickel maximum
  likelihood estimate, ``(K - 1) / sum(log(d_K / d_i))``: per query and per point, so it
  follows any model's scale and dimension.
- For the nearest background item and the one after it, ``(d_1 / d_2) ** m`` is uniform on
  [0, 1]. A candidate whose ratio to the next one is below ``ALPHA / MAX_RELEVANT`` (a Bonferroni
  bound over the ranks tested) is nearer than the background would put anything.

The relevant hits are the candidates down to the deepest rank that passes the test, so every
hit of a group of copies counts even when they are close to each other. The constants are a
probability (ALPHA) and two counts; none is tuned per model. docs/relevance.md measures it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# The chance that a query whose collection holds nothing like it still gets a relevant hit.
ALPHA = 0.05
# How many candidates the gateway reads a query's background from (at least k + offset).
CANDIDATES = 200
# The deepest rank tested: a query has at most this many relevant hits.
MAX_RELEVANT = 50
# How many background distances estimate the local dimension at each rank.
BACKGROUND = 30
# Fewer background distances than this cannot estimate a dimension: no cutoff.
MIN_BACKGROUND = 8
# Distances are floored here: an identical item (distance 0) has no logarithm.
_TINY = 1e-12
_LOG_TINY = math.log(_TINY)


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
    far end is the bulk of the distribution rather than the near background, and at most the
    nearer half estimates a dimension. ``alpha`` is ALPHA unless a measurement asks for another.
    """
    s = np.asarray(scores, dtype=np.float64)
    n = len(s)
    depth = min(BACKGROUND, n // 2) if complete else BACKGROUND
    deepest = min(MAX_RELEVANT, n - max(depth, MIN_BACKGROUND))
    if depth < MIN_BACKGROUND or deepest < 1:
        return Cutoff(score=None, relevant_count=n)
    log_d = np.log(np.maximum(1.0 - s, _TINY))
    # The Levina-Bickel estimate at each rank j = 1 .. deepest, over the distances j+1 .. j+depth
    # (0-based j .. j+depth-1): (depth - 1) / sum(log(d_last / d_i)), from running sums; slices
    # rather than index arrays, since the whole test is a few array operations on 200 numbers.
    sums = np.cumsum(log_d)
    last = log_d[depth : deepest + depth]
    spread = (depth - 1) * last - (sums[depth - 1 : deepest + depth - 1] - sums[:deepest])
    inverse_m = np.maximum(spread, 0.0) / (depth - 1)  # 1/m; 0 where no scale
    # The log distance below which background alone puts the j-th item with chance
    # alpha/MAX_RELEVANT (a background of equal distances, 1/m = 0, has no scale to stand out
    # from: -inf, never passes).
    log_limits = np.where(
        inverse_m > 0, log_d[1 : deepest + 1] + inverse_m * math.log(alpha / MAX_RELEVANT), -np.inf
    )
    passed = np.flatnonzero(log_d[:deepest] < np.maximum(log_limits, _LOG_TINY))
    if len(passed) == 0:
        # Nothing clears the first rank's limit; without one, nothing scores above the best.
        first = log_limits[0]
        return Cutoff(
            score=1.0 - math.exp(first) if first > -np.inf else float(s[0]), relevant_count=0
        )
    j = int(passed[-1])
    return Cutoff(score=1.0 - math.exp(log_limits[j]), relevant_count=j + 1)
