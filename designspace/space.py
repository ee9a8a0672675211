"""Design spaces (Chen et al., ICLR 2023) and the designs sampled from them.

A :class:`DesignSpace` holds the allowed choices of four components: layer grouping, parameter
allocation, tunable groups and per-group strategy sets. A :class:`Design` is one choice of each.
Both are frozen, validated in ``__post_init__`` and round-trip through dict / JSON / YAML.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from .errors import DesignSpaceError, invalid

#: Weight vectors of the grouping patterns for G = 4; other G interpolate the same shapes.
GROUPING_PATTERNS = ("increasing", "uniform", "decreasing", "spindle", "bottleneck")
ALLOCATION_PATTERNS = ("increasing", "uniform", "decreasing")
STRATEGIES = ("adapter", "prefix", "bitfit", "lora")
SHORT = {"adapter": "A", "prefix": "P", "bitfit": "B", "lora": "L", "lnfit": "N"}
DEFAULT_BUDGET = 0.005


def pattern_weights(pattern: str, n_groups: int) -> list[float]:
    """Relative group sizes. For G = 4: (1,2,3,4), (1,1,1,1), (4,3,2,1), (1,2,2,1), (2,1,1,2)."""
    g = n_groups
    if pattern == "increasing":
        return [i + 1.0 for i in range(g)]
    if pattern == "decreasing":
        return [float(g - i) for i in range(g)]
    if pattern == "uniform":
        return [1.0] * g
    if pattern in ("spindle", "bottleneck"):
        # Middle groups twice the edge groups (spindle), or the reverse (bottleneck).
        edge, middle = (1.0, 2.0) if pattern == "spindle" else (2.0, 1.0)
        if g <= 2:
            return [1.0] * g
        return [edge] + [middle] * (g - 2) + [edge]
    raise invalid("grouping", pattern, GROUPING_PATTERNS)


def apportion(total: int, weights: list[float], minimum: int = 0) -> list[int]:
    """Largest-remainder apportionment of ``total`` items by ``weights``; each share >= ``minimum``.

    The whole total is apportioned first (30 layers, increasing: 3/6/9/12, the pattern's own shape);
    a share below ``minimum`` is then topped up from the largest shares.
    """
    n = len(weights)
    if total < minimum * n:
        raise DesignSpaceError(f"cannot split {total} items into {n} parts of at least {minimum}")
    s = sum(weights)
    quotas = [total * w / s for w in weights]
    shares = [int(q) for q in quotas]
    # Ties broken by position so that the result is deterministic.
    order = sorted(range(n), key=lambda i: (-(quotas[i] - shares[i]), i))
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    for i in range(n):
        while shares[i] < minimum:
            donor = max(range(n), key=lambda j: (shares[j] - minimum, quotas[j]))
            shares[donor] -= 1
            shares[i] += 1
    return shares


def group_sizes(n_layers: int, pattern: str, n_groups: int = 4) -> list[int]:
    """Number of consecutive layers per group; every group gets at least one layer.

    >>> group_sizes(24, "spindle")
    [4, 8, 8, 4]
    """
    if n_layers < n_groups:
        raise DesignSpaceError(
            f"n_layers={n_layers} is fewer than n_groups={n_groups}; use a design space with n_groups <= {n_layers}"
        )
    return apportion(n_layers, pattern_weights(pattern, n_groups), minimum=1)


def layer_groups(n_layers: int, pattern: str, n_groups: int = 4) -> list[int]:
    """The group (1-based) of every layer, layers numbered encoder first, then decoder."""
    out: list[int] = []
    for g, size in enumerate(group_sizes(n_layers, pattern, n_groups), start=1):
        out += [g] * size
    return out


def _norm_strategy_set(value, field_name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.replace("+", ",").split(",") if v.strip()]
    try:
        items = [str(v).lower() for v in value]
    except TypeError:
        raise invalid(field_name, value, "a list of strategies from " + ", ".join(STRATEGIES)) from None
    from .strategies import registry  # late: the registry may gain strategies (e.g. lnfit)

    known = tuple(registry.names())
    for s in items:
        if s not in known:
            raise invalid(field_name, s, known)
    if not items:
        raise invalid(field_name, list(value), "a non-empty subset of " + ", ".join(known))
    return tuple(sorted(set(items)))


def _group_numbers(value, field_name: str, n_groups: int) -> tuple[int, ...]:
    """A sorted tuple of group numbers; a scalar or non-numbers (``tuned_groups: 3`` in YAML) is an error."""
    try:
        return tuple(sorted(set(int(g) for g in value)))
    except (TypeError, ValueError):
        raise invalid(field_name, value, f"a list of group numbers in 1..{n_groups}") from None


def _n_groups_of(d: dict, source) -> int:
    try:
        return int(d.get("n_groups", 4))
    except (TypeError, ValueError):
        raise invalid("n_groups", d.get("n_groups"), "an integer >= 1", source) from None


def _check_budget(budget, source=None) -> float:
    try:
        b = float(budget)
    except (TypeError, ValueError):
        raise invalid("budget", budget, "a fraction 0 < budget < 1 (0.005 = 0.5 %)", source) from None
    if not 0.0 < b < 1.0:
        raise invalid("budget", budget, "a fraction 0 < budget < 1 (0.005 = 0.5 %)", source)
    return b


@dataclass(frozen=True)
class Design:
    """One point of a design space: what a person chooses.

    ``strategies[g-1]`` is the strategy set of group ``g``; groups not in ``tuned_groups`` get no
    modules whatever their set says (the set is kept so the design stays readable).
    """

    grouping: str = "spindle"
    allocation: str = "uniform"
    tuned_groups: tuple[int, ...] = (1, 2, 3, 4)
    strategies: tuple[tuple[str, ...], ...] = (("lora",),) * 4
    n_groups: int = 4
    budget: float = DEFAULT_BUDGET

    def __post_init__(self):
        if not isinstance(self.n_groups, int) or self.n_groups < 1:
            raise invalid("n_groups", self.n_groups, "an integer >= 1")
        if self.grouping not in GROUPING_PATTERNS:
            raise invalid("grouping", self.grouping, GROUPING_PATTERNS)
        if self.allocation not in ALLOCATION_PATTERNS:
            raise invalid("allocation", self.allocation, ALLOCATION_PATTERNS)
        tg = _group_numbers(self.tuned_groups, "tuned_groups", self.n_groups)
        if not tg or any(g < 1 or g > self.n_groups for g in tg):
            raise invalid("tuned_groups", list(self.tuned_groups), f"a non-empty subset of 1..{self.n_groups}")
        strategies = self.strategies
        if isinstance(strategies, dict):
            strategies = [strategies.get(g, strategies.get(f"G{g}")) for g in range(1, self.n_groups + 1)]
        strategies = list(strategies)
        if len(strategies) != self.n_groups:
            raise invalid("strategies", strategies, f"one strategy set per group ({self.n_groups} sets)")
        sets = tuple(_norm_strategy_set(s, f"strategies.G{i + 1}") for i, s in enumerate(strategies))
        object.__setattr__(self, "tuned_groups", tg)
        object.__setattr__(self, "strategies", sets)
        object.__setattr__(self, "budget", _check_budget(self.budget))

    # --- identity and serialisation -------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "grouping": self.grouping,
            "allocation": self.allocation,
            "tuned_groups": list(self.tuned_groups),
            "strategies": {f"G{i + 1}": list(s) for i, s in enumerate(self.strategies)},
            "n_groups": self.n_groups,
            "budget": self.budget,
        }

    @classmethod
    def from_dict(cls, d: dict, source: str | None = None) -> Design:
        if not isinstance(d, dict):
            raise invalid("design", type(d).__name__, "a mapping with grouping, allocation, tuned_groups, strategies", source)
        allowed = {"grouping", "allocation", "tuned_groups", "strategies", "n_groups", "budget", "id", "kind"}
        for k in d:
            if k not in allowed:
                raise invalid(f"design.{k}", d[k], "fields " + ", ".join(sorted(allowed - {"id", "kind"})), source)
        kw = {k: v for k, v in d.items() if k not in ("id", "kind")}
        n_groups = _n_groups_of(kw, source)
        st = kw.get("strategies")
        if isinstance(st, dict):
            keys = {f"G{g}" for g in range(1, n_groups + 1)}
            for k in st:
                if str(k) not in keys and not (str(k).isdigit() and 1 <= int(k) <= n_groups):
                    raise invalid("strategies", k, sorted(keys), source)
            kw["strategies"] = tuple(st.get(f"G{g}", st.get(g, st.get(str(g)))) for g in range(1, n_groups + 1))
            if any(s is None for s in kw["strategies"]):
                missing = [f"G{g}" for g, s in enumerate(kw["strategies"], 1) if s is None]
                raise invalid("strategies", missing, "a strategy set for every group", source)
        try:
            return cls(**kw)
        except DesignSpaceError as e:
            raise DesignSpaceError(f"{source}: {e}" if source else str(e)) from None

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def id(self) -> str:
        """Stable id: a hash of the canonical form (same design, same id, on every machine)."""
        return hashlib.sha1(self.canonical_json().encode()).hexdigest()[:12]

    def describe(self) -> str:
        groups = " ".join(
            f"G{g}={{{','.join(SHORT.get(s, s) for s in self.strategies[g - 1])}}}" for g in self.tuned_groups
        )
        return f"{self.grouping}/{self.allocation} {groups} @{self.budget:.3%}"

    def choice(self, component: str):
        """This design's choice of ``component`` (``grouping`` ... ``strategies.G3``)."""
        return _component(self, component, plural=False)

    def with_budget(self, budget: float) -> Design:
        return replace(self, budget=budget)


_COMPONENT_FIELDS = {"grouping": "groupings", "allocation": "allocations", "tuned_groups": "tuned_groups"}


def _group_of(component: str, n_groups: int) -> int:
    if component.startswith("strategies.G"):
        g = component[len("strategies.G"):]
        if g.isdigit() and 1 <= int(g) <= n_groups:
            return int(g)
    allowed = list(_COMPONENT_FIELDS) + [f"strategies.G{g}" for g in range(1, n_groups + 1)]
    raise invalid("component", component, allowed)


def _component(obj, component: str, plural: bool):
    """A design's choice (or a space's choices) of ``component``: the same lookup for both."""
    if component in _COMPONENT_FIELDS:
        return getattr(obj, _COMPONENT_FIELDS[component] if plural else component)
    return obj.strategies[_group_of(component, obj.n_groups) - 1]


def _all_subsets(items, min_size=1) -> tuple[tuple, ...]:
    return tuple(
        tuple(c) for r in range(min_size, len(items) + 1) for c in itertools.combinations(items, r)
    )


#: Components in the paper's refinement order; strategies are refined one group at a time.
COMPONENTS = ("grouping", "allocation", "tuned_groups", "strategies")


@dataclass(frozen=True)
class DesignSpace:
    """The allowed choices of each component. ``restrict`` narrows one component to one choice."""

    n_groups: int = 4
    groupings: tuple[str, ...] = GROUPING_PATTERNS
    allocations: tuple[str, ...] = ALLOCATION_PATTERNS
    tuned_groups: tuple[tuple[int, ...], ...] | None = None
    strategies: tuple[tuple[tuple[str, ...], ...], ...] | None = None
    budget: float = DEFAULT_BUDGET
    strategy_pool: tuple[str, ...] = STRATEGIES

    def __post_init__(self):
        if not isinstance(self.n_groups, int) or self.n_groups < 1:
            raise invalid("n_groups", self.n_groups, "an integer >= 1")
        for name, allowed in (("groupings", GROUPING_PATTERNS), ("allocations", ALLOCATION_PATTERNS)):
            vals = tuple(getattr(self, name))
            if not vals:
                raise invalid(name, [], "a non-empty list from " + ", ".join(allowed))
            for v in vals:
                if v not in allowed:
                    raise invalid(name, v, allowed)
            object.__setattr__(self, name, vals)
        pool = tuple(_norm_strategy_set(self.strategy_pool, "strategy_pool"))
        object.__setattr__(self, "strategy_pool", pool)
        groups = tuple(range(1, self.n_groups + 1))
        tg = self.tuned_groups if self.tuned_groups is not None else _all_subsets(groups)
        if isinstance(tg, (int, str)):
            raise invalid("tuned_groups", tg, f"a list of subsets of 1..{self.n_groups}")
        tg = tuple(_group_numbers(s, "tuned_groups", self.n_groups) for s in tg)
        if not tg or any(not s or s[0] < 1 or s[-1] > self.n_groups for s in tg):
            raise invalid("tuned_groups", [list(s) for s in tg], f"non-empty subsets of 1..{self.n_groups}")
        object.__setattr__(self, "tuned_groups", tg)
        st = self.strategies
        if st is None:
            st = (_all_subsets(pool),) * self.n_groups
        if len(st) != self.n_groups:
            raise invalid("strategies", len(st), f"one list of allowed sets per group ({self.n_groups})")
        st = tuple(
            tuple(_norm_strategy_set(s, f"strategies.G{g}") for s in sets) for g, sets in enumerate(st, 1)
        )
        for g, sets in enumerate(st, 1):
            if not sets:
                raise invalid(f"strategies.G{g}", [], "at least one strategy set")
        object.__setattr__(self, "strategies", st)
        object.__setattr__(self, "budget", _check_budget(self.budget))

    # --- components ---------------------------------------------------------------------
    def components(self) -> list[str]:
        """Names of the refinable components: grouping, allocation, tuned_groups, strategies.G1..."""
        return ["grouping", "allocation", "tuned_groups"] + [f"strategies.G{g}" for g in range(1, self.n_groups + 1)]

    def choices(self, component: str) -> tuple:
        return _component(self, component, plural=True)

    def _group_of(self, component: str) -> int:
        return _group_of(component, self.n_groups)

    def restrict(self, component: str, choice) -> DesignSpace:
        """The narrower space in which ``component`` is fixed to ``choice`` (or a list of choices)."""
        many = isinstance(choice, list) and choice and not isinstance(choice[0], (int, str))
        chosen = list(choice) if many else [choice]
        if component == "grouping":
            return replace(self, groupings=tuple(self._member(component, c) for c in chosen))
        if component == "allocation":
            return replace(self, allocations=tuple(self._member(component, c) for c in chosen))
        if component == "tuned_groups":
            return replace(self, tuned_groups=tuple(self._member(component, tuple(sorted(c))) for c in chosen))
        g = self._group_of(component)
        sets = tuple(self._member(component, _norm_strategy_set(c, component)) for c in chosen)
        st = list(self.strategies)
        st[g - 1] = sets
        return replace(self, strategies=tuple(st))

    def _member(self, component, choice):
        allowed = self.choices(component)
        if choice not in allowed:
            raise invalid(component, choice, [_fmt_choice(c) for c in allowed][:20])
        return choice

    def size(self) -> int:
        n = len(self.groupings) * len(self.allocations) * len(self.tuned_groups)
        for sets in self.strategies:
            n *= len(sets)
        return n

    # --- sampling -------------------------------------------------------------------------
    def _draw(self, rng: random.Random, fixed: dict | None = None) -> Design:
        fixed = fixed or {}

        def pick(component):
            return fixed[component] if component in fixed else rng.choice(self.choices(component))

        return Design(
            grouping=pick("grouping"),
            allocation=pick("allocation"),
            tuned_groups=pick("tuned_groups"),
            strategies=tuple(pick(f"strategies.G{g}") for g in range(1, self.n_groups + 1)),
            n_groups=self.n_groups,
            budget=self.budget,
        )

    def sample(self, n: int, seed: int = 0, unique: bool = True) -> list[Design]:
        """``n`` designs drawn uniformly (each component independently) from the space."""
        rng = random.Random(seed)
        out: list[Design] = []
        seen: set[str] = set()
        limit = min(n, self.size()) if unique else n
        tries = 0
        while len(out) < limit and tries < 100 * n + 100:
            tries += 1
            d = self._draw(rng)
            if unique and d.id in seen:
                continue
            seen.add(d.id)
            out.append(d)
        return out

    def sample_balanced(self, component: str, n: int, seed: int = 0) -> list[Design]:
        """``n`` designs in which every choice of ``component`` appears equally often (round robin)."""
        choices = self.choices(component)
        rng = random.Random(seed)
        out, seen, tries = [], set(), 0
        while len(out) < n and tries < 100 * n + 100:
            choice = choices[len(out) % len(choices)]
            tries += 1
            d = self._draw(rng, {component: choice})
            if d.id in seen and tries < 50 * n:
                continue
            seen.add(d.id)
            out.append(d)
        return out

    def contains(self, design: Design) -> bool:
        return (
            design.n_groups == self.n_groups
            and design.grouping in self.groupings
            and design.allocation in self.allocations
            and design.tuned_groups in self.tuned_groups
            and all(s in sets for s, sets in zip(design.strategies, self.strategies, strict=True))
        )

    def is_single(self) -> bool:
        return self.size() == 1

    def only_design(self) -> Design:
        if not self.is_single():
            raise DesignSpaceError(f"the space still holds {self.size()} designs; refine every component first")
        return self._draw(random.Random(0))

    # --- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "n_groups": self.n_groups,
            "groupings": list(self.groupings),
            "allocations": list(self.allocations),
            "tuned_groups": [list(s) for s in self.tuned_groups],
            "strategies": {f"G{g}": [list(s) for s in sets] for g, sets in enumerate(self.strategies, 1)},
            "budget": self.budget,
            "strategy_pool": list(self.strategy_pool),
        }

    @classmethod
    def from_dict(cls, d: dict, source: str | None = None) -> DesignSpace:
        if not isinstance(d, dict):
            raise invalid("space", type(d).__name__, "a mapping", source)
        allowed = {"n_groups", "groupings", "allocations", "tuned_groups", "strategies", "budget", "strategy_pool"}
        for k in d:
            if k not in allowed:
                raise invalid(f"space.{k}", d[k], "fields " + ", ".join(sorted(allowed)), source)
        kw = dict(d)
        n_groups = _n_groups_of(kw, source)
        if isinstance(kw.get("strategies"), dict):
            st = kw["strategies"]
            kw["strategies"] = tuple(tuple(st.get(f"G{g}") or ()) for g in range(1, n_groups + 1))
        for k in ("groupings", "allocations"):
            if k in kw:
                kw[k] = tuple([kw[k]] if isinstance(kw[k], str) else kw[k])
        if "strategy_pool" in kw:
            kw["strategy_pool"] = tuple(kw["strategy_pool"])
        try:
            return cls(**kw)
        except DesignSpaceError as e:
            raise DesignSpaceError(f"{source}: {e}" if source else str(e)) from None


def _fmt_choice(c) -> str:
    if isinstance(c, tuple):
        return "{" + ",".join(map(str, c)) + "}"
    return str(c)


# --- files ------------------------------------------------------------------------------
def load_yaml(path: str | Path) -> dict:
    """Read a YAML or JSON file into a dict, with a one-line error naming the file on any problem."""
    p = Path(path)
    if not p.is_file():
        raise DesignSpaceError(f"{p}: file not found; pass the path of an existing YAML or JSON file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "malformed YAML"
        raise DesignSpaceError(f"{p}:{where}: {problem}; fix the YAML syntax there") from None
    if not isinstance(data, dict):
        raise DesignSpaceError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def save_yaml(obj, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    data = obj.to_dict() if hasattr(obj, "to_dict") else obj
    if p.suffix == ".json":
        p.write_text(json.dumps(data, indent=2) + "\n")
    else:
        p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def load_design(path_or_name: str | Path) -> Design:
    """A design from a YAML/JSON file (a bare design, or a file with a ``design:`` key) or a preset name."""
    if isinstance(path_or_name, str) and path_or_name in PRESETS:
        return PRESETS[path_or_name]()
    p = Path(path_or_name)
    if not p.exists():
        raise DesignSpaceError(
            f"{p}: no such design file or preset; presets: {', '.join(PRESETS)}"
        )
    data = load_yaml(p)
    if "design" in data and isinstance(data["design"], dict):
        data = data["design"]
    return Design.from_dict(data, source=str(p))


# --- presets ----------------------------------------------------------------------------
def s4_design(budget: float = DEFAULT_BUDGET) -> Design:
    """The paper's S4 design: spindle grouping, uniform allocation, all groups tuned."""
    return Design(
        grouping="spindle",
        allocation="uniform",
        tuned_groups=(1, 2, 3, 4),
        strategies=(("adapter", "lora"), ("adapter", "prefix"), ("adapter", "bitfit", "prefix"), ("bitfit", "lora", "prefix")),
        budget=budget,
    )


def single_strategy(strategy: str, budget: float = DEFAULT_BUDGET) -> Design:
    """A baseline that uses one strategy in every layer (uniform grouping and allocation)."""
    return Design(grouping="uniform", allocation="uniform", strategies=((strategy,),) * 4, budget=budget)


PRESETS = {
    "s4": s4_design,
    "all-lora": lambda budget=DEFAULT_BUDGET: single_strategy("lora", budget),
    "all-adapter": lambda budget=DEFAULT_BUDGET: single_strategy("adapter", budget),
    "all-prefix": lambda budget=DEFAULT_BUDGET: single_strategy("prefix", budget),
    "all-bitfit": lambda budget=DEFAULT_BUDGET: single_strategy("bitfit", budget),
}

__all__ = [
    "Design",
    "DesignSpace",
    "group_sizes",
    "layer_groups",
    "apportion",
    "load_design",
    "PRESETS",
    "s4_design",
    "single_strategy",
]
