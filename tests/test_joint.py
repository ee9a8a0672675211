"""The joint additive model on synthetic experiments whose true effects are known."""

from __future__ import annotations

import json

import numpy as np
import pytest

from designspace.joint import JointFit, fit_joint
from designspace.space import DesignSpace, format_choice

SETS = (("lora",), ("adapter",), ("adapter", "lora"), ("bitfit",))
SPACE = DesignSpace(n_groups=3, strategies=(SETS,) * 3)
GROUPING = {"increasing": 0.0, "uniform": 0.4, "decreasing": -0.6, "spindle": 1.2, "bottleneck": 0.2}
ALLOCATION = {"increasing": 0.0, "uniform": 0.7, "decreasing": -0.3}
TUNED = {t: 0.3 * len(t) - (0.8 if 2 not in t else 0.0) for t in SPACE.tuned_groups}
STRATEGY = {SETS[0]: 0.0, SETS[1]: 0.5, SETS[2]: 1.0, SETS[3]: -0.7}


def truth(d: dict) -> float:
    return (GROUPING[d["grouping"]] + ALLOCATION[d["allocation"]] + TUNED[d["tuned_groups"]]
            + sum(STRATEGY[d["strategies"][g - 1]] for g in d["tuned_groups"]))


def experiment(seed, blocks=12, interaction=0.0, stage_allocations=None):
    """Paired stages over every component; a base's unmodelled part is a random block effect."""
    rng = np.random.default_rng(seed)
    rows = []
    for comp in SPACE.components():
        for b in range(blocks):
            base = {c: SPACE.choices(c)[rng.integers(len(SPACE.choices(c)))] for c in SPACE.components()}
            if comp.startswith("strategies.G"):  # a strategy stage needs its group tuned
                g = int(comp[-1])
                base["tuned_groups"] = tuple(sorted(set(base["tuned_groups"]) | {g}))
            choices = SPACE.choices(comp)
            if comp == "allocation" and stage_allocations:
                choices = stage_allocations
            shift = rng.normal(0, 0.9)
            for c in choices:
                d = dict(base, **{comp: c})
                d["strategies"] = tuple(d[f"strategies.G{g}"] for g in (1, 2, 3))
                score = truth(d) + shift + rng.normal(0, 0.8)
                if d["grouping"] == "spindle" and d["allocation"] != "increasing":
                    score += interaction
                if d["grouping"] == "decreasing" and d["allocation"] == "uniform":
                    score -= interaction
                rows.append({"score": score, "block": f"{comp}/{b}", "grouping": d["grouping"],
                             "allocation": d["allocation"], "tuned_groups": d["tuned_groups"],
                             "strategies": d["strategies"], "n_groups": 3})
    return rows


def true_effects(fit):
    """The model's parameters under the truth: a tuned set's effect holds each group's reference set."""
    ref = {e.component: e.choice for e in fit.effects if e.reference}
    value = {"grouping": GROUPING, "allocation": ALLOCATION}
    sets = {format_choice(s): v for s, v in STRATEGY.items()}
    for g in (1, 2, 3):
        value[f"strategies.G{g}"] = sets
    held = {g: sets[ref[f"strategies.G{g}"]] for g in (1, 2, 3)}
    value["tuned_groups"] = {format_choice(t): v + sum(held[g] for g in t) for t, v in TUNED.items()}
    return {(c, k): v - value[c][ref[c]] for c, levels in value.items() for k, v in levels.items()}


def test_recovers_known_additive_effects_within_their_intervals():
    fit = fit_joint(experiment(2, blocks=20))
    truth_of = true_effects(fit)
    effects = [e for e in fit.effects if not e.reference]
    assert len(effects) == 4 + 2 + 6 + 3 * 3 and all(e.estimable for e in effects)
    missed = [e for e in effects if not e.lower <= truth_of[e.component, e.choice] <= e.upper]
    assert len(missed) <= 3, missed
    assert fit.resid_sd == pytest.approx(0.8, rel=0.15)


def test_the_best_design_is_the_additive_optimum():
    best = fit_joint(experiment(2, blocks=20)).best_design(SPACE)
    d = best.design
    assert (d["grouping"], d["allocation"]) == ("spindle", "uniform")
    true_best = max(SPACE.tuned_groups, key=lambda t: TUNED[t] + len(t) * 1.0)
    assert tuple(d["tuned_groups"]) == true_best
    assert all(d["strategies"][f"G{g}"] == ["adapter", "lora"] for g in true_best)
    optimum = GROUPING["spindle"] + ALLOCATION["uniform"] + TUNED[true_best] + len(true_best) * 1.0
    assert best.predicted_score == pytest.approx(optimum, abs=0.8)


def test_a_choice_never_varied_inside_a_block_is_flagged_not_estimable():
    """'decreasing' allocation only appears as part of bases: its effect is absorbed by their blocks."""
    fit = fit_joint(experiment(3, stage_allocations=("increasing", "uniform")))
    e = fit.effect("allocation", "decreasing")
    assert e.n > 0 and not e.estimable and e.estimate is None and e.lower is None
    assert fit.effect("allocation", "uniform").estimable
    best = fit.best_design(SPACE)
    assert best.design["allocation"] != "decreasing" and "allocation=decreasing" in best.note


def test_interaction_test_rejects_a_strong_interaction():
    test = fit_joint(experiment(4, interaction=1.5)).additivity
    assert test.p < 0.001 and test.df_num > 0
    assert "depend on the rest" in test.meaning


def test_interaction_test_mostly_accepts_additive_data():
    p = np.array([fit_joint(experiment(100 + i)).additivity.p for i in range(20)])
    assert (p < 0.05).mean() <= 0.15


def test_round_trips_and_reads_a_dataframe():
    pd = pytest.importorskip("pandas")
    rows = experiment(5)
    rows[0]["score"] = float("nan")  # a failed trial is left out
    fit = fit_joint(rows)
    assert fit.n_trials == len(rows) - 1
    back = JointFit.from_dict(json.loads(json.dumps(fit.to_dict())))
    assert back == fit
    assert fit_joint(pd.DataFrame(rows)).to_dict() == fit.to_dict()
