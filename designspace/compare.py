"""Comparing methods over seeds, and rankings over designs, with intervals whose coverage is simulated
in the tests (``tests/test_compare.py``). No torch here.

- ``paired_difference``: a - b over the seeds both have (a seed fixes what every method shares: its
  data subset and order, its head's start), Student's t interval on the per-seed differences;
- ``spearman``: Spearman's rank correlation of two score lists with a Fisher-z interval using Bonett
  and Wright's variance (1 + r^2 / 2) / (n - 3), which keeps its coverage near the nominal level for
  the 20-30 designs a ranking-fidelity study has (a percentile bootstrap undercovers there);
- ``above_majority`` and ``mcc_above_zero``: is one classifier's dev score off chance (one-sided p)?
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


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
    ci = p = None
    if n > 1:
        from scipy import stats

        half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
        ci = (mean - half, mean + half)
        # two-sided p of the same t test (for corrections across a table: holm)
        p = float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1)) if sd > 0 else float(mean == 0)
    return {"n": n, "mean": mean, "sd": sd, "ci": ci, "p": p, "wins": sum(x > 0 for x in d),
            "ties": sum(x == 0 for x in d), "seeds": seeds}


def holm(ps: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of p-values for a family of tests (None stays None and does not
    count): rejecting where the adjusted p < alpha keeps the chance of any false claim in the family
    at or below alpha (tests/test_compare.py checks it by simulation)."""
    order = sorted((p, i) for i, p in enumerate(ps) if p is not None)
    out: list[float | None] = [None] * len(ps)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        out[i] = running
    return out


def verdict(diff: dict | None, better: str = "searched") -> str:
    """What a paired difference shows, in words (a tie is a result)."""
    if diff is None:
        return "no paired seeds"
    if diff["ci"] is None:
        return "one seed: no interval"
    lo, hi = diff["ci"]
    if lo > 0:
        return f"{better} better"
    if hi < 0:
        return f"{better} worse"
    return "no difference shown"


def mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    values = list(values)
    if not values:
        return None, None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def spearman(x: Sequence[float], y: Sequence[float], level: float = 0.95) -> dict:
    """Spearman's rho of ``x`` and ``y`` with its interval: {rho, ci, n}."""
    from scipy import stats

    n = len(x)
    if n != len(y) or n < 4:
        raise ValueError(f"spearman needs two lists of the same length >= 4 (got {n} and {len(y)})")
    rho = float(stats.spearmanr(x, y).statistic)
    r = min(max(rho, -0.999999), 0.999999)
    half = float(stats.norm.ppf(0.5 + level / 2)) * math.sqrt((1 + r * r / 2) / (n - 3))
    z = math.atanh(r)
    return {"rho": rho, "ci": (math.tanh(z - half), math.tanh(z + half)), "n": n}


def above_majority(accuracy: float, n: int, majority: float) -> float:
    """One-sided exact binomial p that an accuracy on ``n`` examples beats always answering the
    majority class (rate ``majority``): small only where the classifier learned something."""
    from scipy import stats

    return float(stats.binomtest(round(accuracy * n), n, majority, alternative="greater").pvalue)


def mcc_above_zero(mcc: float, n: int) -> float:
    """One-sided p that a binary Matthews correlation on ``n`` examples exceeds 0 (no association):
    under independence n * MCC^2 is chi-square with 1 degree of freedom, i.e. sqrt(n) * MCC is normal."""
    from scipy import stats

    return float(stats.norm.sf(mcc * math.sqrt(n)))
