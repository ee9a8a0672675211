"""The numbers an S3PET experiment reports, computed from plain values (no torch here).

- how far the gates polarised: the mean binary entropy of ``p`` (bits per candidate; a uniform
  ``p`` at the budget has ``H(budget / pool)``) and the share of the budget held by gates with
  ``p >= 0.9``;
- how stable the search is: the Jaccard overlap of the structures (and of the top of the gate
  ranking) that different seeds found, beside the same overlap for random structures;
- how the searched structure compares: mean +- sd over seeds, and the paired difference (by seed:
  same data, same initial weights) with its t interval (``paired_difference``; its coverage is
  simulated in the tests).
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


def paired_difference(a: dict, b: dict, level: float = 0.95) -> dict | None:
    """``a - b`` over the seeds both have: mean, sd, t interval, wins of ``a``, n (None if no seed).

    The interval is Student's t on the per-seed differences (pairing removes what a seed does to
    every method alike: its data subset, its initial weights).
    """
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    d = [a[s] - b[s] for s in seeds]
    n = len(d)
    mean = statistics.mean(d)
    sd = statistics.stdev(d) if n > 1 else None
    if n > 1:
        from scipy import stats

        half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
        ci = (mean - half, mean + half)
    else:
        ci = None
    return {"n": n, "mean": mean, "sd": sd, "ci": ci, "wins": sum(x > 0 for x in d), "ties": sum(x == 0 for x in d),
            "seeds": seeds}


def verdict(diff: dict | None) -> str:
    """What a paired difference shows, in words (a tie is a result)."""
    if diff is None:
        return "no paired seeds"
    if diff["ci"] is None:
        return "one seed: no interval"
    lo, hi = diff["ci"]
    if lo > 0:
        return "searched better"
    if hi < 0:
        return "searched worse"
    return "no difference shown"


def mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    values = list(values)
    if not values:
        return None, None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None
