"""Decisions of a paired stage: two-way analysis, comparisons with the best, sequential elimination.

A paired stage draws B base designs ("blocks") and trains every surviving choice of the stage's
component on each, the rest of the base fixed. The table ``Y[b, c]`` (NaN: not trained or failed)
is analysed with the additive two-way model ``y_bc = mu + block_b + tau_c + e_bc`` (e iid), so a
choice is judged by within-block differences: the between-design spread (about 0.9 points on real
data) cancels and only the paired noise (seed noise plus choice-by-base interaction) remains.

Which data a look analyses: the columns of the choices still in the race, every block, least
squares on the observed cells. Survivors are trained on every block, so their sub-table is complete
unless trials failed; then the critical value is exact. Eliminated choices are frozen with the
result of the look that eliminated them: their early cells would only sharpen the block effects,
which a complete survivor table does not need, and leaving them out keeps the table balanced.

What a claim means (``method="strict"``, the default). At a look with level ``1 - alpha_look``,
``c`` is the ``1 - alpha_look`` quantile of ``max_{i != j} |e_i - e_j| / se_ij`` over the analysed
choices (studentised range where balanced, else a seeded Monte Carlo of the multivariate t with
the actual covariance). On the event that every pair lies within ``c`` standard errors, which has
probability ``1 - alpha_look``,

    theta_i = tau_i - max_{j != i} tau_j  lies in  [min_j (d_ij - c se_ij), min_j (d_ij + c se_ij)]

for every i at once (``d_ij`` the estimated difference). These are the MCB intervals. A choice is
*shown worse than the best* when its upper bound is below 0: then ``tau_i < max_j tau_j`` strictly,
so under the null (all equal) no elimination is allowed to happen more often than ``alpha_look``.
A *tie* is every survivor's lower bound above ``-delta``: each survivor is within ``delta`` of the
best of the others. ``alpha_look = alpha / max_rounds`` (Bonferroni over the planned looks), so
every interval and claim of the whole stage holds together with probability >= ``1 - alpha``.

Why not Hsu's constrained MCB (``method="hsu"``, kept for comparison): its critical value is a
one-sided Dunnett quantile with the (unknown) best as control, so its "not the best" claim is only
``tau_i <= max_{j != i} tau_j``. That is true of every choice when all are equal: under the null it
eliminates something in about 13 % (k = 3), 19 % (k = 5) and 38 % (k = 15) of single looks at 95 %.
Its intervals cover; its eliminations are not "worse than the best" in the sense a report reads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

from .critical import N_MC, balanced_critical, mc_critical
from .errors import invalid

METHODS = ("strict", "hsu")
STATUSES = ("separated", "tie", "open")


# --- the two-way fit, batched over tables --------------------------------------------------------
@dataclass(frozen=True)
class Look:
    """One look at a batch of n tables of k choices (arrays; NaN where a choice was not analysed).

    ``diff`` is the point estimate of tau_c - max_{j != c} tau_j, ``lower``/``upper`` its MCB bounds,
    ``worse`` the choices shown worse than the best at this look, ``survivors`` the active choices
    that were not, ``tie_bound`` the largest distance below the best of the others that the lower
    bounds allow among survivors.
    """

    effect: np.ndarray
    diff: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    critical: np.ndarray
    worse: np.ndarray
    survivors: np.ndarray
    status: np.ndarray
    tie_bound: np.ndarray
    resid_sd: np.ndarray
    df: np.ndarray
    n_blocks: np.ndarray
    balanced: np.ndarray


def _fit(y: np.ndarray, obs: np.ndarray):
    """Least squares of the two-way additive model on the observed cells of each table.

    Returns effects (sum zero over estimable choices), their covariance / sigma^2 (the Moore-Penrose
    inverse of the reduced normal equations C = diag(r) - N' diag(1/k_b) N), residual SS and df.
    """
    w = obs.astype(float)
    w *= (w.sum(-1) >= 2)[..., None]  # a block with one cell says nothing about differences
    kb = w.sum(-1)
    inv = np.divide(1.0, kb, out=np.zeros_like(kb), where=kb > 0)
    y0 = np.where(w > 0, y, 0.0)
    r = w.sum(1)
    bt = y0.sum(-1)
    c = np.einsum("nk,kj->nkj", r, np.eye(r.shape[-1])) - np.swapaxes(w * inv[..., None], 1, 2) @ w
    q = y0.sum(1) - np.einsum("nbk,nb->nk", w, inv * bt)
    cov = np.linalg.pinv(c, rcond=1e-9, hermitian=True)
    tau = np.einsum("nij,nj->ni", cov, q)
    ss = (y0**2).sum((1, 2)) - (inv * bt**2).sum(1) - (tau * q).sum(1)
    est = r > 0
    m = est.sum(1)
    n_blocks = (kb > 0).sum(1)
    df = (w.sum((1, 2)) - n_blocks - (m - 1)).astype(int)
    rank = (np.linalg.eigvalsh(c) > 1e-9 * np.maximum(r.max(1), 1)[:, None]).sum(1)
    if np.any((rank < m - 1) & (m > 1)):
        raise ValueError("the surviving choices do not share blocks (disconnected table): "
                         "every choice must be trained on the same base designs")
    balanced = np.all((kb == 0) | (kb == m[:, None]), axis=1)
    return tau, cov, np.clip(ss, 0.0, None), df, n_blocks, est, balanced


def paired_sd(table) -> tuple[float | None, int]:
    """The residual sd of the two-way model (block + choice) on one table's observed cells, and its df
    (None where no df is left): the paired noise that decides how many blocks a stage needs."""
    y = np.asarray(table, dtype=float)[None]
    _, _, ss, df, *_ = _fit(y, np.isfinite(y))
    return (float(np.sqrt(ss[0] / df[0])) if df[0] > 0 else None), int(max(df[0], 0))


def look_batch(tables: np.ndarray, active: np.ndarray, *, level: float, delta: float = 0.0,
               method: str = "strict", n_mc: int = N_MC, seed: int = 0) -> Look:
    """Analyse n tables (n, B, k) at once, the ``active`` (n, k) choices only, at one look.

    This is the whole decision rule; :func:`decide` calls it for one table and the calibration
    benchmark for thousands, so the rule that is simulated is the rule that runs.
    """
    if method not in METHODS:
        raise invalid("method", method, METHODS)
    y = np.asarray(tables, dtype=float)
    active = np.asarray(active, dtype=bool)
    n, _, k = y.shape
    tau, cov, ss, df, n_blocks, est, balanced = _fit(y, np.isfinite(y) & active[:, None, :])
    ok = (df > 0) & (est.sum(1) >= 2)
    sigma = np.where(ok, np.sqrt(ss / np.maximum(df, 1)), np.nan)
    crit = np.full((n, k), np.nan)
    for i in np.flatnonzero(ok):
        idx = np.flatnonzero(est[i])
        if balanced[i]:
            crit[i, idx] = balanced_critical(method, len(idx), int(df[i]), level)
        else:
            crit[i, idx] = mc_critical(cov[i][np.ix_(idx, idx)], int(df[i]), level, method, n_mc, seed)
    d = tau[:, :, None] - tau[:, None, :]
    dg = np.diagonal(cov, axis1=1, axis2=2)
    se = sigma[:, None, None] * np.sqrt(np.clip(dg[:, :, None] + dg[:, None, :] - 2 * cov, 0, None))
    pair = est[:, :, None] & est[:, None, :] & ~np.eye(k, dtype=bool) & ok[:, None, None]
    big = np.inf
    analysed = est & ok[:, None]
    diff = np.where(pair, d, big).min(2)
    hi_raw = np.where(pair, d + crit[:, :, None] * se, big).min(2)
    if method == "strict":
        lo = np.where(pair, d - crit[:, :, None] * se, big).min(2)
        hi = hi_raw
    else:  # Hsu's constrained MCB: lower bounds only against the candidates for best
        cand = analysed & (hi_raw > 0)
        lo = np.where(pair & cand[:, None, :], d - crit[:, None, :] * se, big).min(2)
        lo = np.minimum(lo, 0.0)
        lo = np.where(cand & (cand.sum(1, keepdims=True) == 1), 0.0, lo)
        hi = np.maximum(hi_raw, 0.0)
    worse = analysed & (hi_raw < 0)
    survivors = active & ~worse
    nan = np.nan
    effect = np.where(est, tau, nan)
    diff, lo, hi = (np.where(analysed, a, nan) for a in (diff, lo, hi))
    # A survivor without data (all its trials failed) can be neither tied nor beaten.
    surv_lo = np.where(survivors, np.where(analysed, lo, -np.inf), np.inf).min(1)
    tie_bound = np.where(np.isfinite(surv_lo), -surv_lo, nan)
    status = np.where(survivors.sum(1) == 1, "separated",
                      np.where((delta > 0) & ok & (tie_bound < delta), "tie", "open"))
    return Look(effect, diff, lo, hi, crit, worse, survivors, status, tie_bound, sigma, df, n_blocks,
                balanced)


# --- the record of a decision ---------------------------------------------------------------------
def _opt(x) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


@dataclass(frozen=True)
class ChoiceResult:
    """One choice at the look that last judged it (the look that eliminated it, if any)."""

    choice: str
    n: int  # cells observed for this choice over all blocks
    mean: float | None  # raw mean of those cells (bases differ between choices once some are dropped)
    effect: float | None  # two-way effect, sum zero over the choices analysed at that look
    diff: float | None  # estimated tau_c - max_{j != c} tau_j
    lower: float | None
    upper: float | None
    critical: float | None  # in standard errors of a difference
    eliminated_round: int | None
    meaning: str


@dataclass(frozen=True)
class Verdict:
    """The state of a paired stage after one look; plain data, stored as JSON and re-read by reports."""

    component: str
    status: str  # separated | tie | open (the caller turns open at the cap into unresolved)
    best: str
    best_margin: float | None  # estimated tau_best - max of the others
    best_margin_lower: float | None
    best_margin_upper: float | None
    best_meaning: str
    tie_bound: float | None
    delta: float
    resid_sd: float | None
    df: int
    n_blocks: int
    n_trials: int
    round_index: int
    max_rounds: int
    alpha: float
    alpha_look: float
    method: str
    critical_source: str
    meaning: str
    choices: tuple[ChoiceResult, ...]

    @property
    def survivors(self) -> tuple[str, ...]:
        return tuple(c.choice for c in self.choices if c.eliminated_round is None)

    @property
    def eliminated(self) -> dict[str, int]:
        return {c.choice: c.eliminated_round for c in self.choices if c.eliminated_round is not None}

    def choice(self, name: str) -> ChoiceResult:
        for c in self.choices:
            if c.choice == name:
                return c
        raise invalid("choice", name, [c.choice for c in self.choices])

    def to_dict(self) -> dict:
        d = asdict(self)
        d["choices"] = [asdict(c) for c in self.choices]
        d["survivors"], d["eliminated"] = list(self.survivors), self.eliminated  # for readers; derived
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Verdict:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["choices"] = tuple(ChoiceResult(**c) for c in d["choices"])
        return cls(**kw)


# --- the sequential rule --------------------------------------------------------------------------
def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.2f}"


def decide(table, *, alpha: float = 0.05, max_rounds: int = 4, round_index: int = 1, delta: float = 0.0,
           choices: Sequence[str] | None = None, previous: Verdict | None = None, component: str = "",
           method: str = "strict", n_mc: int = N_MC, seed: int = 0) -> Verdict:
    """Judge a paired stage after round ``round_index`` (1-based) of at most ``max_rounds``.

    ``table`` holds every block so far (rows) by every choice (columns, in ``choices`` order);
    NaN marks a failed trial or a choice that was not trained (eliminated earlier). ``previous``,
    the verdict of the last look, says which choices were eliminated and when; they stay out.
    ``delta`` is the equivalence margin in points (0: the stage never ends in a tie).
    Each look spends ``alpha / max_rounds`` (Bonferroni over the planned looks, conservative because
    the looks share blocks): a stage that stops early spends less than alpha, and the block counts
    may be chosen from earlier looks ("auto" sizing) without breaking the bound.
    ``method="hsu"`` gives Hsu's constrained MCB instead (see the module docstring for why not).
    """
    y = np.asarray(table, dtype=float)
    if y.ndim != 2:
        raise invalid("table", f"shape {y.shape}", "a 2-D array (blocks x choices)")
    k = y.shape[1]
    names = [str(c) for c in choices] if choices is not None else [str(i) for i in range(k)]
    if len(names) != k or len(set(names)) != k:
        raise invalid("choices", names, f"{k} distinct names, one per column")
    if not 0 < alpha < 1:
        raise invalid("alpha", alpha, "0 < alpha < 1")
    if not (isinstance(max_rounds, int) and max_rounds >= 1 and 1 <= round_index <= max_rounds):
        raise invalid("round_index", round_index, f"1..max_rounds ({max_rounds})")
    frozen: dict[str, ChoiceResult] = {}
    if previous is not None:
        if [c.choice for c in previous.choices] != names:
            raise invalid("previous", [c.choice for c in previous.choices], f"the same choices {names}")
        if previous.round_index >= round_index:
            raise invalid("round_index", round_index, f"> the previous look's round {previous.round_index}")
        frozen = {c.choice: c for c in previous.choices if c.eliminated_round is not None}
        if len(frozen) >= k - 1:
            raise invalid("previous", previous.status, "a stage that is still open (one choice is left)")
    active = np.array([nm not in frozen for nm in names])
    alpha_look = alpha / max_rounds
    lk = look_batch(y[None], active[None], level=1 - alpha_look, delta=delta, method=method, n_mc=n_mc,
                    seed=seed)
    conf = f"With {1 - alpha:.0%} confidence over the whole stage"
    rows = []
    for j, nm in enumerate(names):
        if nm in frozen:
            rows.append(frozen[nm])
            continue
        lo, hi = _opt(lk.lower[0, j]), _opt(lk.upper[0, j])
        out = round_index if lk.worse[0, j] else None
        if lo is None:
            meaning = f"{nm} has too little data at round {round_index} for an interval."
        else:
            meaning = (f"{conf}, the true difference between {nm} and the best of the other choices lies in "
                       f"[{_fmt(lo)}, {_fmt(hi)}] points" + (f"; shown worse than the best at round {out}."
                                                            if out else "."))
        col = y[:, j][np.isfinite(y[:, j])]
        rows.append(ChoiceResult(nm, int(col.size), _opt(col.mean()) if col.size else None,
                                 _opt(lk.effect[0, j]), _opt(lk.diff[0, j]), lo, hi, _opt(lk.critical[0, j]),
                                 out, meaning))
    eff = np.where(lk.survivors[0] & np.isfinite(lk.effect[0]), lk.effect[0], -np.inf)
    b = int(np.argmax(eff)) if np.isfinite(eff).any() else int(np.flatnonzero(lk.survivors[0])[0])
    best = names[b]
    m, mlo, mhi = _opt(lk.diff[0, b]), _opt(lk.lower[0, b]), _opt(lk.upper[0, b])
    best_meaning = (f"{conf}, {best} is between {_fmt(mlo)} and {_fmt(mhi)} points better than the best "
                    f"of the other choices (negative: worse)." if mlo is not None
                    else f"{best} leads on too little data for an interval.")
    status = str(lk.status[0])
    n_surv = int(lk.survivors[0].sum())
    tie_bound = _opt(lk.tie_bound[0])
    if status == "separated":
        meaning = f"{conf}, {best} is the best choice: every other choice was shown worse than the best."
    elif status == "tie":
        meaning = (f"Tie: {conf.lower()}, each of the {n_surv} surviving choices is within {tie_bound:.2f} "
                   f"points of the best of the others (margin {delta:g}); keep any.")
    else:
        meaning = (f"Open after round {round_index} of {max_rounds}: {n_surv} choices survive; {best} leads "
                   f"by {_fmt(m)} points, interval [{_fmt(mlo)}, {_fmt(mhi)}].")
    source = ("exact (complete blocks)" if lk.balanced[0] else f"Monte Carlo ({n_mc} draws, seed {seed})")
    return Verdict(
        component=component, status=status, best=best, best_margin=m, best_margin_lower=mlo,
        best_margin_upper=mhi, best_meaning=best_meaning, tie_bound=tie_bound, delta=float(delta),
        resid_sd=_opt(lk.resid_sd[0]), df=int(lk.df[0]), n_blocks=int(lk.n_blocks[0]),
        n_trials=int(np.isfinite(y).sum()), round_index=round_index, max_rounds=max_rounds, alpha=alpha,
        alpha_look=alpha_look, method=method, critical_source=source, meaning=meaning, choices=tuple(rows),
    )


# --- sizing -----------------------------------------------------------------------------------
def expected_half_width(resid_sd: float, n_blocks: int, k: int, alpha: float = 0.05, max_rounds: int = 1,
                        method: str = "strict") -> float:
    """Half-width (points) of a pairwise MCB bound on ``n_blocks`` complete blocks of ``k`` choices.

    It is ``c * resid_sd * sqrt(2 / n_blocks)`` with the exact look-level critical value; an MCB
    interval is at most twice this wide. A difference ``D`` is separated at that look with
    probability about ``Phi((D - h) / se)``: for a high chance, ask for ``h`` near ``D / 2``.
    """
    if n_blocks < 2 or k < 2:
        raise invalid("n_blocks, k", (n_blocks, k), "n_blocks >= 2 and k >= 2")
    c = balanced_critical(method, k, (n_blocks - 1) * (k - 1), 1 - alpha / max_rounds)
    return c * resid_sd * math.sqrt(2.0 / n_blocks)


def blocks_needed(resid_sd: float, resolution: float, k: int, alpha: float = 0.05, max_rounds: int = 1,
                  method: str = "strict", max_blocks: int = 100_000) -> int:
    """Fewest complete blocks whose expected half-width is <= ``resolution`` points.

    "auto" sizing calls this with the paired noise measured so far (``Verdict.resid_sd``) and the
    current number of survivors; the count is the stage's total, not the next round's increment.
    """
    if resolution <= 0 or not resid_sd >= 0:
        raise invalid("resolution, resid_sd", (resolution, resid_sd), "resolution > 0 and resid_sd >= 0")

    def fine(b: int) -> bool:
        return expected_half_width(resid_sd, b, k, alpha, max_rounds, method) <= resolution

    lo, hi = 1, 2
    while not fine(hi):  # half-width decreases with blocks: double, then bisect
        lo, hi = hi, hi * 2
        if hi > max_blocks:
            raise invalid("resolution", resolution, f"one reachable with <= {max_blocks} blocks")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fine(mid) else (mid, hi)
    return hi
