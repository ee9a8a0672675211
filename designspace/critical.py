"""Critical values of the paired-stage comparisons (see ``decision.py`` for what they mean).

Exact on complete (balanced) tables: the studentised range, by quadrature; otherwise a seeded
(deterministic) Monte Carlo of the multivariate t with the fit's actual covariance.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import optimize, special, stats

from .errors import invalid

#: Monte Carlo draws for a critical value of an unbalanced table: the tail probability at the
#: quantile then has a relative standard error of about 5 % when alpha_look = 0.0125.
N_MC = 40_000


# --- exact critical values for complete (balanced) tables ----------------------------------------
@lru_cache(maxsize=1)
def _z_rule() -> tuple[np.ndarray, np.ndarray]:
    # Trapezoid on a fine grid: the integrands are analytic and decay like Gaussians, for which the
    # rule converges geometrically (step 0.1 is far below its error at the tails we need).
    z = np.arange(-9.0, 9.0 + 1e-9, 0.1)
    return z, stats.norm.pdf(z) * 0.1


@lru_cache(maxsize=512)
def _s_rule(df: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights for S = sqrt(chi2_df / df), the studentising factor (trapezoid in log s)."""
    if df > 10**6:
        return np.ones(1), np.ones(1)
    lo, hi = stats.chi2.ppf(1e-15, df), stats.chi2.isf(1e-15, df)
    x = np.linspace(0.5 * math.log(lo / df), 0.5 * math.log(hi / df), 257)
    u = df * np.exp(2 * x)
    logf = math.log(2) + 0.5 * df * np.log(u) - u / 2 - 0.5 * df * math.log(2) - special.gammaln(df / 2)
    w = np.exp(logf)
    return np.exp(x), w / w.sum()


def _balanced_cdf(method: str, m: int, df: int, w: float) -> float:
    """P(max statistic <= w) for m equally replicated choices, w in units of se of a difference."""
    z, wz = _z_rule()
    s, ws = _s_rule(df)
    r = math.sqrt(2.0) * w * s  # in units of the sd of one mean
    if method == "strict":  # studentised range of m means
        inner = (special.ndtr(z[:, None]) - special.ndtr(z[:, None] - r[None, :])) ** (m - 1)
        p = m * (wz[:, None] * inner).sum(0)
    else:  # one-sided Dunnett: m - 1 others against one control
        p = (wz[:, None] * special.ndtr(z[:, None] + r[None, :]) ** (m - 1)).sum(0)
    return float((ws * p).sum())


@lru_cache(maxsize=8192)
def balanced_critical(method: str, m: int, df: int, level: float) -> float:
    """Exact critical value (in standard errors of a difference) for m choices on complete blocks.

    ``strict``: studentised range quantile / sqrt(2); ``hsu``: one-sided Dunnett with m - 1
    comparisons (correlation 1/2). Computed by quadrature, checked against scipy in the tests.
    """
    if m < 2 or df < 1:
        raise invalid("m, df", (m, df), "m >= 2 choices and df >= 1")
    return float(optimize.brentq(lambda w: _balanced_cdf(method, m, df, w) - level, 1e-6, 200.0, xtol=1e-7))


def mc_critical(cov: np.ndarray, df: int, level: float, method: str = "strict", n_mc: int = N_MC,
                seed: int = 0) -> np.ndarray:
    """Critical values for any covariance of the estimated effects, by a seeded Monte Carlo.

    ``cov`` is the covariance of the effect estimates divided by sigma^2 (any generalised inverse
    of the reduced normal equations). Returns one value per choice: for ``strict`` all equal (the
    quantile of the max over all pairs), for ``hsu`` the Dunnett quantile with that choice as
    control. The same seed gives the same value, so a decision is reproducible.
    """
    k = cov.shape[0]
    lam, vec = np.linalg.eigh(cov)
    root = vec * np.sqrt(np.clip(lam, 0.0, None))
    d = np.diag(cov)
    var = d[:, None] + d[None, :] - 2 * cov
    with np.errstate(divide="ignore"):
        inv_se = np.where(np.eye(k, dtype=bool) | (var <= 0), 0.0, 1.0 / np.sqrt(np.abs(var)))
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, n_mc, 8192):
        n = min(8192, n_mc - start)
        e = rng.standard_normal((n, k)) @ root.T
        s = np.sqrt(rng.chisquare(df, n) / df)
        t = (e[:, :, None] - e[:, None, :]) * inv_se / s[:, None, None]  # t[., i, j]: i beats j
        out.append(t.max((1, 2))[:, None] if method == "strict" else t.max(1))  # hsu: others beat i
    q = np.quantile(np.concatenate(out), level, axis=0)
    return np.broadcast_to(q, (k,)).copy()
