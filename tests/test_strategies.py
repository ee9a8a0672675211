"""Every strategy on tiny random models of every family: runs, counts, starts as the identity, detaches."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from tiny import FAMILIES, tiny_backbone, tiny_batch
from torch.nn import functional as F

from designspace import Design, DesignSpace, DesignSpaceError
from designspace import compile_plan as compile
from designspace.attach import PETModule, attach
from designspace.model import PETModel, shift_right
from designspace.plan import ModuleSpec, Plan
from designspace.strategies import registry

pytestmark = pytest.mark.usefixtures("one_thread")

STRATEGIES = ("adapter", "prefix", "bitfit", "lora", "lnfit", "ia3")
#: A tiny model has ~40k parameters; 5 % leaves room for every strategy in every layer.
TINY_BUDGET = 0.05
SAMPLED = DesignSpace().sample(3, seed=7)
EXACT = {"atol": 1e-6, "rtol": 0.0}


def single(design: Design, strategy: str) -> Design:
    """``design``'s grouping, allocation and tuned groups with ``strategy`` in every group."""
    return replace(design, strategies=((strategy,),) * design.n_groups)


@torch.no_grad()
def hidden(backbone, ids, mask, **kwargs) -> torch.Tensor:
    """The backbone's last hidden states (for T5: encoder's, then decoder's, along the sequence)."""
    model = backbone.model
    if backbone.is_encoder_decoder:
        out = model(input_ids=ids, attention_mask=mask, decoder_input_ids=shift_right(ids, model.config), use_cache=False)
        return torch.cat([out.encoder_last_hidden_state, out.last_hidden_state], dim=1)
    return model(input_ids=ids, attention_mask=mask, **kwargs).last_hidden_state


def trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.mark.parametrize("design_index", range(len(SAMPLED)))
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("family", FAMILIES)
def test_single_strategy_plan_on_every_family(family, strategy, design_index):
    backbone = tiny_backbone(family)
    plan = compile(single(SAMPLED[design_index], strategy), backbone, TINY_BUDGET)
    ids, mask = tiny_batch()
    before = hidden(backbone, ids, mask)

    model = PETModel(backbone, plan, num_labels=2)
    assert trainable(model.pet) == plan.params > 0
    assert trainable(backbone.model) == 0
    after = hidden(backbone, ids, mask)
    if strategy == "prefix":
        assert (after - before).abs().max() > 1e-3
    else:
        torch.testing.assert_close(after, before, **EXACT)

    logits = model(ids, mask)
    assert logits.shape == (3, 2)
    F.cross_entropy(logits, torch.tensor([0, 1, 0])).backward()
    for key, pet in model.pet.pets.items():
        grads = [p.grad for p in pet.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), key
        assert any(g.abs().sum() > 0 for g in grads), f"{key} gets no gradient: not on the forward path"
    assert all(p.grad is None for p in backbone.model.parameters())

    model.pet.detach()
    torch.testing.assert_close(hidden(backbone, ids, mask), before, **EXACT)


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_length_prefix_is_no_prefix(family):
    backbone = tiny_backbone(family)
    ids, mask = tiny_batch()
    before = hidden(backbone, ids, mask)

    # A plan whose prefix modules have size 0.
    plan = compile(single(Design(), "prefix"), backbone, TINY_BUDGET)
    zero = replace(plan, modules=tuple(replace(m, size=0, params=0) for m in plan.modules))
    attached = attach(backbone, zero)
    assert zero.params == 0 and trainable(attached) == 0
    torch.testing.assert_close(hidden(backbone, ids, mask), before, **EXACT)
    attached.detach()

    attached = attach(backbone, plan)
    assert (hidden(backbone, ids, mask) - before).abs().max() > 1e-3
    attached.detach()
    torch.testing.assert_close(hidden(backbone, ids, mask), before, **EXACT)


@pytest.mark.parametrize("family, side", [("bert", "right"), ("llama", "right"), ("llama", "left")])
def test_prefix_keeps_padding_masked(family, side):
    backbone = tiny_backbone(family)
    ids = tiny_batch(1, 5, seed=1)[0]
    alone = hidden(backbone, ids, torch.ones_like(ids))[0]
    attach(backbone, compile(single(Design(), "prefix"), backbone, TINY_BUDGET))
    with_prefix = hidden(backbone, ids, torch.ones_like(ids))[0]
    assert (with_prefix - alone).abs().max() > 1e-3, "the prefix should change the outputs"

    # The same sequence padded by 3, next to a full-length row so that the batch needs a mask.
    pad = torch.zeros(1, 3, dtype=ids.dtype)
    other = tiny_batch(1, 8, seed=2)[0]
    row = torch.cat([ids, pad], 1) if side == "right" else torch.cat([pad, ids], 1)
    batch = torch.cat([row, other])
    mask = torch.ones_like(batch)
    real = slice(0, 5) if side == "right" else slice(3, 8)
    mask[0] = 0
    mask[0, real] = 1
    kwargs = {}
    if side == "left":
        # Left padding shifts positions; give the real tokens the positions they have alone.
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    padded = hidden(backbone, batch, mask, **kwargs)[0, real]
    torch.testing.assert_close(padded, with_prefix, atol=1e-5, rtol=0)


def one_module_plan(backbone, layer_index: int, strategy: str, size: int, roles, options=None) -> Plan:
    layer = backbone.layers[layer_index]
    m = ModuleSpec(layer_index, strategy, size, tuple(roles), registry.get(strategy).cost(layer, size, tuple(roles)))
    n = len(backbone.layers)
    return Plan(backbone.name, n, backbone.n_params, 0.5, backbone.n_params // 2, (m,), (1,) * n, options=options or {})


@pytest.mark.parametrize("family", FAMILIES)
def test_cost_equals_built_parameters(family):
    backbone = tiny_backbone(family)
    all_linear = ("attn_q", "attn_k", "attn_v", "attn_o", "ffn_in", "ffn_out")
    for layer in (backbone.layers[0], backbone.layers[-1]):
        for name in registry.names():
            strategy = registry.get(name)
            for roles in {strategy.default_roles, all_linear if name in ("lora", "bitfit") else strategy.default_roles}:
                for size in (1, 3):
                    spec = ModuleSpec(layer.index, name, size, roles, strategy.cost(layer, size, roles))
                    pet = PETModule(spec, layer, {}, seed=0)
                    built = sum(p.numel() for p in pet.parameters())
                    assert built == pet.effective_params() == strategy.cost(layer, size, roles), (name, roles, size)


def test_lora_on_a_fused_projection_updates_only_its_part():
    backbone = tiny_backbone("gpt2")
    layer = backbone.layers[0]
    c_attn = layer.roles["attn_k"].module
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        base = c_attn(x)
        attached = attach(backbone, one_module_plan(backbone, 0, "lora", 2, ("attn_k",)))
        next(iter(attached.pets.values())).B["attn_k"].fill_(1.0)
        changed = (c_attn(x) - base).abs().amax(dim=(0, 1)) > 0
    attached.detach()
    assert changed[32:64].all() and not changed[:32].any() and not changed[64:].any()


def test_ia3_on_a_fused_projection_scales_only_its_part():
    backbone = tiny_backbone("gpt2")
    c_attn = backbone.layers[0].roles["attn_v"].module
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        base = c_attn(x)
        attached = attach(backbone, one_module_plan(backbone, 0, "ia3", 1, ("attn_v",)))
        next(iter(attached.pets.values())).scale["attn_v"].fill_(2.0)
        out = c_attn(x)
    attached.detach()
    torch.testing.assert_close(out[..., 64:], 2 * base[..., 64:])
    torch.testing.assert_close(out[..., :64], base[..., :64])


@pytest.mark.parametrize("family", ["bert", "t5", "llama"])
def test_prefix_reparameterisation_folds_to_the_same_prefixes(family):
    backbone = tiny_backbone(family)
    ids, mask = tiny_batch()
    plan = compile(single(Design(), "prefix"), backbone, TINY_BUDGET)
    reparam = Plan.from_dict({**plan.to_dict(), "options": {"prefix_reparam_hidden": 8}})
    attached = attach(backbone, reparam)
    saved = attached.effective_params()
    assert saved == plan.params < sum(p.numel() for p in attached.parameters())
    before = hidden(backbone, ids, mask)
    for pet in attached.pets.values():
        pet.fold()
    assert sum(p.numel() for p in attached.parameters()) == saved
    torch.testing.assert_close(hidden(backbone, ids, mask), before, atol=1e-5, rtol=0)
    attached.detach()


def test_unknown_strategy_is_a_one_line_error():
    with pytest.raises(DesignSpaceError, match="strategy='vera' is invalid; allowed: .*lora") as err:
        registry.get("vera")
    assert "\n" not in str(err.value)


def test_adapter_on_attn_o_and_two_lora_modules_in_one_layer_attach_as_planned():
    from designspace.attach import module_key
    from designspace.regime import Regime
    from designspace.train import param_groups

    backbone = tiny_backbone("bert")
    layer = backbone.layers[1]

    def spec(strategy, size, roles):
        return ModuleSpec(1, strategy, size, roles, registry.get(strategy).cost(layer, size, roles))

    modules = (spec("adapter", 2, ("attn_o",)), spec("adapter", 2, ("ffn_out",)),
               spec("lora", 1, ("attn_q",)), spec("lora", 1, ("attn_k",)), spec("bitfit", 1, ("attn_v",)))
    n = len(backbone.layers)
    plan = Plan(backbone.name, n, backbone.n_params, 0.1, int(0.1 * backbone.n_params), modules, (1,) * n)
    attn_o = layer.roles["attn_o"].module
    hooks = len(attn_o._forward_hooks)
    model = PETModel(backbone, plan, num_labels=2)
    assert trainable(model.pet) == plan.params > 0
    assert len(attn_o._forward_hooks) == hooks + 1  # the attention adapter sits on attn_o
    assert set(model.pet.pets) == {"L1_adapter__attn_o", "L1_adapter", "L1_lora__attn_q",
                                   "L1_lora__attn_k", "L1_bitfit"}
    assert [p.strategy_name for p in model.pet.pets.values()] == [m.strategy for m in modules]
    assert {g["name"] for g in param_groups(model, Regime())} == {"adapter", "lora", "bitfit", "head"}
    assert module_key(1, "adapter", ("ffn_out",)) == "L1_adapter"  # default roles: the old key
    ids, mask = tiny_batch()
    F.cross_entropy(model(ids, mask), torch.tensor([0, 1, 0])).backward()
    model.pet.detach()
