"""One additive model over all trials of an experiment, with block fixed effects, and a test of additivity.

Each stage's table compares the choices of one component; this model reads every trial of every
stage at once, so a choice's effect borrows strength from all blocks where it was compared:

    score_t = block_b(t) + grouping + allocation + tuned_set
              + sum over tuned groups g of strategy_set_of_g                         (+ e_t, iid)

A strategy set only acts in a tuned group, so its indicator is on only when its group is tuned;
its effect is relative to the group's reference set *when the group is tuned*. The effect of a
tuned set is relative to the reference tuned set, each tuned group holding its reference strategy
set. References are the most frequent choice (most likely to be compared with the others).

What block fixed effects identify. A block is one base design with one component varied, so a
block's fixed effect absorbs everything constant inside it: the base's components, their
interactions and its share of the noise. Hence:

- identified: the difference between two choices of a component that met inside a block, or
  through a chain of blocks (A beside B in one, B beside C in another). A strategy set is also
  seen in tuned-groups blocks, where its group's tuning is switched on and off beside it;
- not identified: the absolute level of a block; the effect of a choice that appeared only as the
  fixed part of bases (never varied inside a block): it is reported as not estimable, never
  guessed; the interaction of two components unless one varied inside blocks whose bases differed
  in the other. A predicted score adds the mean block effect, which is estimable only when the
  average trial's components are; otherwise ``predicted_score`` is None and only the gain over
  the reference combination is reported.

Rank-deficient designs are the normal case here: the fit uses the row space of the design
(singular values above 1e-9 of the largest), and an effect counts as estimable only when its
coefficient vector lies in that row space, not merely when its standard error is finite.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from .errors import invalid
from .space import format_choice

_TOL = 1e-9


def _components(n_groups: int) -> list[str]:
    return ["grouping", "allocation", "tuned_groups"] + [f"strategies.G{g}" for g in range(1, n_groups + 1)]


@dataclass(frozen=True)
class Effect:
    """A choice's effect relative to its component's reference, in points, with a t interval."""

    component: str
    choice: str
    n: int  # trials with this choice (strategy sets: trials where the group is tuned)
    reference: bool
    estimable: bool
    estimate: float | None
    lower: float | None
    upper: float | None


@dataclass(frozen=True)
class PairTest:
    """F test of the additive model against it plus the interactions of one pair of components."""

    pair: str  # "grouping x allocation"
    f: float
    p: float  # unadjusted
    df_num: int
    df_den: int


@dataclass(frozen=True)
class AdditivityTest:
    """The pair with the strongest interaction; ``p`` is Bonferroni-adjusted over the pairs tested."""

    f: float | None
    p: float | None
    df_num: int
    df_den: int
    pair: str
    n_pairs: int
    pairs: tuple[PairTest, ...]
    meaning: str


@dataclass(frozen=True)
class BestDesign:
    design: dict  # Design.to_dict() shape without the budget
    gain: float  # predicted points over the reference combination
    predicted_score: float | None  # in an average block; None where the block mean is not estimable
    note: str


@dataclass(frozen=True)
class JointFit:
    n_groups: int
    n_trials: int
    n_blocks: int
    level: float
    resid_sd: float | None
    df_resid: int
    baseline: float | None  # predicted score of the reference combination in an average block
    effects: tuple[Effect, ...]
    additivity: AdditivityTest

    def effect(self, component: str, choice) -> Effect:
        label = _label(choice)
        for e in self.effects:
            if e.component == component and e.choice == label:
                return e
        known = [e.choice for e in self.effects if e.component == component]
        raise invalid(f"{component} choice", label, known)

    def best_design(self, space_choices) -> BestDesign:
        """The additive prediction's best design among the allowed choices.

        ``space_choices`` is a DesignSpace or a mapping component -> allowed choices. Only
        estimable effects compete (a reference counts as 0); tuned sets are enumerated and, for
        each, every tuned group takes its best estimable strategy set, since the model is additive.
        """
        allowed = _allowed(space_choices, self.n_groups)
        table = {(e.component, e.choice): e for e in self.effects}
        skipped: list[str] = []

        def best_of(component):
            scored = []
            for c in allowed[component]:
                e = table.get((component, _label(c)))
                if e is None or not e.estimable:
                    skipped.append(f"{component}={_label(c)}")
                else:
                    scored.append((0.0 if e.reference else e.estimate, c))
            return max(scored, key=lambda t: t[0]) if scored else None

        picks = [best_of("grouping"), best_of("allocation")]
        strat = {g: best_of(f"strategies.G{g}") for g in range(1, self.n_groups + 1)}
        tuned = []
        for t in allowed["tuned_groups"]:
            e = table.get(("tuned_groups", _label(t)))
            if e is None or not e.estimable or any(strat[g] is None for g in t):
                skipped.append(f"tuned_groups={_label(t)}")
                continue
            tuned.append(((0.0 if e.reference else e.estimate) + sum(strat[g][0] for g in t), tuple(t)))
        if None in picks or not tuned:
            raise invalid("space_choices", "no estimable combination", "choices compared inside some block")
        best_t = max(tuned, key=lambda x: x[0])
        gain = picks[0][0] + picks[1][0] + best_t[0]
        # An untuned group's set changes nothing; its first allowed set keeps the design valid.
        sets = {f"G{g}": list(strat[g][1] if g in best_t[1] else allowed[f"strategies.G{g}"][0])
                for g in range(1, self.n_groups + 1)}
        design = {"grouping": picks[0][1], "allocation": picks[1][1], "tuned_groups": list(best_t[1]),
                  "strategies": sets, "n_groups": self.n_groups}
        note = ("not estimable, left out: " + ", ".join(sorted(set(skipped)))) if skipped else ""
        score = None if self.baseline is None else float(self.baseline + gain)
        return BestDesign(design, float(gain), score, note)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> JointFit:
        kw = {f.name: d[f.name] for f in fields(cls)}
        kw["effects"] = tuple(Effect(**e) for e in d["effects"])
        add = dict(d["additivity"])
        add["pairs"] = tuple(PairTest(**t) for t in add["pairs"])
        kw["additivity"] = AdditivityTest(**add)
        return cls(**kw)


# --- reading trials ---------------------------------------------------------------------------
def _label(value) -> str:
    """The report's spelling of a choice: ``spindle``, ``{1,3}``, ``{adapter,lora}`` (sets sorted)."""
    return format_choice(tuple(sorted(value)) if isinstance(value, (list, tuple)) else value)


def _allowed(space_choices, n_groups: int) -> dict:
    get = space_choices.choices if hasattr(space_choices, "choices") else space_choices.__getitem__
    return {c: list(get(c)) for c in _components(n_groups)}


def _rows(trials) -> tuple[list[dict], int]:
    records = trials.to_dict("records") if hasattr(trials, "to_dict") else list(trials)
    rows, groups = [], set()
    for i, r in enumerate(records):
        score = r.get("score")
        if score is None or not math.isfinite(float(score)):
            continue  # a failed trial carries no score
        st = r["strategies"]
        n_groups = int(r.get("n_groups", len(st)))
        if isinstance(st, dict):
            st = [st[f"G{g}"] for g in range(1, n_groups + 1)]
        if len(st) != n_groups:
            raise invalid(f"trials[{i}].strategies", st, f"one strategy set per group ({n_groups})")
        groups.add(n_groups)
        tuned = tuple(sorted(int(g) for g in r["tuned_groups"]))
        row = {"score": float(score), "block": str(r["block"]), "grouping": str(r["grouping"]),
               "allocation": str(r["allocation"]), "tuned_groups": _label(tuned)}
        for g in range(1, n_groups + 1):
            row[f"strategies.G{g}"] = _label(st[g - 1]) if g in tuned else None
        rows.append(row)
    if len(groups) > 1:
        raise invalid("n_groups", sorted(groups), "one number of groups for all trials")
    if not rows:
        raise invalid("trials", "none with a finite score", "at least one finished trial")
    return rows, groups.pop()


def _design(rows: list[dict], comps: list[str]):
    """Treatment-coded columns: one per non-reference choice (None = not applicable)."""
    cols, info, refs, counts = [], [], {}, {}
    for comp in comps:
        vals = [r[comp] for r in rows]
        count: dict[str, int] = {}
        for v in vals:
            if v is not None:
                count[v] = count.get(v, 0) + 1
        if not count:
            continue
        ref = min(count, key=lambda c: (-count[c], c))
        refs[comp], counts[comp] = ref, count
        for level in sorted(count):
            if level != ref:
                cols.append(np.array([v == level for v in vals], float))
                info.append((comp, level))
    x = np.column_stack(cols) if cols else np.zeros((len(rows), 0))
    return x, info, refs, counts


def _block_means(a: np.ndarray, blk: np.ndarray, n_blk: int) -> np.ndarray:
    size = np.bincount(blk, minlength=n_blk).astype(float)
    sums = np.zeros((n_blk,) + a.shape[1:])
    np.add.at(sums, blk, a)
    return sums / size.reshape((-1,) + (1,) * (a.ndim - 1))


def _within(a: np.ndarray, blk: np.ndarray, n_blk: int) -> np.ndarray:
    """Subtract block means: the block fixed effects, absorbed (Frisch-Waugh-Lovell)."""
    return a - _block_means(a, blk, n_blk)[blk]


def _fit(yw: np.ndarray, xw: np.ndarray, n_blk: int):
    """statsmodels OLS on within-block data: a full-rank basis of the design's row space.

    The block dummies are orthogonal to within-block columns, so leaving them out changes no
    coefficient or residual (Frisch-Waugh-Lovell); only the residual df must still pay for them.
    Returns the results and the basis (rows: orthonormal directions spanning the row space).
    """
    import statsmodels.api as sm

    vt, r = np.zeros((0, xw.shape[1])), 0
    if xw.shape[1]:
        _, s, vt = np.linalg.svd(xw, full_matrices=False)
        r = int((s > _TOL * max(s.max(), 1.0)).sum())
    basis = vt[:r]
    z = xw @ basis.T if r else np.zeros((len(yw), 1))  # a zero column: statsmodels needs one
    model = sm.OLS(yw, z)
    model.df_resid = len(yw) - n_blk - r
    return model.fit(), basis


def _in_row_space(v: np.ndarray, basis: np.ndarray) -> bool:
    """Whether the linear function ``v . beta`` is estimable: ``v`` lies in the design's row space."""
    return bool(np.linalg.norm(v - basis.T @ (basis @ v)) < 1e-6 * max(1.0, float(np.linalg.norm(v))))


# --- the model ---------------------------------------------------------------------------------
def fit_joint(trials, level: float = 0.95) -> JointFit:
    """Fit the additive model to ``trials`` (dicts or a DataFrame) and test it against interactions.

    Keys: ``score``, ``block`` (string id), ``grouping``, ``allocation``, ``tuned_groups`` (ints),
    ``strategies`` (one set per group, or Design.to_dict's mapping), ``n_groups``.
    """
    from scipy import stats

    rows, n_groups = _rows(trials)
    blocks = {}
    for r in rows:
        blocks.setdefault(r["block"], []).append(r)
    rows = [r for rs in blocks.values() if len(rs) >= 2 for r in rs]  # a lone trial says nothing
    names = sorted({r["block"] for r in rows})
    if not rows:
        raise invalid("trials", "no block with two trials", "blocks holding the choices of a stage")
    index = {b: i for i, b in enumerate(names)}
    blk = np.array([index[r["block"]] for r in rows])
    y = np.array([r["score"] for r in rows])
    comps = _components(n_groups)
    x, info, refs, counts = _design(rows, comps)
    n_b = len(names)
    xw, yw = _within(x, blk, n_b), _within(y, blk, n_b)
    res, basis = _fit(yw, xw, n_b)
    theta = res.params[: len(basis)]
    cov_t = res.cov_params()[: len(basis), : len(basis)]
    beta = basis.T @ theta
    se = np.sqrt(np.clip(np.einsum("ij,jk,ik->i", basis.T, cov_t, basis.T), 0, None))
    estimable = np.array([_in_row_space(e, basis) for e in np.eye(len(info))], bool)
    t = stats.t.ppf(0.5 + level / 2, res.df_resid) if res.df_resid > 0 else math.nan
    effects = []
    for comp in comps:
        if comp not in refs:
            continue
        for level_name in sorted(counts[comp]):
            n = counts[comp][level_name]
            if level_name == refs[comp]:
                effects.append(Effect(comp, level_name, n, True, True, 0.0, None, None))
                continue
            j = info.index((comp, level_name))
            ok = bool(estimable[j]) and res.df_resid > 0
            est, half = (float(beta[j]), float(t * se[j])) if ok else (None, 0.0)
            effects.append(Effect(comp, level_name, n, False, bool(estimable[j]), est,
                                  est - half if ok else None, est + half if ok else None))
    # Mean block effect = mean of block means minus the average trial's modelled part.
    xbar = _block_means(x, blk, n_b).mean(0)
    ybar = float(_block_means(y, blk, n_b).mean())
    base_ok = _in_row_space(xbar, basis)
    return JointFit(
        n_groups=n_groups, n_trials=len(rows), n_blocks=n_b, level=level,
        resid_sd=float(math.sqrt(res.scale)) if res.df_resid > 0 else None, df_resid=int(res.df_resid),
        baseline=float(ybar - xbar @ beta) if base_ok else None, effects=tuple(effects),
        additivity=_additivity(rows, comps, x, info, xw, yw, blk, n_b, res),
    )


def _additivity(rows, comps, x, info, xw, yw, blk, n_b, res_add) -> AdditivityTest:
    """One F test per pair (within-block component, other component), Bonferroni over the pairs.

    Inside a block one component varies, so its effect may differ between blocks whose bases
    differ in another component: the products of the two components' columns carry exactly that,
    and nothing else is identified with block fixed effects. A real interaction is usually one
    pair (a strategy set that suits some tuned groups only); testing pairs one by one keeps the
    power a single F test on all products (hundreds of df) would spread thin.
    """
    from scipy import stats

    varying = set()
    for b in range(n_b):
        members = [rows[i] for i in np.flatnonzero(blk == b)]
        varying |= {c for c in comps if len({r[c] for r in members} - {None}) > 1}
    cols_of = {c: [j for j, (comp, _) in enumerate(info) if comp == c] for c in comps}
    pairs = sorted({tuple(sorted((w, o), key=comps.index)) for w in varying for o in comps if w != o},
                   key=lambda p: (comps.index(p[0]), comps.index(p[1])))
    tests = []
    for a, b in pairs:
        prod = [x[:, i] * x[:, j] for i, j in itertools.product(cols_of[a], cols_of[b])]
        inter = _within(np.column_stack(prod), blk, n_b) if prod else np.zeros((len(yw), 0))
        inter = inter[:, np.abs(inter).max(0) > 1e-12] if inter.size else inter
        if not inter.shape[1]:
            continue
        res, _ = _fit(yw, np.column_stack([xw, inter]), n_b)
        df_num = int(round(res_add.df_resid - res.df_resid))
        if df_num <= 0 or res.df_resid <= 0:
            continue
        f = ((res_add.ssr - res.ssr) / df_num) / (res.ssr / res.df_resid)
        tests.append(PairTest(f"{a} x {b}", float(f), float(stats.f.sf(f, df_num, res.df_resid)), df_num,
                              int(res.df_resid)))
    if not tests:
        return AdditivityTest(None, None, 0, 0, "", 0, (), "No interaction is testable: no component varied "
                              "inside blocks whose bases differed in another component.")
    top = min(tests, key=lambda t: t.p)
    p = min(1.0, top.p * len(tests))
    where = (f"{top.pair}: F = {top.f:.2f} on {top.df_num} and {top.df_den} df, p = {p:.3g} after Bonferroni "
             f"over {len(tests)} pairs")
    meaning = (f"The choices' effects depend on the rest of the design ({where}): the additive best design "
               f"may not be the best; read the per-stage decisions." if p < 0.05 else
               f"No evidence that the choices' effects depend on the rest of the design (strongest pair "
               f"{where}); this does not prove additivity, small interactions go undetected.")
    return AdditivityTest(top.f, p, top.df_num, top.df_den, top.pair, len(tests), tuple(tests), meaning)
