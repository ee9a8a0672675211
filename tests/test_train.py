"""Brief training on real data: short SST-2 / STS-B trials with the offline MiniLM-L6 (seconds each)."""

from __future__ import annotations

import math

import pytest
import torch

from designspace import PRESETS, compile_plan
from designspace.data import epoch_batches, length_bucketed_batches, tokenise
from designspace.regime import Regime
from designspace.train import train_design

# One thread: on a shared 2-core machine two threads wait on each other between every small op.
SHORT = Regime(n_train=200, n_dev=100, threads=1)


@pytest.fixture(scope="module")
def minilm(glue_root):
    from designspace.backbones import load_backbone

    return load_backbone("minilm-l6", device="cpu")


@pytest.fixture(scope="module")
def plan(minilm):
    return compile_plan(PRESETS["all-lora"], minilm)


@pytest.fixture(scope="module")
def sst2(minilm, plan):
    """Two identical trials (seed 0, data seed 0): for the checks and for determinism."""
    return [train_design(plan, minilm, "sst2", SHORT, seed=0) for _ in range(2)]


def test_short_sst2_trial_is_complete(sst2, plan, minilm):
    r = sst2[0]
    assert r.status == "ok", r.error
    assert set(r.metrics) == {"accuracy"} and r.score == r.metrics["accuracy"]
    assert 0.0 <= r.score <= 1.0
    # Built what was planned: the PET parameters counted on the model equal the plan's.
    assert r.trainable_params == r.plan_params == plan.params > 0
    assert r.head_params == minilm.hidden_size * 2 + 2
    assert (r.n_train, r.n_eval) == (200, 100)
    assert r.steps == math.ceil(200 / SHORT.batch_size)
    train = tokenise("sst2", "train", minilm.tokenizer, SHORT.max_length, 200, seed=0)
    # Tokens counted are exactly the real tokens of one epoch; padding is counted apart.
    assert r.tokens == sum(len(e.input_ids) for e in train)
    assert r.tokens <= r.padded_tokens < 1.5 * r.tokens
    assert r.final_loss is not None and math.isfinite(r.final_loss)
    assert r.seconds_train > 0 and r.seconds_eval > 0


def test_same_seed_gives_identical_results(sst2):
    a, b = sst2
    assert a.metrics == b.metrics
    assert a.final_loss == b.final_loss


def test_threads_are_restored_after_a_trial(minilm, plan):
    before = torch.get_num_threads()
    train_design(plan, minilm, "sst2", Regime(n_train=32, n_dev=16, threads=1, max_steps=1), seed=0)
    assert torch.get_num_threads() == before


def test_data_seed_sets_the_subset_and_seed_the_initialisation(sst2, minilm, plan):
    other_data = train_design(plan, minilm, "sst2", SHORT, seed=0, data_seed=1)
    other_init = train_design(plan, minilm, "sst2", SHORT, seed=1, data_seed=0)
    subset = {s: tokenise("sst2", "train", minilm.tokenizer, SHORT.max_length, 200, seed=s) for s in (0, 1)}
    assert {e.idx for e in subset[0]} != {e.idx for e in subset[1]}
    # The token count identifies the subset: seed 1 with data seed 0 trains on seed 0's examples ...
    assert other_init.tokens == sst2[0].tokens
    assert other_init.final_loss != sst2[0].final_loss  # ... from another initialisation
    # ... and data seed 1 trains on data seed 1's examples.
    assert other_data.tokens == sum(len(e.input_ids) for e in subset[1]) != sst2[0].tokens


def test_regression_task_reports_correlations(minilm, plan):
    r = train_design(plan, minilm, "stsb", SHORT, seed=0)
    assert r.status == "ok", r.error
    assert set(r.metrics) == {"pearson", "spearman"} and r.score == r.metrics["pearson"]
    assert all(-1.0 <= v <= 1.0 for v in r.metrics.values())
    assert r.metrics["pearson"] != 0.0  # 0.0 is what a constant (collapsed) prediction scores


def test_non_finite_loss_ends_the_trial_as_diverged(minilm):
    # An absurd LoRA scale and step: after the first update the layer norms overflow fp32 and the
    # loss becomes NaN for real (no mocking); the trial must end as diverged, without raising or scoring.
    plan = compile_plan(PRESETS["all-lora"], minilm, options={"lora_scale": 1e20})
    regime = Regime(n_train=64, n_dev=16, grad_clip=0.0, threads=1, lr={"lora": 0.5})
    r = train_design(plan, minilm, "sst2", regime, seed=0)
    assert r.status == "diverged"
    assert "loss became" in r.error or "non-finite" in r.error
    assert r.steps <= 4 and r.metrics == {} and r.score is None


def test_epoch_batches_cover_whole_epochs_then_cut():
    from designspace.data import Example

    examples = [Example(tuple(range(1 + i % 7)), float(i % 2), i) for i in range(40)]
    one = epoch_batches(examples, 4, 1.0, seed=3)
    assert sorted(e.idx for b in one for e in b) == list(range(40))
    assert one == length_bucketed_batches(examples, 4, 3)
    more = epoch_batches(examples, 4, 1.5, seed=3)
    assert len(more) == 15 and more[:10] == one and more[10:] == length_bucketed_batches(examples, 4, 4)[:5]
    assert epoch_batches(examples, 4, 2.0, seed=3, max_steps=12) == more[:12]


def test_the_selection_split_is_carved_from_train_and_never_trained_on(minilm, plan):
    """Decisions read a split of the training file; dev is for final reports only."""
    select = tokenise("sst2", "select", minilm.tokenizer, 128, None, 0, n_select=300)
    train = tokenise("sst2", "train", minilm.tokenizer, 128, 2000, seed=0, n_select=300)
    assert len(select) == 300 and not {e.idx for e in select} & {e.idx for e in train}
    r = train_design(plan, minilm, "sst2", SHORT, seed=0, eval_split="select", n_select=300)
    assert r.ok and r.n_eval == 300 and len(r.predictions) == 300
    labels = [e.label for e in select]
    assert abs(r.score - sum(p == y for p, y in zip(r.predictions, labels, strict=True)) / 300) < 1e-9


def test_full_fine_tuning_trains_every_weight_of_a_copy(tiny_bert_dir, glue_root):
    """The reference of the final comparison: every backbone weight trains, the cached backbone does not."""
    from designspace.backbones import load_backbone
    from designspace.full import run_full
    from designspace.trial import TrialSpec

    bb = load_backbone(tiny_bert_dir, device="cpu")
    before = [p.detach().clone() for p in bb.model.parameters()]
    spec = TrialSpec(task="sst2", kind="full", regime=Regime(n_train=32, n_dev=32, max_length=32, threads=1),
                     backbone=tiny_bert_dir)
    r = run_full(spec, bb)
    assert r.ok, r.error
    assert r.trainable_params == bb.n_params and r.spec.design_id == "full" and "backbone" in spec.learning_rates()
    assert all(torch.equal(a, b) for a, b in zip(before, bb.model.parameters(), strict=True))
    assert not any(p.requires_grad for p in bb.model.parameters())


def test_the_pool_scorer_trains_full_fine_tuning(tiny_bert_dir, glue_root):
    """The pool's scorer sent every spec to the PET trainer: full fine-tuning, a spec without a design,
    was recorded 'infeasible' (compile_plan needs a Design) in every final comparison."""
    from designspace.backbones import load_backbone
    from designspace.pool.scorer import TrainScorer
    from designspace.trial import TrialSpec

    spec = TrialSpec(task="sst2", kind="full", regime=Regime(n_train=32, n_dev=32, max_length=32, threads=1),
                     backbone=tiny_bert_dir)
    r = TrainScorer()(spec)
    assert r.ok, r.error
    assert r.trainable_params == load_backbone(tiny_bert_dir, device="cpu").n_params
