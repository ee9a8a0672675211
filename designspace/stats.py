"""Evidence for a refinement decision: bootstrap CIs, EDFs, rank tests, and how sure we are."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats


def bootstrap_ci(values, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (a single value gives a zero-width interval)."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return (math.nan, math.nan)
    if len(v) == 1:
        return (float(v[0]), float(v[0]))
    rng = np.random.default_rng(seed)
    means = rng.choice(v, size=(n_boot, len(v)), replace=True).mean(1)
    a = (1 - level) / 2
    return (float(np.quantile(means, a)), float(np.quantile(means, 1 - a)))


def edf(values) -> tuple[list[float], list[float]]:
    """Empirical distribution function as step points (x sorted, F(x) = i/n), the paper's figure."""
    x = sorted(float(v) for v in values)
    n = len(x)
    return x, [(i + 1) / n for i in range(n)]


@dataclass
class ChoiceStats:
    choice: str
    n: int
    mean: float
    ci: tuple[float, float]
    scores: list[float]
    p_vs_best: float | None = None  # Mann-Whitney U (two-sided) against the best choice


@dataclass
class Decision:
    component: str
    best: str
    margin: float  # best mean minus the runner-up's
    margin_ci: tuple[float, float]
    p_best: float  # share of bootstrap resamples in which the best choice stays best
    confidence: str  # high | medium | low
    choices: list[ChoiceStats] = field(default_factory=list)
    noise_sd: float | None = None  # per-design seed-to-seed std (replicated designs)
    n_trials: int = 0
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Decision:
        d = dict(d)
        d["choices"] = [ChoiceStats(**{**c, "ci": tuple(c["ci"])}) for c in d.get("choices", [])]
        d["margin_ci"] = tuple(d["margin_ci"])
        return cls(**d)


def compare(component: str, scores: dict[str, list[float]], n_boot: int = 2000, seed: int = 0,
            noise_sd: float | None = None) -> Decision:
    """Pick the choice with the best mean score and say how sure that is.

    ``p_best`` resamples the designs of every choice together and counts how often the winner keeps
    the highest mean. ``confidence`` is high when the margin's 95 % CI excludes 0 and p_best >= 0.95,
    medium when its 80 % CI excludes 0 and p_best >= 0.9, else low.
    """
    present = {c: [float(x) for x in v if x is not None and not math.isnan(x)] for c, v in scores.items()}
    present = {c: v for c, v in present.items() if v}
    if not present:
        raise ValueError(f"no finished trials to compare for {component}")
    rng = np.random.default_rng(seed)

    def resample(v: list[float]) -> np.ndarray:
        a = np.asarray(v)
        if len(a) == 1 and noise_sd:
            # One design: a bootstrap has nothing to resample; use the measured per-design noise
            # (parametric bootstrap) instead of pretending the score is exact.
            return a[0] + rng.normal(0.0, noise_sd, n_boot)
        return rng.choice(a, size=(n_boot, len(a)), replace=True).mean(1)

    rows = []
    for c, v in present.items():
        means = resample(v)
        ci = (float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))) if len(v) > 1 or noise_sd \
            else (v[0], v[0])
        rows.append((ChoiceStats(c, len(v), float(np.mean(v)), ci, v), means))
    rows.sort(key=lambda r: -r[0].mean)
    boot = np.stack([m for _, m in rows], axis=1)
    rows = [r for r, _ in rows]
    best = rows[0]
    for r in rows[1:]:
        if len(r.scores) + len(best.scores) > 2:
            r.p_vs_best = float(stats.mannwhitneyu(best.scores, r.scores, alternative="two-sided").pvalue)
    names = [r.choice for r in rows]
    p_best = float((boot.argmax(1) == 0).mean())
    if len(rows) > 1:
        diff = boot[:, 0] - boot[:, 1]
        margin = best.mean - rows[1].mean
        margin_ci = (float(np.quantile(diff, 0.025)), float(np.quantile(diff, 0.975)))
        margin_lo80 = float(np.quantile(diff, 0.10))
    else:
        margin, margin_ci, p_best, margin_lo80 = 0.0, (0.0, 0.0), 1.0, 0.0
    # The leader is picked from the same data, so P(best) is optimistic (winner's curse): ask the
    # runner-up margin's CI too.
    if len(rows) > 1 and margin_ci[0] > 0 and p_best >= 0.95:
        confidence = "high"
    elif len(rows) > 1 and margin_lo80 > 0 and p_best >= 0.9:
        confidence = "medium"
    else:
        confidence = "low"
    untested = len(rows) > 1 and min(len(rows[0].scores), len(rows[1].scores)) < 2 and not noise_sd
    if untested:
        confidence = "low"
    return Decision(
        component=component,
        best=names[0],
        margin=float(margin),
        margin_ci=margin_ci,
        p_best=p_best,
        confidence=confidence,
        choices=rows,
        noise_sd=noise_sd,
        n_trials=sum(len(r.scores) for r in rows),
        note="one design per leading choice and no noise estimate: the ranking is untested" if untested else "",
    )


def separated(decision: Decision) -> bool:
    """Racing stops when the leader's CI no longer overlaps the runner-up's."""
    if len(decision.choices) < 2:
        return True
    return decision.choices[0].ci[0] > decision.choices[1].ci[1]


def designs_needed(noise_sd: float, effect: float, n_choices: int, alpha: float = 0.05, power: float = 0.8) -> int:
    """Designs per choice to detect a mean difference ``effect`` between two choices (normal approx.).

    The spread between designs of one choice (``noise_sd``) sets the count, not a constant.
    """
    if effect <= 0:
        raise ValueError("effect must be > 0")
    z = stats.norm.ppf(1 - alpha / (2 * max(n_choices - 1, 1))) + stats.norm.ppf(power)
    return max(2, math.ceil(2 * (z * noise_sd / effect) ** 2))
