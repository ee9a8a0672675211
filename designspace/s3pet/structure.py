"""The S3PET candidate pool and the structures drawn from it (no torch here).

A *candidate* is one strategy on one role of one layer, a single-role
:class:`~designspace.plan.ModuleSpec` whose ``params`` come from the strategy's ``cost``. The
*pool* is every candidate of the space in every layer. A *structure* is a subset of the pool saved
as a :class:`~designspace.plan.Plan`, with the LoRA, BitFit and LNFit candidates of a layer merged
into one module each and one adapter module per role, so the core's ``attach`` builds it and
``run_spec`` retrains it like any other plan.

Besides the searched structure, this module gives everything it is compared with, all under the
same budget: random subsets of the same pool, the budget-matched manual baselines (one strategy at
its conventional positions, sized to the budget) and the two anchors (the head alone, the whole pool).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence

from ..backbones.roles import LINEAR_ROLES, NORM_ROLES
from ..errors import DesignSpaceError, invalid
from ..plan import ModuleSpec, Plan, compile_modules
from ..strategies import registry
from ..strategies.bitfit import distinct_roles

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
#: Where a person puts each method by hand: LoRA on q and v (Hu et al.), an adapter after the FFN
#: (Pfeiffer et al.), every bias (BitFit), both norms (LNFit).
MANUAL_ROLES: dict[str, tuple[str, ...]] = {
    "lora": ("attn_q", "attn_v"),
    "adapter": ("ffn_out",),
    "bitfit": LINEAR_ROLES + NORM_ROLES,
    "lnfit": NORM_ROLES,
}
MANUAL = tuple(MANUAL_ROLES)


def check_space(space: Mapping, field: str = "search.space") -> dict[str, tuple[str, ...]]:
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


def candidate_specs(backbone, space: Mapping | None = None, sizes: Mapping | None = None) -> list[ModuleSpec]:
    """Every candidate of ``space`` in every layer of ``backbone`` (a loaded backbone or its info),
    in layer, then space order."""
    space = check_space(space or DEFAULT_SPACE)
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    out = []
    for li, layer in enumerate(backbone.layers):
        # GPT-2's q, k and v share one fused bias: one BitFit candidate, not three.
        bias_roles = distinct_roles(layer, [r for r, ks in space.items() if "bitfit" in ks and r in layer.roles])
        for role, kinds in space.items():
            if role not in layer.roles:
                continue
            for kind in kinds:
                if kind == "bitfit" and role not in bias_roles:
                    continue
                strategy = registry.get(kind)
                size = int(sizes[kind]) if strategy.sized else 1
                out.append(ModuleSpec(li, kind, size, (role,), strategy.cost(layer, size, (role,))))
    return out


def pool_params(candidates: Sequence[ModuleSpec]) -> int:
    return sum(c.params for c in candidates)


def fill(order: Iterable[int], params: Sequence[int], budget: int) -> list[int]:
    """Walk ``order`` taking each candidate that still fits (a skipped one does not stop the walk)."""
    taken, spent = [], 0
    for i in order:
        if spent + params[i] <= budget:
            taken.append(i)
            spent += params[i]
    return sorted(taken)


def top_fill(p: Sequence[float], params: Sequence[int], budget: int) -> list[int]:
    """The searched structure: candidates by falling gate probability while they fit (S3Delta's
    ``hard_forward_structure``); ties broken by position."""
    return fill(sorted(range(len(p)), key=lambda i: (-p[i], i)), params, budget)


def random_choice(params: Sequence[int], budget: int, seed: int) -> list[int]:
    """A random structure: the pool in a seeded random order, each candidate taken while it fits."""
    order = list(range(len(params)))
    random.Random(seed).shuffle(order)
    return fill(order, params, budget)


def empty_plan(backbone, budget: float, options: dict | None = None) -> Plan:
    n = len(backbone.layers)
    return Plan(backbone.name, n, backbone.n_params, budget, int(budget * backbone.n_params), (), (1,) * n,
                options=dict(options or {}))


def structure_plan(backbone, specs: Sequence[ModuleSpec], budget: float, options: dict | None = None) -> Plan:
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
    return _plan(backbone, modules, budget, options)


def candidates_plan(backbone, candidates: Sequence[ModuleSpec], budget: float, options: dict | None = None) -> Plan:
    """The search-time plan: every candidate its own module, in pool order (one gate each)."""
    return _plan(backbone, list(candidates), budget, options)


def _plan(backbone, modules, budget: float, options: dict | None) -> Plan:
    n = len(backbone.layers)
    return Plan(
        backbone=backbone.name, n_layers=n, backbone_params=backbone.n_params, budget=budget,
        budget_params=int(budget * backbone.n_params), modules=tuple(modules), groups=(1,) * n,
        options=dict(options or {}),
    )


def random_structure(backbone, budget: float, seed: int, space: Mapping | None = None, sizes: Mapping | None = None,
                     options: dict | None = None) -> Plan:
    """Random candidates of the pool in a seeded random order while they fit ``budget`` (a fraction)."""
    cands = candidate_specs(backbone, space, sizes)
    chosen = random_choice([c.params for c in cands], int(budget * backbone.n_params), seed)
    return structure_plan(backbone, [cands[i] for i in chosen], budget, {**(options or {}), "origin": "random"})


def manual_structure(backbone, kind: str, budget: float, options: dict | None = None) -> Plan | None:
    """``kind`` at its conventional positions (:data:`MANUAL_ROLES`), sized to ``budget`` (a fraction);
    ``None`` when its smallest form does not fit.

    A sized kind (LoRA rank, adapter bottleneck) goes in every layer if size 1 fits there, else in
    the top n layers for the largest n that fits; the core's sizing rule then grows the sizes up to
    the budget. A fixed kind (BitFit, LNFit) takes its positions from the top layer down while they
    fit, so a budget below one layer's biases still gets the most of them.
    """
    if kind not in MANUAL_ROLES:
        raise invalid("baselines", kind, ["random", *MANUAL])
    layers = backbone.layers
    budget_params = int(budget * backbone.n_params)
    origin = {**(options or {}), "origin": f"manual {kind}"}
    strategy = registry.get(kind)
    if not strategy.sized:
        cands = candidate_specs(backbone, {r: (kind,) for r in MANUAL_ROLES[kind]})
        order = sorted(range(len(cands)), key=lambda i: (-cands[i].layer, i))
        chosen = fill(order, [c.params for c in cands], budget_params)
        return structure_plan(backbone, [cands[i] for i in chosen], budget, origin) if chosen else None
    n = len(layers)
    for k in range(n, 0, -1):
        top = list(range(n - k, n))
        roles = tuple(r for r in MANUAL_ROLES[kind] if all(r in layers[li].roles for li in top))
        try:
            modules = compile_modules(layers, {li: [(kind, roles)] for li in top},
                                      {li: budget_params / k for li in top}, budget_params, f"manual {kind}")
        except DesignSpaceError:
            continue
        return _plan(backbone, modules, budget, origin)
    return None


def plan_candidates(plan: Plan, candidates: Sequence[ModuleSpec]) -> list[int]:
    """Indices of the pool's candidates that ``plan`` holds (a structure plan of single-size candidates)."""
    index = {(c.layer, c.strategy, c.roles[0]): i for i, c in enumerate(candidates)}
    out = []
    for m in plan.modules:
        for r in m.roles:
            if (m.layer, m.strategy, r) in index:
                out.append(index[m.layer, m.strategy, r])
    return sorted(out)


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


def candidate_label(c: ModuleSpec) -> str:
    return f"L{c.layer} {c.strategy}@{c.roles[0]}"
