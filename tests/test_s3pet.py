"""S3PET: gates, the candidate pool, structures and baselines, the search, search records and the
experiment through the store and the pool, on tiny models."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
import torch
from tiny import tiny_backbone, tiny_batch

from designspace.attach import module_keys
from designspace.compare import paired_difference, verdict
from designspace.errors import DesignSpaceError
from designspace.model import PETModel
from designspace.plan import Plan
from designspace.regime import Regime
from designspace.s3pet.config import SearchConfig
from designspace.s3pet.experiment import SearchExperiment, resolve_budget, run_search_experiment
from designspace.s3pet.gates import Gates, solve_shift
from designspace.s3pet.run import search_record
from designspace.s3pet.search import search
from designspace.s3pet.structure import (
    candidate_specs,
    candidates_plan,
    heatmap_data,
    manual_structure,
    plan_candidates,
    pool_params,
    random_choice,
    random_structure,
    structure_plan,
    top_fill,
)
from designspace.s3pet.summary import jaccard, mean_entropy, mean_pairwise_jaccard
from designspace.store import TrialStore
from designspace.train import train_design
from designspace.trial import Status, TrialSpec

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


def gated_model(backbone, cands, gates=None, seed: int = 0) -> PETModel:
    plan = candidates_plan(backbone, cands, 0.5)
    model = PETModel(backbone, plan, 2, seed=seed)
    if gates is not None:
        for i, key in enumerate(module_keys(plan)):
            model.pet.pets[key].gate = (gates, i)
    return model


def _perturb(model: PETModel, seed: int = 0) -> None:
    """Give every PET parameter a non-zero value (they start as no-ops)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.pet.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


# --- gates -------------------------------------------------------------------------------------------
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
    assert torch.allclose(gates.probs(), torch.full((3,), 0.25), atol=1e-6)
    assert gates.expected_cost() == pytest.approx(250, rel=1e-6)


def test_sampled_gates_are_bernoulli_p_in_the_limit():
    gates = Gates([1] * 4, budget=2)
    with torch.no_grad():
        gates.alpha.copy_(torch.tensor([3.0, 1.0, -1.0, -3.0]))
    torch.manual_seed(0)
    noise = torch.stack([gates.noise() for _ in range(4000)])
    hard = (gates.sample(noise).detach() > 0.5).float().mean(0)
    assert torch.allclose(hard, gates.probs().detach(), atol=0.03)


def test_gates_polarise_on_the_useful_candidate_under_the_budget():
    """Calibration of the estimator: 20 equal candidates, one of which lowers the loss; the
    sampled-gate gradient with the shifted sigmoid and the budget annealing must find it, and the
    entropy of p must fall to near 0."""
    n = 20
    gates = Gates([10] * n, budget=10)
    opt = torch.optim.AdamW([gates.alpha], lr=0.1, weight_decay=0.0)
    useful = torch.zeros(n)
    useful[7] = 1.0
    gen = torch.Generator().manual_seed(0)
    entropies = []
    for step in range(300):
        gates.budget = 10 * (n / 2) ** max(0.0, 1 - step / 150)  # from half the pool down to one candidate
        z = gates.sample(gates.noise(gen))
        loss = (1.0 - (z * useful).sum()) ** 2 + 0.01 * torch.randn(1, generator=gen)
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
        entropies.append(mean_entropy(gates.probs().tolist()))
    p = gates.probs().detach()
    assert int(p.argmax()) == 7 and float(p[7]) > 0.95
    assert entropies[-1] < 0.05 < entropies[0]


# --- the pool, structures and baselines ---------------------------------------------------------------
def test_candidates_cover_the_space_and_every_count_is_what_is_built(bert):
    cands = candidate_specs(bert)
    per_layer = [c for c in cands if c.layer == 0]
    assert len(cands) == 4 * 16 and len(per_layer) == 16  # 6 LoRA, 6 BitFit, 2 LNFit, 2 adapters
    kinds = {(c.strategy, c.roles[0]) for c in per_layer}
    assert ("adapter", "attn_o") in kinds and ("adapter", "ffn_out") in kinds and ("lnfit", "ln_ffn") in kinds
    model = gated_model(bert, cands)
    assert [p.effective_params() for p in model.pet.pets.values()] == [c.params for c in cands]
    assert model.pet_params() == pool_params(cands)
    model.pet.detach()


def test_gpt2_fused_qkv_gives_one_bitfit_candidate(one_thread):
    gpt2 = tiny_backbone("gpt2")
    bitfit = [c.roles[0] for c in candidate_specs(gpt2) if c.layer == 0 and c.strategy == "bitfit"]
    assert bitfit == ["attn_q", "attn_o", "ffn_in", "ffn_out"]


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_gate_one_is_the_module_and_gate_zero_is_the_backbone(family, one_thread):
    backbone = tiny_backbone(family)
    cands = candidate_specs(backbone)
    ids, mask = tiny_batch()
    gates = Gates([c.params for c in cands], budget=10**9)
    model = gated_model(backbone, cands, gates)
    _perturb(model)
    model.eval()
    with torch.no_grad():
        gates.current = None
        want_on = model(ids, mask)
        gates.current = torch.ones(len(cands))
        on = model(ids, mask)
        gates.current = torch.zeros(len(cands))
        off = model(ids, mask)
    model.pet.detach()
    with torch.no_grad():
        want_off = model(ids, mask)  # routes removed: the backbone alone, same head
    assert torch.allclose(on, want_on, atol=1e-5)
    assert torch.allclose(off, want_off, atol=1e-5)
    assert not torch.allclose(on, off, atol=1e-4)


def test_gradients_reach_every_gate_once_candidates_are_not_no_ops(bert):
    cands = candidate_specs(bert)
    gates = Gates([c.params for c in cands], budget=400)
    model = gated_model(bert, cands, gates)
    ids, mask = tiny_batch()
    labels = torch.tensor([0, 1, 1])

    def alpha_grad():
        gates.alpha.grad = None
        gates.current = gates.sample(gates.noise(torch.Generator().manual_seed(0)))
        torch.nn.functional.cross_entropy(model(ids, mask), labels).backward()
        return gates.alpha.grad

    # Zero-initialised candidates change nothing, so no gate can learn yet: why the search warms up.
    assert torch.count_nonzero(alpha_grad()) < len(cands) // 2
    _perturb(model)
    assert (alpha_grad().abs() > 0).all()
    model.pet.detach()


def test_discretised_and_random_structures_never_exceed_the_budget(bert):
    cands = candidate_specs(bert)
    params = [c.params for c in cands]
    rng = random.Random(0)
    for _ in range(200):
        budget = rng.randint(min(params), sum(params))
        chosen = top_fill([rng.random() for _ in cands], params, budget)
        assert sum(params[i] for i in chosen) <= budget
        # Greedy: no skipped candidate would still have fitted.
        assert all(sum(params[i] for i in chosen) + params[j] > budget for j in range(len(params)) if j not in chosen)
        assert sum(params[i] for i in random_choice(params, budget, rng.randint(0, 99))) <= budget
    for seed in range(20):
        plan = random_structure(bert, 0.01, seed)
        assert 0 < plan.params <= plan.budget_params
        assert plan_candidates(plan, cands) == random_choice(params, plan.budget_params, seed)


def test_structure_plan_merges_per_layer_keeps_adapters_apart_and_round_trips(bert, tmp_path):
    cands = [c for c in candidate_specs(bert) if c.layer == 2]
    plan = structure_plan(bert, cands, 0.5)
    kinds = [(m.strategy, m.roles) for m in plan.modules]
    assert ("adapter", ("attn_o",)) in kinds and ("adapter", ("ffn_out",)) in kinds
    lora = next(m for m in plan.modules if m.strategy == "lora")
    assert lora.roles == ("attn_q", "attn_k", "attn_v", "attn_o", "ffn_in", "ffn_out")
    assert plan.params == sum(c.params for c in cands)
    assert Plan.load(plan.save(tmp_path / "p.json")) == plan
    assert plan_candidates(plan, candidate_specs(bert)) == sorted(
        i for i, c in enumerate(candidate_specs(bert)) if c.layer == 2)


@pytest.mark.parametrize("kind", ["lora", "adapter", "bitfit", "lnfit"])
def test_manual_baselines_are_sized_to_the_budget(bert, kind):
    for budget in (0.002, 0.005, 0.02, 0.1):
        plan = manual_structure(bert, kind, budget)
        if plan is None:
            continue
        assert 0 < plan.params <= plan.budget_params
        assert {m.strategy for m in plan.modules} == {kind}
        # Nothing of its kind that still fits is left out: a sized kind ends less than one unit below
        # the budget (or at its largest size everywhere), a fixed kind has no position left that fits.
        if kind in ("lora", "adapter"):
            unit = max(m.params // m.size for m in plan.modules)
            assert plan.budget_params - plan.params < unit or len(plan.modules) == 4
        else:
            cands = candidate_specs(bert, {r: (kind,) for r in (("ln_attn", "ln_ffn") if kind == "lnfit" else
                                           ("attn_q", "attn_k", "attn_v", "attn_o", "ffn_in", "ffn_out",
                                            "ln_attn", "ln_ffn"))})
            left = plan.budget_params - plan.params
            taken = plan_candidates(plan, cands)
            assert all(cands[i].params > left for i in range(len(cands)) if i not in taken)
    small = manual_structure(bert, "lora", 150 / bert.n_params)  # one rank-1 q+v pair needs 128
    assert small is not None and [m.layer for m in small.modules] == [3]  # the top layer
    assert manual_structure(bert, "adapter", 20 / bert.n_params) is None


def test_heatmap_schema_is_what_the_plots_read(bert):
    cands = candidate_specs(bert)
    p = [i / len(cands) for i in range(len(cands))]
    heat = heatmap_data(cands, p, [0, 5])
    assert set(heat) == {"rows", "layers", "p", "chosen"}
    assert len(heat["p"]) == len(heat["rows"]) == 16 and len(heat["p"][0]) == 4 == len(heat["layers"])
    assert heat["chosen"][0][0] and sum(map(sum, heat["chosen"])) == 2
    json.dumps(heat)


# --- settings, budgets, statistics -------------------------------------------------------------------
def test_config_round_trip_and_errors_name_the_field():
    cfg = SearchConfig(order=2, space={"attn_q": ["lora"], "ln_ffn": ["lnfit"]}, lr_weights=3e-4)
    assert SearchConfig.from_dict(cfg.to_dict()) == cfg
    for bad, match in (({"order": 3}, r"search\.order=3"), ({"space": {"ln_attn": ["lora"]}}, r"search\.space\.ln_attn"),
                       ({"lr": "x"}, r"search\.lr='x'"), ({"lr_weights": "fast"}, r"search\.lr_weights"),
                       ({"anneal": 2}, r"search\.anneal=2")):
        with pytest.raises(DesignSpaceError, match=match):
            SearchConfig.from_dict(bad)


def test_budgets_resolve_against_the_backbone_and_the_pool(tmp_path):
    b = resolve_budget({"pool": 0.05}, 22_713_216, 80_652)
    assert b.params == round(0.05 * 80_652) and int(b.fraction * 22_713_216) == b.params
    assert resolve_budget({"backbone": 1.39e-4}, 22_713_216, 80_652).params == int(1.39e-4 * 22_713_216)
    (tmp_path / "e.yaml").write_text("tasks: [sst2]\nbudgets: [{pool: 2}]\n")
    with pytest.raises(DesignSpaceError, match=r"e\.yaml: budgets\.pool=2"):
        SearchExperiment.load(tmp_path / "e.yaml")
    (tmp_path / "e.yaml").write_text("tasks: [sst2]\nbaselines: [random, prefix]\n")
    with pytest.raises(DesignSpaceError, match=r"baselines='prefix'"):
        SearchExperiment.load(tmp_path / "e.yaml")


def test_loading_an_experiment_and_reading_a_summary_need_no_torch(tmp_path):
    (tmp_path / "e.yaml").write_text("tasks: [sst2, stsb]\nbudgets: [{pool: 0.05}, 1.39e-4]\nseeds: [0, 1]\n")
    code = ("import sys; from designspace.s3pet import SearchExperiment; import designspace.s3pet.report; "
            f"e = SearchExperiment.load({str(tmp_path / 'e.yaml')!r}); assert e.budgets[0] == {{'pool': 0.05}}; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_paired_interval_covers_the_true_difference_at_its_level():
    """95 % t interval on 5 paired seeds: coverage simulated against a known truth (normal and
    skewed per-seed noise)."""
    rng = random.Random(0)
    for draw in (lambda: rng.gauss(0, 1.5), lambda: rng.expovariate(1.0) - 1.0):
        hits = 0
        for _ in range(2000):
            a = {s: 80 + 0.7 + draw() for s in range(5)}
            b = {s: 80 + draw() for s in range(5)}
            lo, hi = paired_difference(a, b)["ci"]
            hits += lo <= 0.7 <= hi
        assert 0.92 <= hits / 2000 <= 0.975
    d = paired_difference({0: 1.0, 1: 2.0, 2: 3.0}, {0: 1.0, 1: 1.0, 2: 1.0, 3: 9.0})
    assert d["n"] == 3 and d["seeds"] == [0, 1, 2] and d["wins"] == 2 and d["ties"] == 1
    assert verdict(d) == "no difference shown"
    assert verdict(paired_difference({0: 5.0, 1: 6.0, 2: 7.0}, {0: 1.0, 1: 1.0, 2: 1.0})) == "searched better"


def test_stability_measures():
    assert jaccard({1, 2}, {2, 3}) == pytest.approx(1 / 3)
    assert mean_pairwise_jaccard([{1, 2}, {1, 2}, {3}]) == pytest.approx(1 / 3)
    assert mean_entropy([0.0, 1.0]) == 0 and mean_entropy([0.5]) == pytest.approx(1.0)


# --- the search ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("order", [1, 2])
def test_search_warms_up_anneals_and_stays_on_the_budget(bert, glue_dir, order):
    cfg = SearchConfig(n_train=64, batch_size=8, warmup_epochs=1.0, epochs=2.0, order=order, snapshots=3)
    res = search(bert, "sst2", 0.01, cfg, seed=order, data_dir=glue_dir)
    assert res.steps == {"warmup": 4, "search": 8}
    budget = int(0.01 * bert.n_params)
    assert 0 < res.plan.params <= res.plan.budget_params == budget
    warm = [h for h in res.history if h["phase"] == "warmup"]
    after = [h for h in res.history if h["phase"] == "search"]
    assert warm and all(h["loss_gates"] is None for h in warm)
    # The budget falls from half the pool to the target over the first half, then holds.
    assert after[0]["expected_cost"] == pytest.approx(0.5 * pool_params(res.candidates), rel=1e-3)
    assert after[-1]["expected_cost"] == pytest.approx(budget, rel=1e-3)
    assert res.snapshots["steps"] == [0, 4, 8] and len(res.snapshots["p"][0]) == len(res.candidates)
    assert any(a not in (None, 0) for a in res.alpha)
    assert res.chosen == top_fill(res.p, [c.params for c in res.candidates], budget)
    r = train_design(res.plan, bert, "sst2", Regime(n_train=64, n_dev=40, batch_size=8), seed=0, data_dir=glue_dir)
    assert r.status == "ok" and r.trainable_params == res.plan.params and r.score is not None


def test_candidates_larger_than_the_budget_get_no_gate(bert, glue_dir):
    cands = candidate_specs(bert)
    budget = 50  # fits BitFit and LNFit (32, 48), not LoRA (64) nor adapters (98)
    cfg = SearchConfig(n_train=32, batch_size=8, warmup_epochs=0.5, epochs=1.0)
    res = search(bert, "sst2", (budget + 0.5) / bert.n_params, cfg, seed=0, data_dir=glue_dir)
    big = [i for i, c in enumerate(cands) if c.params > budget]
    assert big and all(res.p[i] == 0.0 and res.alpha[i] is None for i in big)
    assert all(res.alpha[i] is not None for i in range(len(cands)) if i not in big)
    assert all(row[i] == 0.0 for row in res.snapshots["p"] for i in big)
    assert sum(res.p) > 0 and res.plan.params <= budget


def test_search_record_holds_the_structure_and_is_reproducible(bert, glue_dir):
    spec = TrialSpec(task="sst2", kind="search", budget=0.01, seed=3, data_seed=3, backbone="tiny",
                     data_dir=str(glue_dir), search=SearchConfig(n_train=48, batch_size=8, epochs=1.0).to_dict())
    rec = search_record(spec, bert)
    assert rec.status is Status.OK, rec.error
    r = rec.result
    assert set(r) >= {"plan", "alpha", "p", "chosen", "heatmap", "history", "p_history", "entropy"}
    assert Plan.from_dict(r["plan"]).params == rec.plan_params <= int(0.01 * bert.n_params)
    assert set(r["heatmap"]) == {"rows", "layers", "p", "chosen"}
    json.dumps(rec.to_dict())
    again = search_record(spec, bert)
    assert again.result["chosen"] == r["chosen"] and again.result["alpha"] == r["alpha"]
    bad = spec.with_(budget=1e-6)  # below the smallest candidate
    assert search_record(bad, bert).status is Status.INFEASIBLE


# --- the experiment -------------------------------------------------------------------------------------
def test_experiment_runs_through_the_store_writes_tables_and_resumes(bert, glue_dir, tmp_path, monkeypatch):
    import designspace.backbones

    monkeypatch.setattr(designspace.backbones, "load_backbone", lambda name, role_map=None: bert)
    monkeypatch.setattr(designspace.backbones, "backbone_info", lambda name, role_map=None: bert)
    out = tmp_path / "out"
    (tmp_path / "e.yaml").write_text(
        "backbone: tiny\ntasks: [sst2]\nbudgets: [{pool: 0.1}, 0.002]\nseeds: [0, 1]\n"
        "regime: {n_train: 32, n_dev: 40, batch_size: 8}\n"
        "search: {n_train: 32, batch_size: 8, epochs: 1.0, warmup_epochs: 0.5}\n"
        "baselines: [random, bitfit]\nbackend: sequential\nthreads: 1\n"
    )
    summary = run_search_experiment(tmp_path / "e.yaml", data_dir=str(glue_dir), output=str(out), progress=False)
    store = TrialStore(out / "trials.sqlite", readonly=True)
    records = store.records()
    searches = [r for r in records if r.spec.kind == "search"]
    trains = [r for r in records if r.spec.kind == "train"]
    assert len(searches) == 4 and all(r.status is Status.OK for r in searches)
    assert {r.spec.label for r in trains} >= {"s3pet", "random", "bitfit", "head", "pool"}
    assert all(r.trainable_params == r.plan_params <= r.spec.plan["budget_params"] for r in trains
               if r.ok and r.spec.label not in ("pool",))
    # Each search's record is the structure its s3pet retraining trained.
    for s in searches:
        plan = s.result["plan"]
        assert any(t.spec.label == "s3pet" and t.spec.plan["modules"] == plan["modules"] and t.spec.seed == s.spec.seed
                   for t in trains)
    row = summary["tasks"]["sst2"]["budgets"][0]
    assert row["methods"]["s3pet"]["n"] == 2 and row["paired"]["random"]["n"] == 2
    assert row["search"]["chosen_jaccard"] is not None and row["search"]["cost_multiple"]["mean"] > 0
    assert summary["tasks"]["sst2"]["anchors"]["head"]["n"] == 2
    readme = (out / "README.md").read_text()
    assert "| s3pet |" in readme and "Anchors: **head only**" in readme and "entropy of p" in readme
    heat = sorted((out / "structures").glob("*.heatmap.json"))
    assert len(heat) == 4 and set(json.loads(heat[0].read_text())) == {"rows", "layers", "p", "chosen"}
    n = len(records)
    run_search_experiment(tmp_path / "e.yaml", data_dir=str(glue_dir), output=str(out), progress=False)
    assert len(TrialStore(out / "trials.sqlite", readonly=True).records()) == n  # nothing rerun
    (tmp_path / "e.yaml").write_text((tmp_path / "e.yaml").read_text().replace("seeds: [0, 1]", "seeds: [0, 2]"))
    with pytest.raises(DesignSpaceError, match="seeds differs"):
        run_search_experiment(tmp_path / "e.yaml", data_dir=str(glue_dir), output=str(out), progress=False)
