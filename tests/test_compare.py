"""Intervals of the final comparisons, checked against a known truth by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from designspace.compare import paired_difference, spearman, verdict


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
