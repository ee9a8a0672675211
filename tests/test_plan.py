"""Compiling designs into plans: the budget rule on MiniLM-L6, plan layout, serialisation."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from designspace import Design, DesignSpace, DesignSpaceError, Plan, compile_plan
from designspace.presets import S4
from designspace.space import layer_groups
from designspace.strategies import registry

compile = compile_plan  # noqa: A001 - the tests read as before; the package no longer shadows the builtin


def s4_design() -> Design:
    return S4

N_SAMPLED = 200


def minimum_params(design: Design, backbone) -> int:
    """The plan of ``design`` with every module at size 1 (BitFit and LNFit at their fixed cost)."""
    groups = layer_groups(len(backbone.layers), design.grouping, design.n_groups)
    return sum(
        registry.get(s).cost(layer, 1)
        for layer, g in zip(backbone.layers, groups, strict=True)
        if g in design.tuned_groups
        for s in design.strategies[g - 1]
    )


@pytest.mark.parametrize("budget", [0.005, 0.001])
def test_sampled_designs_fill_the_budget_without_exceeding_it(minilm, budget):
    counts: Counter = Counter()
    for design in DesignSpace().sample(N_SAMPLED, seed=0):
        minimum = minimum_params(design, minilm)
        budget_params = int(budget * minilm.n_params)
        try:
            plan = compile(design, minilm, budget)
        except DesignSpaceError as err:
            # Raised exactly when the smallest modules of the design exceed the budget.
            msg = str(err)
            assert "too small" in msg and f"{minimum:,}" in msg and "\n" not in msg, msg
            assert minimum > budget_params, (design.describe(), minimum, budget_params)
            counts["too small"] += 1
            continue
        assert minimum <= budget_params
        assert plan.budget_params == budget_params
        assert plan.params <= budget_params, design.describe()
        units = [registry.get(m.strategy).unit_cost(minilm.layers[m.layer], m.roles)
                 for m in plan.modules if registry.get(m.strategy).sized]
        if not units:
            # Only fixed-cost strategies: the plan is their cost, whatever the budget.
            assert plan.params == minimum, design.describe()
            counts["fixed cost only"] += 1
            continue
        left = budget_params - plan.params
        # The fill rule: no module's next size unit would still fit.
        assert left < min(units), (design.describe(), left, units)
        if min(units) <= 0.05 * budget_params:
            assert left <= 0.05 * budget_params, (design.describe(), left)
            counts["sized, within 5 %"] += 1
        else:
            # One unit (e.g. a LoRA rank on q and v: 1,536 parameters) is itself more than 5 % of
            # the budget; a plan can only be as close as one unit.
            counts["sized, one unit > 5 %"] += 1
            counts["of which > 5 % below"] += left > 0.05 * budget_params
    print(f"\nMiniLM-L6 at {budget:.1%} ({N_SAMPLED} designs): {dict(counts)}")
    assert sum(v for k, v in counts.items() if not k.startswith("of which")) == N_SAMPLED
    assert counts["sized, within 5 %"] > N_SAMPLED // 2


def test_bitfit_everywhere_does_not_fit_a_tenth_of_a_percent(minilm):
    design = Design(grouping="uniform", strategies=(("bitfit",),) * 4)
    with pytest.raises(DesignSpaceError, match="too small") as err:
        compile(design, minilm, 0.001)
    assert "\n" not in str(err.value)
    plan = compile(design, minilm, 0.005)
    assert plan.params == minimum_params(design, minilm) == 6 * registry.get("bitfit").cost(minilm.layers[0], 1)


def test_plan_touches_exactly_the_tuned_groups(minilm):
    design = replace(S4, tuned_groups=(2, 4))
    plan = compile(design, minilm, 0.005)
    groups = layer_groups(6, design.grouping)
    assert plan.groups == tuple(groups) == (1, 2, 2, 3, 3, 4)
    for layer in range(6):
        got = sorted(m.strategy for m in plan.layer_modules(layer))
        want = sorted(design.strategies[groups[layer] - 1]) if groups[layer] in (2, 4) else []
        assert got == want, layer
    for m in plan.modules:
        assert m.params == registry.get(m.strategy).cost(minilm.layers[m.layer], m.size, m.roles) > 0
    assert plan.params == sum(m.params for m in plan.modules)
    assert plan.design == design.to_dict() and plan.design_id == design.id


@pytest.mark.parametrize("allocation", ["increasing", "uniform", "decreasing"])
def test_allocation_orders_the_sizes(minilm, allocation):
    design = Design(grouping="uniform", allocation=allocation, strategies=(("adapter",),) * 4)
    sizes = [m.size for m in compile(design, minilm, 0.005).modules]
    assert len(sizes) == 6
    if allocation == "increasing":
        assert sizes == sorted(sizes) and sizes[-1] >= 4 * sizes[0]
    elif allocation == "decreasing":
        assert sizes == sorted(sizes, reverse=True) and sizes[0] >= 4 * sizes[-1]
    else:
        assert max(sizes) - min(sizes) <= 1


def test_options_choose_roles_and_are_carried(minilm):
    design = Design(strategies=(("lora",),) * 4)
    qv = compile(design, minilm, 0.005)
    all_attn = compile(design, minilm, 0.005, options={"lora_roles": ["attn_q", "attn_k", "attn_v", "attn_o"]})
    assert {m.roles for m in qv.modules} == {("attn_q", "attn_v")}
    assert {m.roles for m in all_attn.modules} == {("attn_q", "attn_k", "attn_v", "attn_o")}
    # Twice the roles, so about half the rank for the same budget.
    assert sum(m.size for m in all_attn.modules) * 2 <= sum(m.size for m in qv.modules) + 6
    assert all_attn.options["lora_roles"][1] == "attn_k"


def test_compile_validates_the_budget_and_defaults_to_half_a_percent(minilm):
    assert compile(S4, minilm).budget == 0.005
    assert compile(S4, minilm, 0.002).budget == 0.002
    for bad in (0, 1.0, "half", None, float("nan"), -0.01, 5):
        with pytest.raises(DesignSpaceError, match="budget") as err:
            compile(S4, minilm, bad)
        assert "\n" not in str(err.value)


def test_plan_round_trips_through_dict_and_json(minilm, tmp_path):
    plan = compile(s4_design(), minilm, 0.005, options={"lora_scale": 1.0})
    d = plan.to_dict()
    assert d["params"] == plan.params and d["kind"] == "plan"
    assert Plan.from_dict(d) == plan
    assert Plan.load(plan.save(tmp_path / "plan.json")) == plan
    again = Plan.load(tmp_path / "plan.json")
    assert again.params == plan.params and again.design_id == s4_design().id
    assert len(plan.table().splitlines()) == 2 + plan.n_layers


def test_sizes_are_capped_by_the_layers_width():
    """A 32-wide layer cannot take a rank above 32 (it got rank 113 before): the rest stays unspent."""
    import sys

    sys.path.insert(0, "tests")
    from tiny import tiny_backbone

    bb = tiny_backbone("bert")
    plan = compile(Design(grouping="uniform", strategies=(("lora",),) * 4), bb, 0.5)
    assert plan.modules and all(m.size <= 32 for m in plan.modules)
    assert plan.params < plan.budget_params
    adapters = compile(Design(grouping="uniform", strategies=(("adapter",),) * 4), bb, 0.5)
    assert all(m.size <= 32 for m in adapters.modules)


def test_a_role_the_role_map_lacks_is_one_line():
    """Phi has no ln_ffn (one norm before parallel attention and FFN): BitFit's default roles need it."""
    import transformers as T

    from designspace.backbones import Backbone

    with __import__("torch").device("meta"):
        model = T.AutoModel.from_config(T.PhiConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                                                    num_attention_heads=4, vocab_size=64))
    bb = Backbone.from_model(model, name="tiny-phi")
    with pytest.raises(DesignSpaceError) as err:
        compile(Design(strategies=(("bitfit",),) * 4), bb, 0.05)
    msg = str(err.value)
    assert "\n" not in msg and "bitfit needs role(s) ln_ffn" in msg and "bitfit_roles" in msg
    ok = compile(Design(strategies=(("bitfit",),) * 4), bb, 0.05,
                 options={"bitfit_roles": ["attn_q", "attn_k", "attn_v", "attn_o", "ffn_in", "ffn_out", "ln_attn"]})
    assert ok.params > 0


def test_unknown_plan_options_are_refused(minilm):
    with pytest.raises(DesignSpaceError, match=r"options\.lora_rank") as err:
        compile(S4, minilm, 0.005, options={"lora_rank": 4})
    assert "\n" not in str(err.value)
