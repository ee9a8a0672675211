"""The numbers an S3PET experiment reports, computed from plain values (no torch here).

- how far the gates polarised: the mean binary entropy of ``p`` (bits per candidate; a uniform
  ``p`` at the budget has ``H(budget / pool)``) and the share of the budget held by gates with
  ``p >= 0.9``;
- how stable the search is: the Jaccard overlap of the structures (and of the top of the gate
  ranking) that different seeds found, beside the same overlap for random structures;
- how the searched structure compares: mean +- sd over seeds, and the paired difference (by seed)
  with its t interval (``designspace.compare``, shared with the final comparison).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from itertools import combinations


def binary_entropy(p: float) -> float:
    """H(p) in bits."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def mean_entropy(p: Sequence[float]) -> float:
    """Mean binary entropy of the gate probabilities (bits per candidate): 0 when every gate is 0 or 1."""
    return sum(binary_entropy(float(x)) for x in p) / len(p) if len(p) else 0.0


def decided_share(p: Sequence[float], params: Sequence[float], budget: float, at: float = 0.9) -> float:
    """Share of the budget held by gates with ``p >= at``: 0 while p is spread (however small the
    entropy of a tiny uniform p), 1 once the structure is decided."""
    return sum(n * x for x, n in zip(p, params, strict=True) if x >= at) / budget if budget > 0 else 1.0


def jaccard(a, b) -> float:
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 1.0


def mean_pairwise_jaccard(sets: Sequence) -> float | None:
    """Mean Jaccard overlap over every pair of ``sets`` (None for fewer than two)."""
    pairs = [jaccard(a, b) for a, b in combinations(sets, 2)]
    return statistics.mean(pairs) if pairs else None


def top_k(p: Sequence[float], k: int) -> list[int]:
    """Indices of the ``k`` largest probabilities (ties broken by position)."""
    return sorted(sorted(range(len(p)), key=lambda i: (-p[i], i))[:k])
