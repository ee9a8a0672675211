"""S3PET: budget-constrained gates, gated candidates, discretisation, search and retraining on tiny models."""

from __future__ import annotations

import csv
import random

import pytest
import torch
from tiny import tiny_backbone, tiny_batch

from designspace.errors import DesignSpaceError
from designspace.plan import ModuleSpec, Plan
from designspace.s3pet import (
    Gates,
    SearchConfig,
    StructureModel,
    candidate_specs,
    heatmap_data,
    manual_structure,
    random_structure,
    run_search_experiment,
    search,
    solve_shift,
    structure_plan,
)
from designspace.s3pet.structure import fill
from designspace.train import Regime, train_design

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "film", "plot", "the", "a", "very", "not"]


class WordTokenizer:
    """Whitespace words -> ids 2..63, with [CLS]=1 first; pad 0. Enough for tokenise()."""

    name_or_path = "s3pet-test-words"
    pad_token_id = 0

    def _ids(self, text: str) -> list[int]:
        return [2 + WORDS.index(w) if w in WORDS else 63 for w in text.split()]

    def __call__(self, a, b=None, truncation=True, max_length=128):
        ids = [[1, *self._ids(x)] + (self._ids(y) if b else []) for x, y in zip(a, b or a, strict=True)]
        return {"input_ids": [i[:max_length] for i in ids]}


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    """A tiny SST-2: label 1 when a positive word appears (learnable in a few steps)."""
    root = tmp_path_factory.mktemp("glue")
    (root / "SST-2").mkdir()
    rng = random.Random(0)
    for split, n in (("train", 96), ("dev", 40)):
        lines = ["sentence\tlabel"]
        for _ in range(n):
            label = rng.random() < 0.5
            words = rng.choices(WORDS[6:], k=rng.randint(2, 6)) + [rng.choice(WORDS[:3] if label else WORDS[3:6])]
            rng.shuffle(words)
            lines.append(f"{' '.join(words)}\t{int(label)}")
        (root / "SST-2" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture()
def bert(one_thread):
    backbone = tiny_backbone("bert")
    backbone.tokenizer = WordTokenizer()
    return backbone


def _perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every PET parameter a non-zero value (they start as no-ops)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.structure.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize("beta", [0.05, 1.0, 10.0])
def test_shift_meets_the_budget(beta):
    g = torch.Generator().manual_seed(1)
    alpha = torch.randn(90, generator=g) * 3
    n = torch.randint(10, 2000, (90,), generator=g).double()
    for frac in (1e-3, 0.05, 0.5, 0.97):
        budget = frac * float(n.sum())
        b = solve_shift(alpha, n, budget, beta)
        spent = float((n * torch.sigmoid((alpha.double() - b) / beta)).sum())
        assert abs(spent - budget) / budget < 1e-6


def test_gates_when_everything_fits_are_all_on():
    gates = Gates([10, 20, 30], budget=60)
    assert gates.shift() == float("-inf")
    assert torch.equal(gates.probs(), torch.ones(3))
    assert torch.equal(gates.sample(), torch.ones(3))


def test_initial_gates_are_uniform_and_spend_the_budget():
    gates = Gates([100, 300, 600], budget=250)
    p = gates.probs()
    assert torch.allclose(p, torch.full((3,), 0.25), atol=1e-6)
    assert gates.expected_cost() == pytest.approx(250, rel=1e-6)


def test_sampled_gates_are_bernoulli_p_in_the_limit():
    gates = Gates([1] * 4, budget=2)
    with torch.no_grad():
        gates.alpha.copy_(torch.tensor([3.0, 1.0, -1.0, -3.0]))
    torch.manual_seed(0)
    noise = torch.stack([gates.noise() for _ in range(4000)])
    hard = (gates.sample(noise).detach() > 0.5).float().mean(0)
    assert torch.allclose(hard, gates.probs().detach(), atol=0.03)


def test_candidates_cover_the_space_with_strategy_costs(bert):
    cands = candidate_specs(bert)
    per_layer = [c for c in cands if c.layer == 0]
    assert len(cands) == 4 * 16 and len(per_layer) == 16  # 6 LoRA, 6 BitFit, 2 LNFit, 2 adapters
    kinds = {(c.strategy, c.roles[0]) for c in per_layer}
    assert ("adapter", "attn_o") in kinds and ("adapter", "ffn_out") in kinds and ("lnfit", "ln_ffn") in kinds
    # Every candidate's count is what its built module holds.
    model = StructureModel(bert, cands, 2)
    assert [m.effective_params() for m in model.structure] == [c.params for c in cands]
    model.detach()


def test_gpt2_fused_qkv_gives_one_bitfit_candidate(one_thread):
    gpt2 = tiny_backbone("gpt2")
    bitfit = [c.roles[0] for c in candidate_specs(gpt2) if c.layer == 0 and c.strategy == "bitfit"]
    assert bitfit == ["attn_q", "attn_o", "ffn_in", "ffn_out"]


def test_gradients_reach_every_alpha(bert):
    cands = candidate_specs(bert)
    gates = Gates([c.params for c in cands], budget=400)
    model = StructureModel(bert, cands, 2, gates=gates)
    _perturb(model)
    gates.current = gates.sample()
    ids, mask = tiny_batch()
    loss = torch.nn.functional.cross_entropy(model(ids, mask), torch.tensor([0, 1, 1]))
    loss.backward()
    model.detach()
    assert gates.alpha.grad is not None
    assert (gates.alpha.grad.abs() > 0).all()


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_gate_one_is_the_module_and_gate_zero_is_the_backbone(family, one_thread):
    backbone = tiny_backbone(family)
    cands = candidate_specs(backbone)
    ids, mask = tiny_batch()
    torch.manual_seed(0)
    plain = StructureModel(backbone, cands, 2)
    _perturb(plain)
    plain.eval()
    with torch.no_grad():
        want_on = plain(ids, mask)
    plain.detach()
    with torch.no_grad():
        want_off = plain(ids, mask)  # hooks removed: the backbone alone, same head
    gates = Gates([c.params for c in cands], budget=10**9)
    torch.manual_seed(0)
    gated = StructureModel(backbone, cands, 2, gates=gates)
    _perturb(gated)
    gated.eval()
    with torch.no_grad():
        gates.current = torch.ones(len(cands))
        on = gated(ids, mask)
        gates.current = torch.zeros(len(cands))
        off = gated(ids, mask)
    gated.detach()
    assert torch.allclose(on, want_on, atol=1e-5)
    assert torch.allclose(off, want_off, atol=1e-5)
    assert not torch.allclose(on, off, atol=1e-4)


def test_adapter_after_attention_sits_on_attn_o(bert):
    spec = next(c for c in candidate_specs(bert) if c.layer == 1 and c.strategy == "adapter" and c.roles == ("attn_o",))
    attn_o, ffn_out = bert.layers[1].roles["attn_o"].module, bert.layers[1].roles["ffn_out"].module
    before = (len(attn_o._forward_hooks), len(ffn_out._forward_hooks))
    model = StructureModel(bert, [spec], 2)
    assert (len(attn_o._forward_hooks), len(ffn_out._forward_hooks)) == (before[0] + 1, before[1])
    model.detach()


def test_discretised_structures_never_exceed_the_budget(bert):
    cands = candidate_specs(bert)
    params = [c.params for c in cands]
    rng = random.Random(0)
    for _ in range(200):
        budget = rng.randint(min(params), sum(params))
        p = [rng.random() for _ in cands]
        chosen = fill(sorted(range(len(p)), key=lambda i: -p[i]), params, budget)
        assert sum(params[i] for i in chosen) <= budget
        # Greedy: no skipped candidate would still have fitted.
        assert all(sum(params[i] for i in chosen) + params[j] > budget for j in range(len(p)) if j not in chosen)
    for seed in range(20):
        plan = random_structure(bert, 0.01, seed)
        assert 0 < plan.params <= plan.budget_params


def test_structure_plan_merges_per_layer_and_keeps_adapters_apart(bert, tmp_path):
    cands = [c for c in candidate_specs(bert) if c.layer == 2]
    plan = structure_plan(bert, cands, 0.5)
    kinds = [(m.strategy, m.roles) for m in plan.modules]
    assert ("adapter", ("attn_o",)) in kinds and ("adapter", ("ffn_out",)) in kinds
    lora = next(m for m in plan.modules if m.strategy == "lora")
    assert lora.roles == ("attn_q", "attn_k", "attn_v", "attn_o", "ffn_in", "ffn_out")
    assert plan.params == sum(c.params for c in cands)
    assert Plan.load(plan.save(tmp_path / "p.json")) == plan


def test_manual_baselines_fill_the_budget_or_say_they_do_not_fit(bert):
    big = manual_structure(bert, "lora", 0.2)
    assert big is not None and big.params <= big.budget_params and {m.size for m in big.modules} != {1}
    assert manual_structure(bert, "bitfit", 0.0005) is None
    with pytest.raises(DesignSpaceError, match="baseline"):
        manual_structure(bert, "lnfit", 0.01, space={"attn_q": ["lora"]})


def test_config_round_trip_and_errors_name_the_field():
    cfg = SearchConfig(task="rte", budget=0.01, order=2, space={"attn_q": ["lora"], "ln_ffn": ["lnfit"]})
    assert SearchConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(DesignSpaceError, match=r"search\.budget=2"):
        SearchConfig(budget=2)
    with pytest.raises(DesignSpaceError, match=r"search\.order=3"):
        SearchConfig(order=3)
    with pytest.raises(DesignSpaceError, match=r"search\.space\.ln_attn='lora'"):
        SearchConfig(space={"ln_attn": ["lora"]})
    with pytest.raises(DesignSpaceError, match=r"search\.lr='x'"):
        SearchConfig.from_dict({"lr": "x"})


@pytest.mark.parametrize("order", [1, 2])
def test_search_runs_end_to_end_under_the_budget(bert, glue_dir, order):
    cfg = SearchConfig(task="sst2", budget=0.01, n_train=64, batch_size=8, epochs=1.0, order=order, seed=order)
    res = search(bert, cfg, data_dir=glue_dir)
    assert res.steps == 4
    assert 0 < res.plan.params <= res.plan.budget_params == int(0.01 * bert.n_params)
    for h in res.history:  # the shift keeps the expected cost on the budget at every step
        assert h["expected_cost"] == pytest.approx(res.plan.budget_params, rel=1e-6)
    assert any(a != 0 for a in res.alpha)
    top = max(range(len(res.p)), key=lambda i: res.p[i])
    assert top in res.chosen or res.candidates[top].params > res.plan.budget_params
    heat = heatmap_data(res.candidates, res.p, res.chosen)
    assert len(heat["p"]) == len(heat["rows"]) == 16 and len(heat["p"][0]) == 4
    r = train_design(res.plan, bert, "sst2", Regime(n_train=64, n_dev=40, batch_size=8), seed=0, data_dir=glue_dir)
    assert r.status == "ok" and r.trainable_params == res.plan.params and r.score is not None


def test_mixed_structures_retrain_through_train_design_deterministically(bert, glue_dir):
    specs = (
        ModuleSpec(0, "lora", 1, ("attn_q", "attn_v"), 2 * 64),
        ModuleSpec(1, "bitfit", 1, ("attn_o", "ffn_in"), 32 + 48),
        ModuleSpec(2, "lnfit", 1, ("ln_ffn",), 32),
        ModuleSpec(3, "adapter", 2, ("ffn_out",), 32 + 2 * 65),
    )
    plan = Plan(bert.name, 4, bert.n_params, 0.01, int(0.01 * bert.n_params), specs, (1,) * 4)
    regime = Regime(n_train=48, n_dev=40, batch_size=8)
    ours = train_design(plan, bert, "sst2", regime, seed=3, data_dir=glue_dir)
    again = train_design(plan, bert, "sst2", regime, seed=3, data_dir=glue_dir)
    assert ours.status == again.status == "ok"
    assert ours.final_loss == pytest.approx(again.final_loss, rel=1e-5)
    assert ours.score == again.score and ours.trainable_params == again.trainable_params == plan.params


def test_experiment_writes_tables_and_resumes(bert, glue_dir, tmp_path, monkeypatch):
    import designspace.backbones

    monkeypatch.setattr(designspace.backbones, "load_backbone", lambda name: bert)
    out = tmp_path / "out"
    (tmp_path / "e.yaml").write_text(
        f"backbone: tiny\ntasks: [sst2]\ndata_dir: {glue_dir}\nbudgets: [0.01, {{budget: 0.5}}]\nseeds: [0]\n"
        "regime: {n_train: 32, n_dev: 40, batch_size: 8}\nbaselines: [random, bitfit]\n"
        f"output: {out}\n"
    )
    result = run_search_experiment(tmp_path / "e.yaml")
    rows = list(csv.DictReader(open(out / "runs.csv")))
    assert [(r["budget"], r["method"]) for r in rows] == [
        ("0.01", "s3pet"), ("0.01", "random"), ("0.01", "bitfit"), ("0.5", "s3pet"), ("0.5", "random"), ("0.5", "bitfit")
    ]
    assert all(r["within_budget"] == "1" for r in rows if r["status"] == "ok")
    assert rows[2]["status"] == "does not fit"  # all-BitFit needs more than 1 % of the tiny model
    assert "same structure" in rows[4]["note"]  # at 50 % the whole space fits: search = random
    assert result["cost_multiple"] > 0
    readme = (out / "README.md").read_text()
    assert "| sst2 | 1.00% (" in readme and "Command:" in readme
    assert (out / "structures" / "sst2_b0.01_s0.gates.csv").is_file()
    again = run_search_experiment(tmp_path / "e.yaml")  # everything done: nothing is rerun
    assert len(again["rows"]) == len(rows)
