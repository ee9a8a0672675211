"""The S3PET search space, structures built from it, and the model that carries them.

A *candidate* is one strategy on one role of one layer, written as a single-role
:class:`~designspace.plan.ModuleSpec` whose ``params`` come from the strategy's ``cost``. A
*structure* is a set of candidates saved as a :class:`~designspace.plan.Plan`, with the LoRA,
BitFit and LNFit candidates of a layer merged into one module each (as ``attach`` expects) and one
adapter module per role.

Structures are plain plans: the core's ``attach`` builds them (adapters after the attention block
included) and ``train_design`` retrains them. :class:`StructureModel` is the search-time model: the
candidates, each built by its strategy on its own role and optionally gated.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence

from torch import nn

from ..backbones import Backbone
from ..backbones.roles import LINEAR_ROLES, NORM_ROLES, Layer
from ..errors import DesignSpaceError, invalid
from ..model import PETModel
from ..plan import ModuleSpec, Plan, compile_modules
from ..strategies import PETModule, registry
from ..strategies.base import add_to_output
from ..strategies.bitfit import distinct_modules
from .gates import Gates

#: Where each candidate kind may sit. Adapters only where the output is the hidden state.
KIND_ROLES: dict[str, tuple[str, ...]] = {
    "lora": LINEAR_ROLES,
    "bitfit": LINEAR_ROLES + NORM_ROLES,
    "lnfit": NORM_ROLES,
    "adapter": ("attn_o", "ffn_out"),
}
#: The paper's space: LoRA and BitFit on every projection, LNFit on both norms, a low-rank adapter
#: after the attention block and after the FFN.
DEFAULT_SPACE: dict[str, tuple[str, ...]] = {
    "attn_q": ("lora", "bitfit"),
    "attn_k": ("lora", "bitfit"),
    "attn_v": ("lora", "bitfit"),
    "attn_o": ("lora", "bitfit", "adapter"),
    "ffn_in": ("lora", "bitfit"),
    "ffn_out": ("lora", "bitfit", "adapter"),
    "ln_attn": ("lnfit",),
    "ln_ffn": ("lnfit",),
}
DEFAULT_SIZES: dict[str, int] = {"lora": 1, "adapter": 1}


def check_space(space: Mapping, field: str = "space") -> dict[str, tuple[str, ...]]:
    """``space`` as {role: (kinds...)}; an error names the role or kind that is not allowed."""
    if not isinstance(space, Mapping) or not space:
        raise invalid(field, space, "a mapping role -> [kinds], e.g. {attn_q: [lora, bitfit]}")
    out = {}
    for role, kinds in space.items():
        kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
        allowed = [k for k, roles in KIND_ROLES.items() if role in roles]
        if not allowed:
            raise invalid(f"{field}.{role}", list(kinds), f"roles {', '.join(sorted(set().union(*KIND_ROLES.values())))}")
        for k in kinds:
            if k not in allowed:
                raise invalid(f"{field}.{role}", k, allowed)
        out[str(role)] = kinds
    return out


def candidate_specs(backbone: Backbone, space: Mapping | None = None, sizes: Mapping | None = None) -> list[ModuleSpec]:
    """Every candidate of ``space`` in every layer, in layer, then space order."""
    space = check_space(space or DEFAULT_SPACE)
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    out = []
    for li, layer in enumerate(backbone.layers):
        # GPT-2's q, k and v share one fused bias: one BitFit candidate, not three.
        bias_roles = distinct_modules(layer, [r for r, ks in space.items() if "bitfit" in ks])
        for role, kinds in space.items():
            for kind in kinds:
                if kind == "bitfit" and role not in bias_roles:
                    continue
                strategy = registry.get(kind)
                size = int(sizes[kind]) if strategy.sized else 1
                out.append(ModuleSpec(li, kind, size, (role,), strategy.cost(layer, size, (role,))))
    return out


def fill(order: Iterable[int], params: Sequence[int], budget: int) -> list[int]:
    """Walk ``order`` taking each candidate that still fits (a skipped one does not stop the walk)."""
    taken, spent = [], 0
    for i in order:
        if spent + params[i] <= budget:
            taken.append(i)
            spent += params[i]
    return sorted(taken)


def structure_plan(
    backbone: Backbone, specs: Sequence[ModuleSpec], budget: float, options: dict | None = None
) -> Plan:
    """The plan of a set of candidates: one module per (layer, strategy), one adapter per role."""
    merged: dict[tuple, list] = {}
    for s in specs:
        key = (s.layer, s.strategy, s.roles if s.strategy == "adapter" else ())
        merged.setdefault(key, [s.size, [], 0])
        merged[key][1] += list(s.roles)
        merged[key][2] += s.params
    modules = []
    for (layer, strategy, _), (size, roles, params) in sorted(merged.items()):
        cost = registry.get(strategy).cost(backbone.layers[layer], size, tuple(roles))
        if cost != params:  # e.g. two candidates of one fused module
            raise DesignSpaceError(f"layer {layer} {strategy} on {roles}: merged cost {cost} != {params}")
        modules.append(ModuleSpec(layer, strategy, size, tuple(roles), params))
    n = len(backbone.layers)
    return Plan(
        backbone=backbone.name,
        n_layers=n,
        backbone_params=backbone.n_params,
        budget=budget,
        budget_params=int(budget * backbone.n_params),
        modules=tuple(modules),
        groups=(1,) * n,
        options=dict(options or {}),
    )


def random_structure(
    backbone: Backbone,
    budget: float,
    seed: int,
    space: Mapping | None = None,
    sizes: Mapping | None = None,
    options: dict | None = None,
) -> Plan:
    """Random candidates in a seeded random order while they fit ``budget`` (a fraction)."""
    cands = candidate_specs(backbone, space, sizes)
    order = list(range(len(cands)))
    random.Random(seed).shuffle(order)
    chosen = fill(order, [c.params for c in cands], int(budget * backbone.n_params))
    return structure_plan(backbone, [cands[i] for i in chosen], budget, {**(options or {}), "origin": "random"})


def manual_structure(
    backbone: Backbone, kind: str, budget: float, space: Mapping | None = None, options: dict | None = None
) -> Plan | None:
    """``kind`` at every position of ``space`` that offers it, in every layer, sized up to ``budget``
    by the core's sizing rule (uniform share per layer); ``None`` if its smallest form does not fit."""
    space = check_space(space or DEFAULT_SPACE)
    roles = tuple(r for r, ks in space.items() if kind in ks)
    if not roles:
        raise invalid("baseline", kind, sorted({k for ks in space.values() for k in ks}))
    # One adapter per position; the other kinds are one module over all their roles.
    per_layer = [(kind, (r,)) for r in roles] if kind == "adapter" else [(kind, roles)]
    n = len(backbone.layers)
    budget_params = int(budget * backbone.n_params)
    try:
        modules = compile_modules(
            backbone.layers, {li: per_layer for li in range(n)}, {li: budget_params / n for li in range(n)},
            budget_params, f"all-{kind}",
        )
    except DesignSpaceError:
        return None
    return Plan(
        backbone=backbone.name, n_layers=n, backbone_params=backbone.n_params, budget=budget,
        budget_params=budget_params, modules=tuple(modules), groups=(1,) * n,
        options={**(options or {}), "origin": f"all-{kind}"},
    )


def _targets(layer: Layer, spec: ModuleSpec) -> list[nn.Module]:
    return list(distinct_modules(layer, spec.roles).values())


def gated_attach(module: PETModule, layer: Layer, spec: ModuleSpec, gates: Gates, index: int) -> list:
    """Attach ``module`` so that its change to each target's output is scaled by gate ``index``.

    Bracket the module's own hooks: one hook before them records the output, one after returns
    ``before + g * (after - before)``; this gates every strategy alike without touching its code.
    """
    handles, saved = [], {}
    for target in _targets(layer, spec):
        def record(mod, args, output):
            saved[id(mod)] = output[0] if isinstance(output, tuple) else output

        handles.append(target.register_forward_hook(record))
    handles += module.attach(layer)
    for target in _targets(layer, spec):
        def gate(mod, args, output):
            before = saved.pop(id(mod))
            if gates.current is None:
                return output
            g = gates.current[index]
            return add_to_output(output, lambda o: before + g * (o - before))

        handles.append(target.register_forward_hook(gate))
    return handles


def empty_plan(backbone: Backbone) -> Plan:
    n = len(backbone.layers)
    return Plan(backbone.name, n, backbone.n_params, 0.0, 0, (), (1,) * n)


class StructureModel(PETModel):
    """A :class:`PETModel` (frozen backbone, pooling, head) whose PET modules are built here from
    ``specs``, each on its own roles, and optionally gated by ``gates`` (one gate per spec)."""

    def __init__(
        self,
        backbone: Backbone,
        specs: Sequence[ModuleSpec],
        num_labels: int,
        options: dict | None = None,
        gates: Gates | None = None,
    ):
        options = dict(options or {})
        # Built before the head, as train_design builds its plan: same seed, same initial weights.
        built = [registry.get(s.strategy).build(backbone.layers[s.layer], s.size, s.roles, options) for s in specs]
        super().__init__(backbone, empty_plan(backbone), num_labels)
        device = next(backbone.model.parameters()).device
        self.specs = tuple(specs)
        self.structure = nn.ModuleList(built).to(device)
        self._handles: list = []
        for i, (spec, module) in enumerate(zip(specs, built, strict=True)):
            layer = backbone.layers[spec.layer]
            missing = [r for r in spec.roles if r not in layer.roles]
            if missing:
                raise DesignSpaceError(f"layer {spec.layer} of {backbone.name} has no role {missing} for {spec.strategy}")
            self._handles += gated_attach(module, layer, spec, gates, i) if gates is not None else module.attach(layer)
        built_params, planned = self.pet_params(), sum(s.params for s in specs)
        if built_params != planned:  # check what was built, not what was asked
            self.detach()
            raise DesignSpaceError(f"built {built_params:,} PET parameters but the structure counts {planned:,}")

    def pet_params(self) -> int:
        return sum(m.effective_params() for m in self.structure)

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.pet.detach()


def heatmap_data(candidates: Sequence[ModuleSpec], p: Sequence[float], chosen: Iterable[int]) -> dict:
    """Gate probabilities as a (module type x layer) grid: rows ``kind@role``, ``None`` where no candidate."""
    rows = list(dict.fromkeys(f"{c.strategy}@{c.roles[0]}" for c in candidates))
    n_layers = max(c.layer for c in candidates) + 1
    grid = [[None] * n_layers for _ in rows]
    picked = [[False] * n_layers for _ in rows]
    chosen = set(chosen)
    for i, c in enumerate(candidates):
        r = rows.index(f"{c.strategy}@{c.roles[0]}")
        grid[r][c.layer] = float(p[i])
        picked[r][c.layer] = i in chosen
    return {"rows": rows, "layers": list(range(n_layers)), "p": grid, "chosen": picked}


def plot_heatmap(data: dict, path) -> None:
    """Draw :func:`heatmap_data` (chosen cells framed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = np.array([[np.nan if v is None else v for v in row] for row in data["p"]], dtype=float)
    fig, ax = plt.subplots(figsize=(2.8 + 0.5 * len(data["layers"]), 0.9 + 0.32 * len(data["rows"])))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for r, row in enumerate(data["chosen"]):
        for c, on in enumerate(row):
            if on:
                ax.add_patch(plt.Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, ec="red", lw=1.5))
    ax.set_xticks(range(len(data["layers"])), data["layers"])
    ax.set_yticks(range(len(data["rows"])), data["rows"])
    ax.set_xlabel("layer")
    fig.colorbar(im, ax=ax, label="p (gate)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
