"""Attaching plans: common random numbers (a module's start depends on its own seed only), routes."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_backbone, tiny_batch

from designspace import Design, compile_plan
from designspace.attach import attach, is_clean
from designspace.model import PETModel

pytestmark = pytest.mark.usefixtures("one_thread")


def _plan(bb, modules):
    from designspace.plan import ModuleSpec, Plan
    from designspace.strategies import registry

    specs = tuple(ModuleSpec(li, s, size, roles, registry.get(s).cost(bb.layers[li], size, roles))
                  for li, s, size, roles in modules)
    n = len(bb.layers)
    return Plan(bb.name, n, bb.n_params, 0.5, bb.n_params // 2, specs, (1,) * n)


def test_the_same_module_starts_identical_in_two_designs():
    """Before, modules were drawn from one RNG stream in plan order: a LoRA module's start depended on
    how many numbers the modules before it drew, so paired designs did not share it."""
    bb = tiny_backbone("bert")
    lora3 = (3, "lora", 4, ("attn_q", "attn_v"))
    pa = _plan(bb, [(0, "lora", 2, ("attn_q", "attn_v")), lora3])
    pb = _plan(bb, [(0, "adapter", 8, ("ffn_out",)), (1, "prefix", 5, ("attn",)), lora3])
    ma = PETModel(bb, pa, 2, seed=4)
    A = ma.pet.pets["L3_lora"].A["attn_q"].detach().clone()
    head_a = [p.detach().clone() for p in ma.head.parameters()]
    ma.pet.detach()
    mb = PETModel(bb, pb, 2, seed=4)
    torch.testing.assert_close(mb.pet.pets["L3_lora"].A["attn_q"], A, atol=0, rtol=0)
    for p, q in zip(mb.head.parameters(), head_a, strict=True):
        torch.testing.assert_close(p, q, atol=0, rtol=0)
    mb.pet.detach()
    other = PETModel(bb, pa, 2, seed=5)
    assert not torch.equal(next(iter(other.head.parameters())), head_a[0])
    assert not torch.equal(other.pet.pets["L3_lora"].A["attn_q"], A)
    other.pet.detach()


def test_detach_leaves_the_backbone_clean():
    bb = tiny_backbone("llama")
    plan = compile_plan(Design(strategies=(("adapter", "ia3", "lora", "prefix"),) * 4), bb, 0.1)
    attached = attach(bb, plan)
    assert not is_clean(bb)
    attached.detach()
    assert is_clean(bb)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_two_designs_on_their_own_rows_equal_each_alone(family):
    """Routes apply each design to its own rows: the groundwork of training K designs in one pass."""
    from designspace.attach import Rows

    bb = tiny_backbone(family)
    ids, mask = tiny_batch()
    plans = [compile_plan(Design(strategies=(s,) * 4), bb, 0.05) for s in (("lora", "prefix"), ("adapter", "ia3"))]
    alone = []
    for plan in plans:
        m = PETModel(bb, plan, 2, seed=1).eval()
        with torch.no_grad():
            for pet in m.pet.pets.values():
                for p in pet.parameters():
                    p.add_(0.1 * torch.randn_like(p))
            alone.append((m, m(ids, mask)))
        m.pet.detach()
    from designspace.attach import Attached

    rows = [Rows((0, 3)), Rows((3, 6))]
    packed = []
    for (m, _), r in zip(alone, rows, strict=True):
        att = Attached(bb, m.pet.plan, seed=1, rows=r)
        att.pets.load_state_dict(m.pet.pets.state_dict())
        packed.append((m, att))
    both_ids, both_mask = torch.cat([ids, ids]), torch.cat([mask, mask])
    with torch.no_grad():
        feats = alone[0][0].features(both_ids, both_mask)
    for k, (m, _) in enumerate(packed):
        torch.testing.assert_close(m.head(feats[3 * k:3 * (k + 1)]), alone[k][1], atol=1e-5, rtol=0)
    for _, att in packed:
        att.detach()
    assert is_clean(bb)
