"""Apply a :class:`Plan` to a loaded backbone: build its PET modules, route them in, freeze the rest.

Every frozen module that a PET module acts on gets one *route* per hook kind (output, input,
attention): one hook that applies the transforms of every design attached to that module, each to
its own rows of the batch. A single design owns every row; a pack of designs (``pack.py``) gives
each design a block of rows, so K designs train in one pass over the backbone.

Checks what was built, not what was asked: after attaching, the trainable parameters found on the
real model must equal the plan's count, or we raise (a pattern that matched nothing must never be
applied silently).
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from .backbones import Backbone
from .backbones.roles import Layer
from .errors import DesignSpaceError
from .plan import ModuleSpec, Plan
from .strategies import registry

_ROUTES = "_designspace_routes"


def module_seed(seed: int, layer: int, role: str, strategy: str, size: int) -> int:
    """The random seed of one module's initial weights: (seed, layer, role, strategy, size) and nothing
    else, so the same module starts identical in every design that has it (common random numbers)."""
    text = f"{seed}|{layer}|{role}|{strategy}|{size}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def head_seed(seed: int) -> int:
    """The head's initial weights depend on the seed only."""
    return module_seed(seed, -1, "head", "head", 0)


class PETModule(nn.Module):
    """The parameters of one module of a plan (one strategy in one layer); its strategy computes."""

    def __init__(self, spec: ModuleSpec, layer: Layer, options: dict, seed: int):
        super().__init__()
        self.strategy_name, self.layer_index = spec.strategy, spec.layer
        self.size, self.roles, self.options = spec.size, tuple(spec.roles), dict(options)
        self.layer = layer  # a plain view of the backbone's layer, not a submodule
        self.gate = None  # (gates, index): S3PET scales this module's change by a learned gate
        strategy = self.strategy
        for role in self.roles:
            # Only this module's own seed drives its initial values (CPU generator: same on every device).
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(module_seed(seed, spec.layer, role, spec.strategy, spec.size))
                values = strategy.init(layer, spec.size, role, self.roles, self.options)
            for name, value in values.items():
                self._add(name, value)

    def _add(self, name: str, value) -> None:
        if isinstance(value, nn.Module):
            setattr(self, name, value)
            return
        group, _, key = name.partition(".")
        if not key:
            setattr(self, name, nn.Parameter(value))
            return
        if not hasattr(self, group):
            setattr(self, group, nn.ParameterDict())
        getattr(self, group)[key] = nn.Parameter(value)

    @property
    def strategy(self):
        return registry.get(self.strategy_name)

    def effective_params(self) -> int:
        return self.strategy.effective_params(self)

    def fold(self) -> None:
        self.strategy.fold(self)

    def extra_repr(self) -> str:
        return f"{self.strategy_name} layer={self.layer_index} size={self.size} roles={','.join(self.roles)}"


class Rows:
    """Which rows of the batch belong to one design: ``span`` (start, stop), or None for all of them."""

    def __init__(self, span: tuple[int, int] | None = None):
        self.span = span


def _run(pet: PETModule, role: str, x, out):
    new = pet.strategy.transform(pet, role, x, out)
    if pet.gate is None:
        return new
    gates, index = pet.gate
    if gates.current is None:
        return new
    old = x if out is None else out
    return old + gates.current[index] * (new - old)


class Route:
    """Every PET transform of one hook kind on one frozen module, for every attached design."""

    def __init__(self, module: nn.Module, kind: str):
        self.module, self.kind = module, kind
        self.entries: list[tuple[Rows, PETModule, str]] = []
        self.handle = None
        if kind == "output":
            self.handle = module.register_forward_hook(self._output_hook)
        elif kind == "input":
            self.handle = module.register_forward_pre_hook(self._input_hook)
        else:
            from .strategies.prefix import route_attention

            route_attention(module)

    def _output_hook(self, module, args, output):
        x = args[0]
        if isinstance(output, tuple):
            return (self._apply(x, output[0]),) + output[1:]
        return self._apply(x, output)

    def _input_hook(self, module, args):
        return (self._apply(args[0], None),) + tuple(args[1:])

    def _apply(self, x, out):
        entries = self.entries
        if all(rows.span is None for rows, _, _ in entries):
            for _, pet, role in entries:
                if out is None:
                    x = _run(pet, role, x, None)
                else:
                    out = _run(pet, role, x, out)
            return x if out is None else out
        target = x if out is None else out
        n = target.shape[0]
        by_span: dict[tuple[int, int], list] = {}
        for rows, pet, role in entries:
            by_span.setdefault(rows.span if rows.span is not None else (0, n), []).append((pet, role))
        # One split into pieces (each design's rows, and the gaps between): its backward is a single cat,
        # where slicing each design's rows out would zero-fill a full-size gradient per design.
        cuts, owners, pos = [], [], 0
        for (start, stop), group in sorted(by_span.items()):
            if start > pos:
                cuts.append(start - pos)
                owners.append(None)
            cuts.append(stop - start)
            owners.append(group)
            pos = stop
        if pos < n:
            cuts.append(n - pos)
            owners.append(None)
        pieces = list(torch.split(target, cuts))
        xs = pieces if out is None else list(torch.split(x, cuts))
        for i, group in enumerate(owners):
            for pet, role in group or ():
                pieces[i] = _run(pet, role, pieces[i], None) if out is None else _run(pet, role, xs[i], pieces[i])
        return torch.cat(pieces)

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()


def _route(module: nn.Module, kind: str) -> Route:
    routes = module.__dict__.setdefault(_ROUTES, {})
    if kind not in routes:
        routes[kind] = Route(module, kind)
    return routes[kind]


def routed_entries(module: nn.Module, kind: str) -> list[tuple[slice | None, PETModule]]:
    """(rows, PET module) of every design attached to ``module`` through ``kind`` (the attention function)."""
    route = module.__dict__.get(_ROUTES, {}).get(kind)
    if route is None:
        return []
    return [(None if rows.span is None else slice(*rows.span), pet) for rows, pet, _ in route.entries]


def module_key(layer: int, strategy: str, roles: tuple[str, ...] | None = None) -> str:
    """``L<layer>_<strategy>``, or ``L<layer>_<strategy>__<role+role>`` when ``roles`` are given and
    are not the strategy's default roles."""
    if roles is None or tuple(roles) == tuple(registry.get(strategy).default_roles):
        return f"L{layer}_{strategy}"
    return f"L{layer}_{strategy}__{'+'.join(roles)}"


def module_keys(plan: Plan) -> list[str]:
    """The key of each of ``plan``'s modules: ``L<layer>_<strategy>`` when the layer has one module of
    that strategy, else :func:`module_key` with the module's roles (LoRA on attn_q and LoRA on attn_k
    as two modules of one layer)."""
    count: dict[tuple[int, str], int] = {}
    for m in plan.modules:
        count[m.layer, m.strategy] = count.get((m.layer, m.strategy), 0) + 1
    keys = [module_key(m.layer, m.strategy, m.roles if count[m.layer, m.strategy] > 1 else None) for m in plan.modules]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise DesignSpaceError(f"the plan has two modules keyed {dup}: same layer, strategy and roles")
    return keys


class Attached(nn.Module):
    """The PET modules of one plan on one backbone, keyed by :func:`module_keys`, routed in."""

    def __init__(self, backbone: Backbone, plan: Plan, seed: int = 0, rows: Rows | None = None):
        super().__init__()
        if plan.n_layers != len(backbone.layers):
            raise DesignSpaceError(
                f"plan for {plan.backbone} has {plan.n_layers} layers but backbone {backbone.name} has "
                f"{len(backbone.layers)}; recompile the design for this backbone"
            )
        self.plan = plan
        self.rows = rows or Rows()
        self.pets = nn.ModuleDict()
        self._routes: list[Route] = []
        device = next(backbone.model.parameters()).device
        for key, m in zip(module_keys(plan), plan.modules, strict=True):
            layer = backbone.layers[m.layer]
            registry.get(m.strategy).check_roles(layer, m.roles, f"plan on {backbone.name}")
            self.pets[key] = PETModule(m, layer, plan.options, seed).to(device)
        for pet in self.pets.values():
            for role in pet.roles:
                kind = pet.strategy.hook(role)
                target = pet.layer.roles["attn" if kind == "attention" else role].module
                route = _route(target, kind)
                route.entries.append((self.rows, pet, role))
                self._routes.append(route)

    def detach(self) -> None:
        """Take this design's transforms out of every route; a route left empty removes its hook."""
        for route in self._routes:
            route.entries = [e for e in route.entries if e[0] is not self.rows]
            if not route.entries:
                route.remove()
                route.module.__dict__.get(_ROUTES, {}).pop(route.kind, None)
        self._routes = []

    def effective_params(self) -> int:
        return sum(p.effective_params() for p in self.pets.values())


def attach(backbone: Backbone, plan: Plan, seed: int = 0, rows: Rows | None = None) -> Attached:
    """Freeze ``backbone``, attach ``plan``'s modules; the trainable count must match the plan."""
    for p in backbone.model.parameters():
        p.requires_grad_(False)
    attached = Attached(backbone, plan, seed, rows)
    built = attached.effective_params()
    trainable_backbone = sum(p.numel() for p in backbone.model.parameters() if p.requires_grad)
    if built != plan.params or trainable_backbone:
        attached.detach()
        raise DesignSpaceError(
            f"attached {built:,} PET parameters (+{trainable_backbone:,} backbone) but the plan counts "
            f"{plan.params:,}; the plan does not fit {backbone.name}"
        )
    return attached


def is_clean(backbone: Backbone) -> bool:
    """No route, hook or trainable weight left on the backbone (a failed trial may leave some)."""
    for m in backbone.model.modules():
        if m._forward_hooks or m._forward_pre_hooks or m.__dict__.get(_ROUTES):
            return False
    return not any(p.requires_grad for p in backbone.model.parameters())
