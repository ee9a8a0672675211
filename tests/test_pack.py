"""Packs: K designs in one pass over one frozen backbone train exactly as each would alone.

Tiny random models of every family, real GLUE rows tokenised by a byte tokenizer (the tiny models
have a 64-token vocabulary), seconds in all.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from tiny import FAMILIES, tiny_backbone, tiny_batch

from designspace import Design
from designspace.attach import is_clean
from designspace.errors import DesignSpaceError
from designspace.pack import check_pack, group_packs, pack_key, pack_memory_mb
from designspace.plan import compile_plan
from designspace.regime import Regime
from designspace.trial import Status, TrialSpec

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 1e-5
REGIME = Regime(n_train=48, n_dev=32, batch_size=16, max_length=24, threads=1)
S4_LIKE = Design(strategies=(("adapter", "lora"), ("adapter", "prefix"), ("adapter", "bitfit", "prefix"),
                             ("bitfit", "lora", "prefix")))


def everywhere(*strategies: str, **kw) -> Design:
    return Design(grouping="uniform", strategies=(tuple(strategies),) * 4, **kw)


#: (design, budget): every strategy alone, mixes, prefixes of different lengths, LoRA of different
#: ranks, and designs whose lowest module is above layer 0 (the shared frozen layers).
MIX = (
    (everywhere("adapter"), 0.05),
    (everywhere("prefix"), 0.05),
    (everywhere("prefix"), 0.02),
    (everywhere("lora"), 0.05),
    (everywhere("lora"), 0.015),
    (everywhere("bitfit"), 0.05),
    (everywhere("lnfit"), 0.05),
    (everywhere("ia3"), 0.05),
    (S4_LIKE, 0.05),
    (everywhere("lora", "prefix", tuned_groups=(3, 4)), 0.05),
)
#: Designs that leave layers 0 and 1 alone: their pack computes those layers once per batch.
UPPER = (
    (everywhere("lora", "prefix", tuned_groups=(3, 4)), 0.05),
    (everywhere("adapter", tuned_groups=(4,)), 0.05),
    (everywhere("prefix", "ia3", tuned_groups=(3,)), 0.02),
)


class ByteTokenizer:
    """Characters to ids 2..63 behind a start id 1; pad 0: real text for a 64-token vocabulary."""

    name_or_path = "bytes"
    pad_token_id = 0

    def __call__(self, a, b=None, truncation=True, max_length=32):
        rows = a if b is None else [x + " | " + y for x, y in zip(a, b, strict=True)]
        return {"input_ids": [[1] + [2 + ord(c) % 62 for c in r][: max_length - 1] for r in rows]}


def backbone_of(family: str):
    backbone = tiny_backbone(family)
    backbone.tokenizer = ByteTokenizer()
    return backbone


def specs_for(backbone, mix=MIX, task="stsb", regime=REGIME, **kw) -> list[TrialSpec]:
    # The selection split keeps every prediction in the record: STS-B's are the model's outputs.
    return [TrialSpec(task, d, budget=b, seed=i, data_seed=0, regime=regime, backbone=backbone.name,
                      eval_split="select", n_select=32, **kw) for i, (d, b) in enumerate(mix)]


def assert_same_record(alone, packed):
    assert packed.key == alone.key
    assert (packed.status, packed.steps, packed.tokens, packed.padded_tokens) == \
           (alone.status, alone.steps, alone.tokens, alone.padded_tokens), alone.error or packed.error
    assert (packed.trainable_params, packed.head_params, packed.plan_params) == \
           (alone.trainable_params, alone.head_params, alone.plan_params)
    if alone.final_loss is not None and math.isfinite(alone.final_loss):
        assert packed.final_loss == pytest.approx(alone.final_loss, abs=ATOL)
    if alone.status is Status.OK:
        torch.testing.assert_close(torch.tensor(packed.predictions), torch.tensor(alone.predictions),
                                   atol=ATOL + 1e-5, rtol=0)  # predictions are kept to 5 decimals
        assert packed.score == pytest.approx(alone.score, abs=1e-4)


# -- equality with single-design training -------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_a_pack_trains_each_design_as_it_trains_alone(family, glue_root):
    from designspace.train import run_spec
    from designspace.train_pack import run_pack

    backbone = backbone_of(family)
    for mix, shared in ((MIX, 0), (UPPER, 2)):
        specs = specs_for(backbone, mix)
        alone = [run_spec(s, backbone) for s in specs]
        assert all(r.status is Status.OK for r in alone), [r.error for r in alone]
        packed = run_pack(specs, backbone)
        assert is_clean(backbone)
        for a, p in zip(alone, packed, strict=True):
            assert_same_record(a, p)
            assert p.result["pack"]["size"] == len(specs)
            assert p.result["pack"]["shared_layers"] == shared
        # Not trivially equal: the designs did train to different outputs.
        assert len({tuple(r.predictions[:5]) for r in alone}) == len(specs)


def test_classification_pack_equals_single_runs_with_dropout(glue_root):
    """SST-2 (cross-entropy, argmax predictions), two epochs: the heads' dropout masks are drawn from
    each design's own generator, identical alone and packed."""
    from designspace.train import run_spec
    from designspace.train_pack import run_pack

    backbone = backbone_of("bert")
    specs = specs_for(backbone, MIX[:4], task="sst2", regime=replace(REGIME, epochs=2.0))
    alone = [run_spec(s, backbone) for s in specs]
    for a, p in zip(alone, run_pack(specs, backbone), strict=True):
        assert_same_record(a, p)


def test_seeded_dropout_draws_the_masks_of_nn_dropout_after_manual_seed():
    """Records made before designs had their own dropout generator are reproduced bit for bit."""
    from designspace.model import SeededDropout

    x = torch.randn(16, 32)
    torch.manual_seed(3)
    reference = [torch.nn.functional.dropout(x, 0.1, training=True) for _ in range(3)]
    own = SeededDropout(0.1, 3, "cpu")
    for r in reference:
        assert torch.equal(own(x), r)


def test_a_diverging_design_leaves_the_pack_and_the_rest_go_on(glue_root):
    from designspace.train import run_spec
    from designspace.train_pack import run_pack

    backbone = backbone_of("bert")
    regime = replace(REGIME, batch_size=2, n_train=40)  # 20 steps: the loss is checked at steps 16 and 20
    good = specs_for(backbone, MIX[:3], task="sst2", regime=regime)
    # An absurd LoRA scale and step: the loss becomes NaN after the first update.
    bad = TrialSpec("sst2", everywhere("lora"), budget=0.05, seed=7, regime=replace(regime, grad_clip=0.0, lr={"lora": 0.5}),
                    backbone=backbone.name, eval_split="select", n_select=32, options={"lora_scale": 1e20})
    specs = [good[0], bad, *good[1:]]
    alone = [run_spec(s, backbone) for s in specs]
    assert alone[1].status is Status.DIVERGED and alone[1].steps == 16
    packed = run_pack(specs, backbone)
    assert packed[1].status is Status.DIVERGED and packed[1].score is None
    assert [r.steps for r in packed] == [20, 16, 20, 20]
    for a, p in zip(alone, packed, strict=True):
        assert_same_record(a, p)
    assert is_clean(backbone)


def test_an_infeasible_design_is_recorded_and_the_rest_train(glue_root):
    from designspace.train_pack import run_pack

    backbone = backbone_of("gpt2")
    specs = specs_for(backbone, [(everywhere("lora"), 1e-5), MIX[0]])
    records = run_pack(specs, backbone)
    assert [r.status for r in records] == [Status.INFEASIBLE, Status.OK]


# -- shared frozen layers -----------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_shared_frozen_layers_run_once_and_change_nothing(family):
    from designspace.train_pack import PackModel

    backbone = tiny_backbone(family)
    # Lowest modules in layers 2 and 3 (T5: the decoder's first two layers).
    plans = [compile_plan(everywhere(*s, tuned_groups=(g,)), backbone, 0.05)
             for s, g in ((("lora", "prefix"), 3), (("adapter",), 4), (("prefix", "ia3"), 3))]
    ids, mask = tiny_batch(3, 7)
    labels = torch.tensor([0, 1, 0])
    rows: dict[str, list[int]] = {}
    hooks = [layer.module.register_forward_hook(
        lambda m, a, k, out, i=layer.index: rows.setdefault(str(i), []).append(
            (out[0] if isinstance(out, tuple) else out).shape[0]), with_kwargs=True)
        for layer in backbone.layers]
    results = {}
    for share in (False, True):
        rows.clear()
        model = PackModel(backbone, 2, share_frozen=share)
        for seed, plan in enumerate(plans):
            model.add(plan, seed)
        model.eval()  # no head dropout: the two passes must see the same function
        outs = model(ids, mask)
        torch.nn.functional.cross_entropy(torch.cat(outs), labels.repeat(len(plans))).backward()
        grads = [p.grad.clone() for d in model.designs for p in d.parameters()]
        results[share] = (outs, grads, {i: set(v) for i, v in rows.items()}, model.cut)
        model.close()
    for h in hooks:
        h.remove()
    assert is_clean(backbone)
    (out_a, grad_a, rows_a, cut), (out_b, grad_b, rows_b, _) = results[False], results[True]
    assert cut == 2
    for a, b in zip(out_a + grad_a, out_b + grad_b, strict=True):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
    k_rows = 3 * len(plans)
    assert all(v == {k_rows} for v in rows_a.values())
    # Below the cut each layer ran on the batch once; from the cut on, on every design's copy.
    assert all(rows_b[str(i)] == ({3} if i < cut else {k_rows}) for i in range(len(backbone.layers)))


def test_a_single_design_owns_every_row():
    from designspace.train_pack import PackModel

    backbone = tiny_backbone("llama")
    model = PackModel(backbone, 2)
    model.add(compile_plan(everywhere("lora"), backbone, 0.05), 0)
    model(*tiny_batch())
    assert model.rows[0].span is None  # the route's fast path, as a design trained alone
    model.close()
    assert is_clean(backbone)


# -- what may share a pass ----------------------------------------------------------------------------
def spec(design: Design | None = None, task="sst2", **kw) -> TrialSpec:
    return TrialSpec(task, design or Design(), regime=kw.pop("regime", REGIME), **kw)


def test_a_pack_that_mixes_data_or_schedule_is_refused_in_one_line():
    base = [spec(seed=0), spec(seed=1, budget=0.01, regime=replace(REGIME, lr={"lora": 1e-3}, grad_clip=0.5))]
    check_pack(base)  # seeds, budgets, learning rates and clipping are per design
    for other, field in ((spec(data_seed=1), "data_seed"), (spec(task="rte"), "task"),
                         (spec(regime=replace(REGIME, batch_size=8)), "regime.batch_size"),
                         (spec(eval_split="select", n_select=10), "eval_split")):
        with pytest.raises(DesignSpaceError, match=f"differs from spec 0 in {field}") as err:
            check_pack([*base, other])
        assert "\n" not in str(err.value)
    with pytest.raises(DesignSpaceError, match="LoRA dropout"):
        check_pack([*base, spec(options={"lora_dropout": 0.1})])


def test_group_packs_cuts_compatible_specs_into_near_equal_packs():
    same = [spec(seed=s) for s in range(5)]
    other = [spec(data_seed=1, seed=s) for s in range(2)]
    alone = spec(options={"lora_dropout": 0.1})
    specs = [same[0], other[0], *same[1:], alone, other[1]]
    packs = group_packs(specs, 4)
    assert [len(p) for p in packs] == [3, 2, 2, 1]
    assert packs[0] + packs[1] == same and packs[2] == other and packs[3] == [alone]
    assert all(len({pack_key(s) for s in p}) == 1 for p in packs)
    assert group_packs(specs, 1) == [[s] for s in specs]


def test_pack_memory_estimate_grows_with_the_pack():
    config = {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 6, "vocab_size": 30522}
    one, eight = (pack_memory_mb(spec(), k, config) for k in (1, 8))
    assert 500 < one < eight < 8 * one


# -- the pool -----------------------------------------------------------------------------------------
def test_pool_packs_record_each_design_as_alone(tmp_path):
    from designspace.pool import SyntheticScorer, evaluate
    from designspace.store import TrialStore

    specs = [spec(seed=s, design=d) for s in (0, 1) for d in (Design(), everywhere("adapter"), everywhere("bitfit"))]
    scorer = SyntheticScorer(fail=(everywhere("adapter").id,))
    alone = evaluate(specs, TrialStore(tmp_path / "a.sqlite"), backend="sequential", scorer=scorer, progress=False)
    packed = evaluate(specs, TrialStore(tmp_path / "b.sqlite"), backend="sequential", scorer=scorer, progress=False, pack=3)
    assert [r.outcome() | {"started_at": 0, "ended_at": 0, "worker": 0} for r in packed] == \
           [r.outcome() | {"started_at": 0, "ended_at": 0, "worker": 0} for r in alone]
    assert [r.status for r in packed].count(Status.FAILED) == 2  # one design's failure is its own
    with pytest.raises(DesignSpaceError, match="pack=0 is invalid"):
        evaluate(specs, TrialStore(tmp_path / "c.sqlite"), backend="sequential", scorer=scorer, pack=0)


def test_pool_trains_packs_with_the_train_scorer(tmp_path, tiny_bert_dir, glue_root):
    from designspace.pool import TrainScorer, evaluate
    from designspace.store import TrialStore

    specs = [TrialSpec("sst2", d, budget=b, seed=i, regime=replace(REGIME, n_train=32, n_dev=16), backbone=tiny_bert_dir)
             for i, (d, b) in enumerate(MIX[:3])]
    store = TrialStore(tmp_path / "t.sqlite")
    alone = [TrainScorer()(s) for s in specs]
    packed = evaluate(specs, store, backend="sequential", progress=False, pack=3)
    for a, p in zip(alone, packed, strict=True):
        assert p.status is Status.OK and p.score == pytest.approx(a.score, abs=1e-6)
        assert p.final_loss == pytest.approx(a.final_loss, abs=ATOL)
        assert p.result["pack"]["size"] == 3
    # Resume: nothing is run again.
    assert [r.ended_at for r in evaluate(specs, store, backend="sequential", progress=False, pack=3)] == \
           [r.ended_at for r in packed]


def test_packs_that_fit_caps_workers_by_memory():
    from designspace.pool.driver import packs_that_fit

    class Sized:
        def memory_mb(self, specs):
            return 1000.0 * len(specs)

    units = [tuple(spec(seed=s) for s in range(4))]
    assert packs_that_fit(units, 8, Sized(), available_mb=10_000) == 2  # 0.9 * 10000 // 4000
    assert packs_that_fit(units, 1, Sized(), available_mb=100) == 1  # never below one worker
    assert packs_that_fit([(spec(),)], 8, Sized(), available_mb=100) == 8  # no packs: as before
    assert packs_that_fit(units, 8, object(), available_mb=100) == 8  # no estimate: as before


def test_a_worker_that_dies_under_a_pack_loses_every_design_of_it(tmp_path):
    """Then each is retried alone: the culprit is lost again, the others get their results."""
    from designspace.pool import SyntheticScorer, evaluate
    from designspace.store import TrialStore

    designs = (Design(), everywhere("adapter"), everywhere("bitfit"))
    specs = [spec(design=d) for d in designs]
    scorer = SyntheticScorer(crash=(designs[1].id,))
    records = evaluate(specs, TrialStore(tmp_path / "l.sqlite"), backend="loky", n_jobs=1, threads=1,
                       scorer=scorer, progress=False, pack=3, retries=1)
    assert [r.status for r in records] == [Status.OK, Status.LOST, Status.OK]
    assert [r.attempts for r in records] == [2, 2, 2]  # lost with the pack once, then alone
    assert "worker died" in records[1].error


# -- the GPU path (runs where CUDA is) ------------------------------------------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


@cuda
@pytest.mark.parametrize("family", FAMILIES)
def test_on_cuda_a_pack_trains_each_design_as_it_trains_alone(family, glue_root):
    from designspace.train import run_spec
    from designspace.train_pack import run_pack

    backbone = backbone_of(family)
    backbone.model.to("cuda")
    for mix in (MIX, UPPER):
        specs = specs_for(backbone, mix)
        alone = [run_spec(s, backbone) for s in specs]
        assert all(r.status is Status.OK and r.device.startswith("cuda") for r in alone), [r.error for r in alone]
        for a, p in zip(alone, run_pack(specs, backbone), strict=True):
            assert_same_record(a, p)


def count_syncs(work) -> int:
    """Host syncs that ``work()`` makes on CUDA (torch's sync debug mode, as warnings)."""
    import warnings

    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            work()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught)


@cuda
def test_on_cuda_the_training_steps_add_no_host_sync(glue_root):
    """A pack's training syncs with the GPU at the loss checks (every CHECK_EVERY steps and the end)
    and for the final finiteness check; any other sync per step is the backbone's own (transformers'
    mask helpers), which a design alone pays alike."""
    from designspace.data import epoch_batches
    from designspace.tasks import get_task
    from designspace.train import CHECK_EVERY, design_groups, spec_data, to_device
    from designspace.train_pack import PackModel, _Design, fit_pack
    from designspace.trial import TrialRecord

    backbone = backbone_of("llama")
    backbone.model.to("cuda")
    specs = specs_for(backbone, MIX[:4], regime=replace(REGIME, batch_size=2, n_train=64))
    batches = epoch_batches(spec_data(specs[0], backbone)[0], 2, 1.0, 0)
    model = PackModel(backbone, 1)
    designs = []
    for i, s in enumerate(specs):
        index = model.add(compile_plan(s.design, backbone, s.budget), s.seed)
        groups = design_groups(model.designs[index], model.heads[index], s.regime)
        designs.append(_Design(index, i, s, TrialRecord(s, Status.OK), groups))
    task = get_task("stsb")
    try:
        fit_pack(model, designs, batches[:2], task, specs[0].regime, 0, "cuda")  # warm-up
        pack = count_syncs(lambda: fit_pack(model, designs, batches, task, specs[0].regime, 0, "cuda"))

        def backbone_alone():
            with torch.no_grad():
                for batch in batches:
                    b = to_device(batch, 0, "cuda", True)
                    model.features(b["input_ids"], b["attention_mask"])

        model.close()
        own = count_syncs(backbone_alone)
    finally:
        model.close()
    checks = len(batches) // CHECK_EVERY + 1
    assert pack <= own + checks + 2, f"{pack} syncs in {len(batches)} steps; the backbone alone makes {own}"


def test_frozen_cache_bound_counts_what_a_cache_would_skip(minilm, glue_root):
    """benchmarks/frozen_cache_bound.py: a trial whose examples another trial already ran below the
    same cut skips those layers' forward; a second epoch skips them too; a cut of 0 skips nothing."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from frozen_cache_bound import replay
    from shared_pass import layer_flops
    from transformers import AutoTokenizer

    from designspace.backbones.offline import resolve_backbone_path
    from designspace.data import tokenise
    from designspace.train import spec_plan
    from designspace.trial import TrialRecord

    tok = AutoTokenizer.from_pretrained(resolve_backbone_path("minilm-l6"))
    upper = Design("uniform", "uniform", tuned_groups=(3, 4), strategies=(("lora",),) * 4)
    one, two = Regime(n_train=32, n_dev=16), Regime(n_train=32, n_dev=16, epochs=2.0)
    make = lambda i, **kw: TrialRecord(TrialSpec(task="sst2", **kw), Status.OK, 0.5,  # noqa: E731
                                       started_at=f"2026-01-01T00:00:0{i}")
    a = make(0, design=upper, regime=one)
    cut = min(m.layer for m in spec_plan(a.spec, minilm).modules)
    assert cut > 0
    train = tokenise("sst2", "train", tok, 128, 32, 0)
    dev = tokenise("sst2", "dev", tok, 128, 16, 0)
    fwd = sum(layer_flops(minilm, len(e.input_ids), False) for e in train + dev)
    fwd_train = sum(layer_flops(minilm, len(e.input_ids), False) for e in train)

    alone = replay([a], minilm, tok)
    assert alone["saved"] == 0 and alone["with_cut"] == 1
    assert alone["bytes"] == sum(len(e.input_ids) for e in train + dev) * minilm.hidden_size * 4
    again = replay([a, make(1, design=upper, regime=one, seed=1)], minilm, tok)
    assert again["saved"] == pytest.approx(cut * fwd) and again["bytes"] == alone["bytes"]
    assert replay([make(0, design=upper, regime=two)], minilm, tok)["saved"] == pytest.approx(cut * fwd_train)
    full = replay([make(0, kind="full", regime=one), make(1, kind="full", regime=one)], minilm, tok)
    assert full["saved"] == 0 and full["bytes"] == 0 and full["with_cut"] == 0
