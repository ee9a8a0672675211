"""Compile a :class:`Design` for one backbone and one budget into an explicit :class:`Plan`.

Sizing rule (documented in the README too):

1. The tuned layers are the layers of the tuned groups. The allocation pattern gives each a share of
   the budget ``B``: weights 1..n (increasing), all 1 (uniform) or n..1 (decreasing).
2. Within a layer, fixed-cost strategies (BitFit) are paid first; the rest of the layer's share is
   split evenly over its sized strategies (adapter bottleneck, LoRA rank, prefix length). Each
   module starts at the largest size that fits its target, and at least 1.
3. If the minimum sizes already exceed ``B`` the design does not fit: a clear error, never a
   zero-size module. Otherwise the leftover is handed out one size unit at a time, always to the
   module furthest below its target whose next unit still fits, so the total never exceeds ``B``
   and ends less than one unit below it (unless the design has only fixed-cost strategies).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import DesignSpaceError, check_float, check_keys
from .patterns import allocation_weights, layer_groups
from .space import Design
from .strategies import registry

#: 0.5 % of the backbone's parameters: the paper's budget, and every default in this package.
DEFAULT_BUDGET = 0.005
#: Options a plan carries to the strategies (roles per strategy are ``<strategy>_roles``).
PLAN_OPTIONS = ("lora_scale", "lora_dropout", "adapter_activation", "prefix_reparam_hidden", "origin")


def check_budget(budget, field: str = "budget", source: str | None = None) -> float:
    """The one check of a budget: a fraction of the backbone's parameters, 0 < budget < 1."""
    return check_float(budget, field, 0.0, 1.0, open_low=True, open_high=True, source=source)


def check_options(options: dict | None, source: str | None = None) -> dict:
    options = dict(options or {})
    allowed = list(PLAN_OPTIONS) + [f"{s}_roles" for s in registry.names()]
    check_keys(options, allowed, "options.", source)
    return options


@dataclass(frozen=True)
class ModuleSpec:
    layer: int
    strategy: str
    size: int
    roles: tuple[str, ...]
    params: int


@dataclass(frozen=True)
class Plan:
    """(layer, strategy, size, roles, params) for every module, with the exact parameter count."""

    backbone: str
    n_layers: int
    backbone_params: int
    budget: float
    budget_params: int
    modules: tuple[ModuleSpec, ...]
    groups: tuple[int, ...]
    design: dict | None = None
    options: dict = field(default_factory=dict)

    @property
    def params(self) -> int:
        return sum(m.params for m in self.modules)

    @property
    def fraction(self) -> float:
        return self.params / self.backbone_params

    @property
    def design_id(self) -> str | None:
        return Design.from_dict(self.design).id if self.design else None

    def layer_modules(self, layer: int) -> list[ModuleSpec]:
        return [m for m in self.modules if m.layer == layer]

    def summary(self) -> str:
        return (
            f"{self.backbone}: {len(self.modules)} modules, {self.params:,} params "
            f"({self.fraction:.4%} of {self.backbone_params:,}); requested {self.budget:.4%} = "
            f"{self.budget_params:,} ({self.params / max(self.budget_params, 1):.1%} used)"
        )

    def table(self) -> str:
        """The plan layer by layer, as fixed-width text."""
        lines = [self.summary(), f"{'layer':>5} {'group':>5}  modules"]
        for layer in range(self.n_layers):
            mods = self.layer_modules(layer)
            desc = ", ".join(f"{module_label(m, long=True)}={m.params:,}" for m in mods)
            lines.append(f"{layer:>5} {'G' + str(self.groups[layer]):>5}  {desc or '-'}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["modules"] = [asdict(m) for m in self.modules]
        d["params"] = self.params
        d["kind"] = "plan"
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        d = {k: v for k, v in d.items() if k not in ("params", "kind")}
        d["modules"] = tuple(ModuleSpec(**{**m, "roles": tuple(m["roles"])}) for m in d["modules"])
        d["groups"] = tuple(d["groups"])
        return cls(**d)

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return p

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        return cls.from_dict(json.loads(Path(path).read_text()))


def module_label(m: ModuleSpec, long: bool = False) -> str:
    """'L r=8' (or 'lora(r=8 on attn_q+attn_v)' with ``long``); fixed-cost strategies have no size."""
    s = registry.get(m.strategy)
    size = f"{s.size_symbol or s.size_name}={m.size}" if s.sized else ""
    if not long:
        return f"{s.label} {size}".strip()
    roles = "" if tuple(m.roles) == tuple(s.default_roles) else f" on {'+'.join(m.roles)}"
    return f"{m.strategy}({size}{roles})" if size or roles else m.strategy


def compile_modules(
    layers,
    targets: dict[int, list[tuple[str, tuple[str, ...]]]],
    layer_share: dict[int, float],
    budget_params: int,
    what: str,
) -> list[ModuleSpec]:
    """Size the requested (layer -> [(strategy, roles)]) modules under ``budget_params`` (rule above)."""
    specs: list[list] = []  # [layer, strategy, roles, size, target, unit, base, cap]
    for li, requested in targets.items():
        layer = layers[li]
        share = layer_share[li]
        for s, r in requested:
            registry.get(s).check_roles(layer, r, what)
        fixed = [(s, r) for s, r in requested if not registry.get(s).sized]
        sized = [(s, r) for s, r in requested if registry.get(s).sized]
        for s, r in fixed:
            cost = registry.get(s).cost(layer, 1, r)
            share -= cost
            specs.append([li, s, r, 1, cost, 0, cost, 1])
        for s, r in sized:
            strat = registry.get(s)
            unit, base = strat.unit_cost(layer, r), strat.base_cost(layer, r)
            cap = strat.max_size(layer, r) or 1 << 30
            target = max(share, 0.0) / len(sized)
            size = min(cap, max(1, int((target - base) // unit)))
            specs.append([li, s, r, size, target, unit, base, cap])

    def cost(sp):
        return sp[6] + sp[3] * sp[5] if sp[5] else sp[6]

    total = sum(cost(sp) for sp in specs)
    # Shrink while over budget (the floors can overshoot when a share is below one unit).
    while total > budget_params:
        cands = [sp for sp in specs if sp[5] and sp[3] > 1]
        if not cands:
            minimum = sum(sp[6] + sp[5] for sp in specs)
            raise DesignSpaceError(
                f"{what}: the budget of {budget_params:,} parameters is too small: the smallest modules of this design "
                f"need {minimum:,}; raise the budget or tune fewer groups/strategies"
            )
        sp = max(cands, key=lambda s: (cost(s) - s[4]) / s[5])
        sp[3] -= 1
        total -= sp[5]
    # Fill: one unit at a time to the module furthest below its target that still fits (and whose
    # size is below the layer's cap: a budget larger than every cap stays partly unspent).
    sized_specs = [sp for sp in specs if sp[5]]
    while sized_specs:
        left = budget_params - total
        cands = [sp for sp in sized_specs if sp[5] <= left and sp[3] < sp[7]]
        if not cands:
            break
        sp = max(cands, key=lambda s: ((s[4] - cost(s)) / s[5], -s[0]))
        # Jump several units at once when far below target (keeps big budgets fast).
        steps = max(1, min(int((sp[4] - cost(sp)) // sp[5]), left // sp[5], sp[7] - sp[3]))
        sp[3] += steps
        total += steps * sp[5]
    return [ModuleSpec(sp[0], sp[1], sp[3], tuple(sp[2]), cost(sp)) for sp in sorted(specs, key=lambda s: (s[0], s[1]))]


def compile_plan(design: Design, backbone, budget: float = DEFAULT_BUDGET, options: dict | None = None) -> Plan:
    """The plan of ``design`` on ``backbone`` (a loaded :class:`~designspace.backbones.Backbone` or its
    info) at ``budget``, a fraction of the backbone's parameters.

    ``options`` may set strategy roles (``lora_roles: [attn_q, attn_v]``) and training-side options
    (``lora_scale``, ``adapter_activation``, ``prefix_reparam_hidden``) that are carried in the plan.
    """
    options = check_options(options)
    budget = check_budget(budget)
    if not isinstance(design, Design):
        raise DesignSpaceError(f"compile_plan needs a Design, got {type(design).__name__}")
    layers = backbone.layers
    n = len(layers)
    groups = layer_groups(n, design.grouping, design.n_groups)
    tuned = [i for i in range(n) if groups[i] in design.tuned_groups]
    weights = allocation_weights(design.allocation, len(tuned))
    budget_params = int(budget * backbone.n_params)
    share = {li: budget_params * w / sum(weights) for li, w in zip(tuned, weights, strict=True)}
    targets = {}
    for li in tuned:
        strategies = design.strategies[groups[li] - 1]
        targets[li] = [(s, tuple(options.get(f"{s}_roles") or registry.get(s).default_roles)) for s in strategies]
    modules = compile_modules(layers, targets, share, budget_params, f"design {design.id} on {backbone.name}")
    return Plan(
        backbone=backbone.name,
        n_layers=n,
        backbone_params=backbone.n_params,
        budget=budget,
        budget_params=budget_params,
        modules=tuple(modules),
        groups=tuple(groups),
        design=design.to_dict(),
        options=options,
    )
