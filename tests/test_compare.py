"""Intervals of the final comparisons, checked against a known truth by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from designspace.compare import holm, paired_difference, spearman, verdict


def test_paired_difference_interval_covers_the_true_difference():
    rng = np.random.default_rng(0)
    hits, n_sims = 0, 600
    for _ in range(n_sims):
        seed_effect = rng.normal(0, 2.0, 5)  # shared by both methods on a seed: pairing removes it
        a = {s: 80.5 + seed_effect[s] + rng.normal(0, 0.7) for s in range(5)}
        b = {s: 80.0 + seed_effect[s] + rng.normal(0, 0.7) for s in range(5)}
        lo, hi = paired_difference(a, b)["ci"]
        hits += lo <= 0.5 <= hi
    assert 0.92 <= hits / n_sims <= 0.98


def test_paired_difference_says_what_it_shows():
    a, b = {0: 2.0, 1: 3.0, 2: 2.5}, {0: 1.0, 1: 1.5, 2: 1.2}
    assert verdict(paired_difference(a, b), "discovered") == "discovered better"
    assert verdict(paired_difference(b, a), "discovered") == "discovered worse"
    assert paired_difference(a, {7: 1.0}) is None


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.85])
def test_spearman_interval_covers_the_population_value_with_twenty_designs(rho):
    rng = np.random.default_rng(1)
    truth = 6 / math.pi * math.asin(rho / 2)  # Spearman's rho of a bivariate normal
    hits, n_sims = 0, 800
    for _ in range(n_sims):
        x = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], 20)
        lo, hi = spearman(x[:, 0], x[:, 1])["ci"]
        hits += lo <= truth <= hi
    assert 0.925 <= hits / n_sims <= 0.98, hits / n_sims


def test_holm_keeps_the_chance_of_any_false_claim_in_a_table_at_five_percent():
    """Four baselines, every true difference 0, 5 seeds (the final comparison's average column): per
    comparison intervals make some false claim ~19 % of the time; Holm's adjustment keeps it <= 5 %,
    and still finds a real 1.5-point difference at this noise."""
    rng = np.random.default_rng(1)
    n_sims, any_raw, any_holm, found = 2000, 0, 0, 0
    for _ in range(n_sims):
        seed_effect = rng.normal(0, 1.0, 5)
        ref = {s: 84 + seed_effect[s] + rng.normal(0, 0.5) for s in range(5)}
        nulls = [{s: 84 + seed_effect[s] + rng.normal(0, 0.5) for s in range(5)} for _ in range(4)]
        ps = [paired_difference(ref, b)["p"] for b in nulls]
        any_raw += min(ps) < 0.05
        any_holm += min(holm(ps)) < 0.05
        real = {s: 82.5 + seed_effect[s] + rng.normal(0, 0.5) for s in range(5)}
        found += holm([paired_difference(ref, real)["p"], *ps[:3]])[0] < 0.05
    assert 0.14 <= any_raw / n_sims <= 0.24
    assert any_holm / n_sims <= 0.06
    assert found / n_sims >= 0.6


def test_p_agrees_with_the_interval_and_holm_steps_down():
    d = paired_difference({0: 2.0, 1: 3.0, 2: 2.5}, {0: 1.0, 1: 1.5, 2: 1.2})
    assert d["ci"][0] > 0 and d["p"] < 0.05
    d = paired_difference({0: 2.0, 1: 1.0, 2: 2.5}, {0: 1.0, 1: 1.5, 2: 1.2})
    assert d["ci"][0] < 0 < d["ci"][1] and d["p"] > 0.05
    assert holm([0.01, None, 0.04, 0.03]) == [0.03, None, 0.06, 0.06]


def test_off_chance_tests_hold_their_level_on_classifiers_that_know_nothing():
    """The RTE/CoLA check of the final comparison says "off chance" where p < 0.05: a classifier whose
    predictions ignore the labels must get that verdict at most 5 % of the time, and one that knows a
    little (accuracy 8 points above the majority on RTE's 277) must get it nearly always."""
    from sklearn.metrics import matthews_corrcoef

    from designspace.compare import above_majority, mcc_above_zero

    rng = np.random.default_rng(0)
    n, majority = 277, 146 / 277
    hits_acc = hits_mcc = 0
    sims = 2000
    for _ in range(sims):
        labels = (rng.random(n) < majority).astype(int)
        preds = (rng.random(n) < 0.7).astype(int)  # leans to the majority class, knows nothing
        acc = float((preds == labels).mean())
        hits_acc += above_majority(acc, n, float(labels.mean())) < 0.05
        hits_mcc += mcc_above_zero(matthews_corrcoef(labels, preds), n) < 0.05
    assert hits_acc / sims <= 0.05 and hits_mcc / sims <= 0.065  # the normal approximation, n = 277
    assert above_majority(majority + 0.08, n, majority) < 0.01
    assert mcc_above_zero(0.25, n) < 0.001
