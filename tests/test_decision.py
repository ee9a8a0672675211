"""The paired-stage decision rule against a known truth: every interval and claim is simulated.

Noise follows real data: seed sd 0.8 points plus a choice-by-base interaction of 0.4 (paired sd
0.894); the block (base design) effect is large and must cancel.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from designspace.decision import (
    Verdict,
    balanced_critical,
    blocks_needed,
    decide,
    expected_half_width,
    look_batch,
    mc_critical,
)

SD = float(np.hypot(0.8, 0.4))


def tables(rng, n, blocks, truth, missing=0.0):
    truth = np.asarray(truth, float)
    y = truth + rng.normal(0, 0.8, (n, blocks, 1)) + rng.normal(0, SD, (n, blocks, len(truth)))
    y[rng.random(y.shape) < missing] = np.nan
    return y


def theta(truth):
    truth = np.asarray(truth, float)
    return np.array([truth[j] - np.delete(truth, j).max() for j in range(len(truth))])


def run_stage(y, schedule, max_rounds, **kw):
    """Feed the rounds of one stage to decide() as a caller would: eliminated choices untrained."""
    y = y.copy()
    verdict = None
    for r, b in enumerate(schedule, 1):
        verdict = decide(y[:b], max_rounds=max_rounds, round_index=r, previous=verdict, **kw)
        if verdict.status != "open":
            break
        out = [int(c) for c in verdict.eliminated]
        y[b:, out] = np.nan
    return verdict


# --- critical values ---------------------------------------------------------------------------
@pytest.mark.parametrize("m,df,p", [(3, 10, 0.95), (5, 4, 0.9875), (15, 300, 0.99)])
def test_exact_critical_value_is_the_studentised_range(m, df, p):
    exact = stats.studentized_range.ppf(p, m, df) / 2**0.5
    assert balanced_critical("strict", m, df, p) == pytest.approx(exact, rel=1e-6)


def test_one_sided_dunnett_with_one_comparison_is_students_t():
    assert balanced_critical("hsu", 2, 12, 0.95) == pytest.approx(stats.t.ppf(0.95, 12), rel=1e-6)


@pytest.mark.parametrize("method", ["strict", "hsu"])
def test_monte_carlo_critical_value_agrees_with_exact_on_a_balanced_covariance(method):
    k, b = 5, 8
    cov = (np.eye(k) - 1 / k) / b
    mc = mc_critical(cov, (b - 1) * (k - 1), 0.95, method)
    assert mc == pytest.approx(balanced_critical(method, k, (b - 1) * (k - 1), 0.95), rel=0.015)
    assert np.array_equal(mc, mc_critical(cov, (b - 1) * (k - 1), 0.95, method))  # seeded: reproducible


# --- the two-way fit ---------------------------------------------------------------------------
def test_effects_with_missing_cells_are_the_two_way_least_squares_fit():
    rng = np.random.default_rng(3)
    y = tables(rng, 1, 9, [1.0, 0.0, -0.5, 0.2], missing=0.2)[0]
    v = decide(y, max_rounds=1)
    rows, cols = np.nonzero(np.isfinite(y))
    x = np.zeros((rows.size, 9 + 3))
    x[np.arange(rows.size), rows] = 1
    for i, c in enumerate(cols):
        if c > 0:
            x[i, 9 + c - 1] = 1
    beta, rss, *_ = np.linalg.lstsq(x, y[rows, cols], rcond=None)
    tau = np.r_[0.0, beta[9:]]
    effects = np.array([c.effect for c in v.choices])
    assert effects - effects[0] == pytest.approx(tau, abs=1e-9)
    assert v.df == rows.size - 9 - 3
    assert v.resid_sd == pytest.approx(float(np.sqrt(rss[0] / v.df)), rel=1e-9)
    assert v.critical_source.startswith("Monte Carlo")


def test_a_block_with_one_cell_adds_nothing_and_disconnected_tables_are_refused():
    y = np.array([[1.0, 2.0, 3.0], [0.5, 1.5, 2.0], [4.0, np.nan, np.nan], [1.0, 1.7, 3.1]])
    assert decide(y, max_rounds=1).n_blocks == 3
    lone = decide(np.r_[np.c_[y[:, :2], np.full(4, np.nan)], [[np.nan, np.nan, 5.0]]], max_rounds=1)
    assert lone.choice("2").upper is None and "2" in lone.survivors  # no pair: nothing to claim
    with pytest.raises(ValueError, match="disconnected"):
        decide(np.array([[1.0, 2.0, np.nan, np.nan], [1.5, 2.4, np.nan, np.nan],
                         [np.nan, np.nan, 3.0, 2.0], [np.nan, np.nan, 3.3, 2.6]]), max_rounds=1)


# --- intervals: simultaneous coverage ------------------------------------------------------------
@pytest.mark.parametrize("missing", [0.0, 0.15])
def test_mcb_intervals_cover_all_choices_at_once(missing):
    """400 tables with two co-best choices: all four intervals must hold together in >= 93 %."""
    truth = [0.5, 0.5, 0.0, -1.0]
    rng = np.random.default_rng(11)
    hits = 0
    for y in tables(rng, 400, 8, truth, missing):
        v = decide(y, max_rounds=1)
        lo = np.array([c.lower for c in v.choices])
        hi = np.array([c.upper for c in v.choices])
        hits += bool(np.all((lo <= theta(truth)) & (theta(truth) <= hi)))
    assert hits / 400 >= 0.93


def test_hsu_mcb_covers_but_its_eliminations_are_not_strict():
    """Hsu's constrained MCB covers tau_i - max others, yet under the null eliminates far more than alpha."""
    rng = np.random.default_rng(5)
    y = tables(rng, 2000, 8, np.zeros(5))
    act = np.ones((2000, 5), bool)
    hsu = look_batch(y, act, level=0.95, method="hsu")
    strict = look_batch(y, act, level=0.95)
    assert np.mean(np.all((hsu.lower <= 0) & (0 <= hsu.upper), axis=1)) >= 0.93
    assert hsu.worse.any(1).mean() > 0.12
    assert strict.worse.any(1).mean() < 0.065


# --- the sequential rule -------------------------------------------------------------------------
def test_under_the_null_a_stage_rarely_eliminates_anything():
    rng = np.random.default_rng(21)
    wrong = sum(bool(run_stage(y, [4, 8, 16, 24], 4).eliminated) for y in tables(rng, 400, 24, np.zeros(4)))
    assert wrong / 400 <= 0.06


def test_a_choice_better_by_one_seed_sd_is_kept_and_usually_alone():
    rng = np.random.default_rng(22)
    kept = alone = 0
    for y in tables(rng, 400, 50, [0.8, 0.0, 0.0]):
        v = run_stage(y, [10, 25, 50], 3)
        kept += "0" in v.survivors
        alone += v.status == "separated" and v.best == "0"
    assert kept / 400 >= 0.95
    assert alone / 400 >= 0.8


def test_equal_choices_on_many_blocks_end_in_a_tie_within_the_margin():
    rng = np.random.default_rng(23)
    verdicts = [decide(y, max_rounds=1, delta=0.5) for y in tables(rng, 100, 150, np.zeros(3))]
    assert np.mean([v.status == "tie" for v in verdicts]) >= 0.8
    tie = next(v for v in verdicts if v.status == "tie")
    assert tie.tie_bound < 0.5 and "within" in tie.meaning


def test_no_tie_is_claimed_when_a_survivor_is_a_margin_below():
    """Truth differs by exactly delta: a tie claim is wrong, whatever the number of blocks."""
    rng = np.random.default_rng(24)
    wrong = 0
    for i, y in enumerate(tables(rng, 400, 120, [0.0, -0.5])):
        v = decide(y[: 20 + i % 100], max_rounds=1, delta=0.5)
        wrong += v.status == "tie"
    assert wrong / 400 <= 0.05


def test_eliminated_choices_stay_out_with_their_round():
    rng = np.random.default_rng(2)
    y = tables(rng, 1, 30, [2.0, 0.0, 2.0, 2.0])[0]
    v1 = decide(y[:12], max_rounds=3, round_index=1, choices="abcd")
    assert v1.eliminated == {"b": 1} and v1.status == "open"
    y[12:, 1] = np.nan
    v2 = decide(y, max_rounds=3, round_index=2, choices="abcd", previous=v1)
    assert v2.eliminated["b"] == 1 and v2.choice("b") == v1.choice("b")
    assert v2.n_trials == 12 * 4 + 18 * 3
    with pytest.raises(ValueError, match="round_index"):
        decide(y, max_rounds=3, round_index=2, choices="abcd", previous=v2)


def test_verdict_round_trips_through_json():
    rng = np.random.default_rng(4)
    y = tables(rng, 1, 10, [1.5, 0.0, 0.2], missing=0.1)[0]
    v = decide(y, max_rounds=2, round_index=1, delta=0.5, choices=["x", "y", "z"], component="grouping")
    back = Verdict.from_dict(json.loads(json.dumps(v.to_dict())))
    assert back == v
    assert back.survivors == v.survivors and back.to_dict()["eliminated"] == v.eliminated


# --- sizing -------------------------------------------------------------------------------------
def test_blocks_needed_is_the_fewest_meeting_the_resolution():
    b = blocks_needed(SD, 0.4, 5, alpha=0.05, max_rounds=4)
    assert expected_half_width(SD, b, 5, 0.05, 4) <= 0.4 < expected_half_width(SD, b - 1, 5, 0.05, 4)


def test_expected_half_width_matches_simulated_tables():
    rng = np.random.default_rng(8)
    y = tables(rng, 300, 20, np.zeros(5))
    lk = look_batch(y, np.ones((300, 5), bool), level=1 - 0.05 / 4)
    realised = np.median(lk.critical[:, 0] * lk.resid_sd * np.sqrt(2 / 20))
    assert realised == pytest.approx(expected_half_width(SD, 20, 5, 0.05, 4), rel=0.05)


def test_importing_the_statistics_loads_neither_torch_nor_pandas_nor_statsmodels():
    import subprocess
    import sys

    code = ("import sys, designspace.decision, designspace.joint; "
            "print(sorted({'torch', 'pandas', 'statsmodels'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
