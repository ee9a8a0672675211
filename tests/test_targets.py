"""Regression targets (``Regime.targets``): ``standard`` learns z = (label - mean) / sd and folds the
scale back into the head, so that predictions are labels; ``raw`` (the default) is what every stored
trial was trained with, and keeps its key."""

from __future__ import annotations

import statistics
from dataclasses import replace

import pytest
import torch
from test_pack import UPPER, assert_same_record, backbone_of, everywhere, specs_for
from torch import nn

from designspace.data import Example
from designspace.errors import DesignSpaceError
from designspace.regime import Regime
from designspace.tasks import get_task
from designspace.trial import Status, TrialSpec

pytestmark = pytest.mark.usefixtures("one_thread")

BRIEF = Regime(n_train=48, n_dev=32, batch_size=16, max_length=24, threads=1)


def test_targets_are_raw_or_standard_in_one_line():
    with pytest.raises(DesignSpaceError, match=r"^exp.yaml: regime.targets='zscore' is invalid; allowed: raw, standard$"):
        Regime.from_dict({"targets": "zscore"}, source="exp.yaml")


def test_standard_targets_change_the_keys_of_regression_trials_only():
    def key(task, targets):
        return TrialSpec(task, everywhere("lora"), regime=replace(BRIEF, targets=targets)).key

    assert key("sst2", "standard") == key("sst2", "raw")  # classification ignores it
    assert key("stsb", "standard") != key("stsb", "raw")
    # raw is what every regime meant before the field existed: the same dict, the same stored key
    assert "targets" not in BRIEF.to_dict()
    legacy = TrialSpec("stsb", everywhere("lora"), regime=BRIEF).to_dict()
    assert "targets" not in legacy["regime"]
    assert TrialSpec.from_dict(legacy).key == key("stsb", "raw")
    standard = TrialSpec("stsb", everywhere("lora"), regime=replace(BRIEF, targets="standard"))
    assert TrialSpec.from_dict(standard.to_dict()).regime.targets == "standard"


def test_standard_targets_are_the_training_labels_standardised_and_fold_back():
    from designspace.train import Targets

    train = [Example((1, 2), y, i) for i, y in enumerate([0.0, 1.0, 4.0, 5.0])]
    standard = replace(BRIEF, targets="standard")
    assert Targets.of(get_task("sst2"), standard, train).raw
    assert Targets.of(get_task("stsb"), BRIEF, train).raw
    t = Targets.of(get_task("stsb"), standard, train)
    assert (t.mean, t.sd) == (2.5, statistics.pstdev([0.0, 1.0, 4.0, 5.0]))
    z = [e.label for e in t.learned(train)]
    assert statistics.fmean(z) == pytest.approx(0.0) and statistics.pstdev(z) == pytest.approx(1.0)
    assert Targets.of(get_task("stsb"), standard, [Example((1,), 3.0, 0)] * 2).sd == 1.0  # constant labels

    torch.manual_seed(0)
    head = nn.Sequential(nn.Dropout(0.1), nn.Linear(8, 1)).eval()
    x = torch.randn(5, 8)
    before = head(x)
    t.fold(head)
    torch.testing.assert_close(head(x), t.mean + t.sd * before)


@pytest.mark.parametrize("kind", ["train", "full"])
def test_standard_targets_predict_labels_from_the_first_steps(kind, glue_root):
    """Three steps: a raw-target head (starting at 0, moving by its learning rate per step) is still
    far below STS-B's labels (mean 2.7), while a standard-target model predicts about their mean."""
    from designspace.full import run_full
    from designspace.train import run_spec

    backbone = backbone_of("bert")
    records = {}
    for targets in ("raw", "standard"):
        regime = replace(BRIEF, targets=targets)
        if kind == "full":
            spec = TrialSpec("stsb", kind="full", regime=regime, backbone=backbone.name, eval_split="select",
                             n_select=32)
            records[targets] = run_full(spec, backbone)
        else:
            records[targets] = run_spec(specs_for(backbone, ((everywhere("lora"), 0.05),), regime=regime)[0],
                                        backbone)
    assert all(r.status is Status.OK for r in records.values()), [r.error for r in records.values()]
    raw, standard = (statistics.fmean(records[t].predictions) for t in ("raw", "standard"))
    assert abs(raw) < 0.5
    assert abs(standard - 2.7) < 0.8
    # the loss is the z-scale MSE (about 1), not the label-scale one (about 2.7^2 + 1.5^2)
    assert records["standard"].final_loss < 3 < records["raw"].final_loss


def test_a_pack_with_standard_targets_trains_each_design_as_alone(glue_root):
    from designspace.train import run_spec
    from designspace.train_pack import run_pack

    backbone = backbone_of("bert")
    specs = specs_for(backbone, ((everywhere("lora"), 0.05), (everywhere("adapter"), 0.05), *UPPER[:1]),
                      regime=replace(BRIEF, targets="standard"))
    alone = [run_spec(s, backbone) for s in specs]
    assert all(r.status is Status.OK for r in alone), [r.error for r in alone]
    assert abs(statistics.fmean(alone[0].predictions) - 2.7) < 0.8  # labels, not z
    for a, p in zip(alone, run_pack(specs, backbone), strict=True):
        assert_same_record(a, p)


def test_an_experiment_switched_to_standard_targets_is_another_experiment():
    """Its store refuses it (the refiner's identity check), instead of mixing raw and standard stages."""
    from designspace.experiment import Experiment

    raw = Experiment("x", tasks=("stsb",))
    assert raw.changed_field(Experiment("x", tasks=("stsb",), regime=Regime(targets="raw")).identity()) is None
    assert Experiment("x", tasks=("stsb",), regime=Regime(targets="standard")).changed_field(raw.identity()) == "regime"
