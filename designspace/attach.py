"""Apply a :class:`Plan` to a loaded backbone: build its PET modules, hook them in, freeze the rest.

Checks what was built, not what was asked: after attaching, the trainable parameters found on the
real model must equal the plan's count, or we raise (a pattern that matched nothing must never be
applied silently).
"""

from __future__ import annotations

from torch import nn

from .backbones import Backbone
from .errors import DesignSpaceError
from .plan import Plan
from .strategies import PETModule, registry


def module_key(layer: int, strategy: str) -> str:
    return f"L{layer}_{strategy}"


class Attached(nn.Module):
    """The PET modules of a plan, keyed ``L<layer>_<strategy>``, and the hooks that route them."""

    def __init__(self, backbone: Backbone, plan: Plan):
        super().__init__()
        if plan.n_layers != len(backbone.layers):
            raise DesignSpaceError(
                f"plan for {plan.backbone} has {plan.n_layers} layers but backbone {backbone.name} has "
                f"{len(backbone.layers)}; recompile the design for this backbone"
            )
        self.plan = plan
        self.pets = nn.ModuleDict()
        self._handles: list = []
        for m in plan.modules:
            layer = backbone.layers[m.layer]
            missing = [r for r in m.roles if r not in layer.roles]
            if missing:
                raise DesignSpaceError(f"layer {m.layer} of {backbone.name} has no role {missing} for {m.strategy}")
            pet = registry.get(m.strategy).build(layer, m.size, m.roles, plan.options)
            pet.to(next(backbone.model.parameters()).device)
            self.pets[module_key(m.layer, m.strategy)] = pet
            self._handles += pet.attach(layer)

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def effective_params(self) -> int:
        return sum(p.effective_params() for p in self.pets.values() if isinstance(p, PETModule))


def attach(backbone: Backbone, plan: Plan) -> Attached:
    """Freeze ``backbone``, attach ``plan``'s modules; the trainable count must match the plan."""
    for p in backbone.model.parameters():
        p.requires_grad_(False)
    attached = Attached(backbone, plan)
    built = attached.effective_params()
    trainable_backbone = sum(p.numel() for p in backbone.model.parameters() if p.requires_grad)
    if built != plan.params or trainable_backbone:
        attached.detach()
        raise DesignSpaceError(
            f"attached {built:,} PET parameters (+{trainable_backbone:,} backbone) but the plan counts "
            f"{plan.params:,}; the plan does not fit {backbone.name}"
        )
    return attached
