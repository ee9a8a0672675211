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


def module_key(layer: int, strategy: str, roles: tuple[str, ...] | None = None) -> str:
    """``L<layer>_<strategy>``, or ``L<layer>_<strategy>__<role+role>`` when ``roles`` are given and
    are not the strategy's default roles."""
    if roles is None or tuple(roles) == tuple(registry.get(strategy).default_roles):
        return f"L{layer}_{strategy}"
    return f"L{layer}_{strategy}__{'+'.join(roles)}"


def module_keys(plan: Plan) -> list[str]:
    """The key of each of ``plan``'s modules: ``L<layer>_<strategy>`` when the layer has one module of
    that strategy (the keys of every plan saved before roles entered them), else :func:`module_key`
    with the module's roles (e.g. LoRA on attn_q and LoRA on attn_k as two modules of one layer)."""
    count: dict[tuple[int, str], int] = {}
    for m in plan.modules:
        count[m.layer, m.strategy] = count.get((m.layer, m.strategy), 0) + 1
    keys = [module_key(m.layer, m.strategy, m.roles if count[m.layer, m.strategy] > 1 else None) for m in plan.modules]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise DesignSpaceError(f"the plan has two modules keyed {dup}: same layer, strategy and roles")
    return keys


class Attached(nn.Module):
    """The PET modules of a plan, keyed by :func:`module_keys`, and the hooks that route them.

    Every module gets a ``strategy`` attribute (its strategy's name): read it rather than parsing keys.
    """

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
        for key, m in zip(module_keys(plan), plan.modules, strict=True):
            layer = backbone.layers[m.layer]
            missing = [r for r in m.roles if r not in layer.roles]
            if missing:
                raise DesignSpaceError(f"layer {m.layer} of {backbone.name} has no role {missing} for {m.strategy}")
            pet = registry.get(m.strategy).build(layer, m.size, m.roles, plan.options)
            pet.to(next(backbone.model.parameters()).device)
            pet.strategy = m.strategy
            self.pets[key] = pet
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
