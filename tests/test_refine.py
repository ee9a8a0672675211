"""The refiner's decisions on synthetic scores: it must find a real winner and admit a tie."""

from __future__ import annotations

import random

import numpy as np
import pytest

from designspace.experiment import Experiment
from designspace.refine import Refiner, design_scores, replicate_noise
from designspace.space import DesignSpace
from designspace.stats import bootstrap_ci, compare, designs_needed, edf, separated
from designspace.store import TrialStore

TRUE_GROUPING = {"increasing": 70.0, "uniform": 71.0, "decreasing": 69.0, "spindle": 74.0, "bottleneck": 70.5}


def synthetic_rows(designs, truth, noise, seed, tasks=("sst2", "rte"), seeds=(0,)):
    rng = np.random.default_rng(seed)
    rows = []
    for d in designs:
        for s in seeds:
            for t in tasks:
                score = (truth(d) + rng.normal(0, noise)) / 100
                rows.append({"design_id": d.id, "task": t, "seed": s, "status": "ok", "score": score})
    return rows


def _refiner(tmp_path, tasks=("sst2", "rte")):
    exp = Experiment(name="synthetic", tasks=tasks, output=str(tmp_path))
    return Refiner(exp, store=TrialStore(tmp_path / "trials.sqlite"), log=lambda m: None)


def test_refiner_picks_the_truly_best_choice(tmp_path):
    space = DesignSpace()
    designs = space.sample_balanced("grouping", 5 * 6, seed=1)
    rows = synthetic_rows(designs, lambda d: TRUE_GROUPING[d.grouping], noise=1.5, seed=0)
    decision = _refiner(tmp_path)._decide("grouping", rows, designs)
    assert decision.best == "spindle"
    assert decision.confidence == "high"
    assert decision.margin_ci[0] > 0
    assert [c.n for c in decision.choices] == [6] * 5
    assert all(c.p_vs_best is not None for c in decision.choices[1:])
    assert decision.choices[-1].p_vs_best < 0.01  # spindle vs the worst choice: clearly apart


def test_refiner_reports_low_confidence_when_choices_are_equal(tmp_path):
    # Equal choices: over repeated stages the refiner must mostly say "low", and its margin CI
    # must straddle zero most of the time (a single draw can be unlucky, so count).
    space = DesignSpace()
    refiner = _refiner(tmp_path)
    low = straddle = 0
    for rep in range(20):
        designs = space.sample_balanced("allocation", 3 * 6, seed=rep)
        rows = synthetic_rows(designs, lambda d: 75.0, noise=2.0, seed=100 + rep)
        decision = refiner._decide("allocation", rows, designs)
        low += decision.confidence == "low"
        straddle += decision.margin_ci[0] < 0 < decision.margin_ci[1]
    assert low >= 16
    assert straddle >= 16


def test_failed_trials_are_left_out_and_said(tmp_path):
    space = DesignSpace()
    designs = space.sample_balanced("grouping", 10, seed=4)
    rows = synthetic_rows(designs, lambda d: TRUE_GROUPING[d.grouping], noise=0.1, seed=0)
    rows[0]["status"] = "failed"
    rows[0]["score"] = None
    decision = _refiner(tmp_path)._decide("grouping", rows, designs)
    assert sum(c.n for c in decision.choices) == 9  # the design with a failed task has no score
    assert "left out" in decision.note


def test_design_scores_average_tasks_and_need_every_task():
    rows = [
        {"design_id": "a", "task": "sst2", "seed": 0, "status": "ok", "score": 0.80},
        {"design_id": "a", "task": "rte", "seed": 0, "status": "ok", "score": 0.60},
        {"design_id": "b", "task": "sst2", "seed": 0, "status": "ok", "score": 0.90},
        {"design_id": "a", "task": "sst2", "seed": 1, "status": "ok", "score": 0.10},
    ]
    assert design_scores(rows, 0, ("sst2", "rte")) == pytest.approx({"a": 70.0})


def test_replicate_noise_is_the_seed_to_seed_std():
    rows = []
    for seed, score in ((0, 0.80), (1, 0.84)):
        rows.append({"design_id": "a", "task": "sst2", "seed": seed, "status": "ok", "score": score})
    # two values 80 and 84: sample std = 2.828
    assert replicate_noise(rows, ("sst2",)) == pytest.approx(2 ** 1.5, rel=1e-6)
    assert replicate_noise(rows[:1], ("sst2",)) is None


def test_stats_helpers():
    assert bootstrap_ci([3.0]) == (3.0, 3.0)
    lo, hi = bootstrap_ci([1, 2, 3, 4, 5], seed=0)
    assert lo < 3 < hi
    x, f = edf([3, 1, 2])
    assert x == [1, 2, 3] and f == pytest.approx([1 / 3, 2 / 3, 1])
    # more noise or a smaller effect needs more designs
    assert designs_needed(2.3, 1.0, 5) > designs_needed(2.3, 2.0, 5) > designs_needed(1.0, 2.0, 5) >= 2
    d = compare("x", {"a": [10, 11, 12], "b": [1, 2, 3]})
    assert separated(d) and d.best == "a"


def test_compare_with_random_ties_is_rarely_confident():
    # Equal choices, many repeats: "high" confidence must be rare (a false discovery).
    rng = random.Random(0)
    high = 0
    for rep in range(40):
        scores = {c: [rng.gauss(70, 2) for _ in range(5)] for c in "abcde"}
        high += compare("x", scores, seed=rep, n_boot=500).confidence == "high"
    assert high <= 4


def test_one_design_per_choice_is_not_high_confidence_without_noise():
    d = compare("x", {"a": [80.0], "b": [79.0], "c": [70.0]})
    assert d.confidence == "low" and "untested" in d.note
    # With a measured per-design noise the same scores get honest CIs instead of zero-width ones.
    d = compare("x", {"a": [80.0], "b": [79.0], "c": [70.0]}, noise_sd=2.0)
    assert d.choices[0].ci[0] < 80.0 < d.choices[0].ci[1]
    assert d.confidence == "low"  # 1 point apart with 2 points of noise: not separable
    assert d.p_best < 0.8
    d = compare("x", {"a": [90.0], "b": [70.0]}, noise_sd=2.0)
    assert d.confidence == "high"  # 20 points apart with 2 points of noise


def test_replicate_noise_falls_back_to_the_prior_with_few_replicates():
    rows = [{"design_id": "a", "task": "sst2", "seed": s, "status": "ok", "score": v} for s, v in ((0, 0.80), (1, 0.801))]
    assert replicate_noise(rows, ("sst2",)) == pytest.approx(0.0707, rel=1e-2)
    assert replicate_noise(rows, ("sst2",), prior=2.3) == 2.3  # one replicated design: too few to trust 0.07
    assert replicate_noise([], ("sst2",), prior=2.3) == 2.3


def test_strategy_stage_of_an_untuned_group_is_skipped(tmp_path):
    space = DesignSpace().restrict("tuned_groups", (2, 3))
    refiner = _refiner(tmp_path)
    narrowed = refiner.skip_untuned(3, "strategies.G1", space)
    assert narrowed is not None and len(narrowed.choices("strategies.G1")) == 1
    assert refiner.store.meta_get("skipped:4-strategies.G1")
    assert refiner.skip_untuned(4, "strategies.G2", space) is None  # G2 is tuned: a real stage
    assert refiner.skip_untuned(0, "grouping", space) is None


def test_refinement_with_racing_runs_end_to_end_and_resumes(tmp_path, tiny_bert_dir):
    from designspace.refine import status
    from designspace.report import render
    from designspace.train import Regime

    exp = Experiment(
        name="racing",
        backbone=tiny_bert_dir,
        tasks=("sst2",),
        budget=0.05,
        regime=Regime(n_train=32, n_dev=32, batch_size=16, max_length=32),
        space=DesignSpace(groupings=("spindle", "uniform"), allocations=("uniform",), budget=0.05),
        stages=("grouping",),
        designs_per_choice=1,
        racing=True,
        max_designs_per_choice=3,
        replicates=1,
        backend="sequential",
        output=str(tmp_path / "out"),
    )
    store = TrialStore(exp.store_path)
    design = Refiner(exp, store=store, log=lambda m: None).run()
    assert design.grouping in ("spindle", "uniform") and (tmp_path / "out" / "design.yaml").is_file()
    decision = store.meta_get("decision:1-grouping")
    counts = {c["choice"]: c["n"] for c in decision["choices"]}
    separated_ci = decision["choices"][0]["ci"][0] > decision["choices"][1]["ci"][1]
    # Racing adds designs to the two leaders until their CIs separate or the cap is reached.
    assert separated_ci or min(counts.values()) == 3
    n_trials = len(store.trials())
    Refiner(exp, store=store, log=lambda m: None).run()  # a rerun resumes: nothing left to run
    assert len(store.trials()) == n_trials
    assert "all stages decided" in status(exp)
    assert "Decision:" in render(exp, store)


def test_missing_data_fails_before_any_work_and_all_failed_stage_is_a_clear_error(tmp_path, tiny_bert_dir):
    from designspace.errors import DesignSpaceError
    from designspace.train import Regime

    exp = Experiment(name="bad", backbone=tiny_bert_dir, tasks=("sst2",), data_dir=str(tmp_path / "nowhere"),
                     output=str(tmp_path / "out"), backend="sequential")
    with pytest.raises(DesignSpaceError, match="nowhere/SST-2/train.tsv"):
        Refiner(exp, log=lambda m: None).run()
    assert not (tmp_path / "out" / "trials.sqlite").exists()
    # Every design is infeasible at this budget: the stage stops with one line, not a traceback.
    exp = Experiment(name="tiny-budget", backbone=tiny_bert_dir, tasks=("sst2",), budget=1e-6,
                     regime=Regime(n_train=16, n_dev=16), space=DesignSpace(groupings=("uniform", "spindle"), budget=1e-6),
                     stages=("grouping",), designs_per_choice=1, replicates=0, output=str(tmp_path / "out2"),
                     backend="sequential")
    with pytest.raises(DesignSpaceError, match="no trial finished ok.*too small"):
        Refiner(exp, log=lambda m: None).run()
