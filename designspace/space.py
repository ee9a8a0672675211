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

from .errors import DesignSpaceError, check_keys, invalid, with_source
from .patterns import ALLOCATION_PATTERNS, GROUPING_PATTERNS, apportion, group_sizes, layer_groups
from .strategies import registry

#: The paper's four strategies: the default pool of a design space.
STRATEGIES = ("adapter", "prefix", "bitfit", "lora")


def _norm_strategy_set(value, field_name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.replace("+", ",").split(",") if v.strip()]
    try:
        items = [str(v).lower() for v in value]
    except TypeError:
        raise invalid(field_name, value, "a list of strategies from " + ", ".join(registry.names())) from None
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
    n = d.get("n_groups", 4)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise invalid("n_groups", n, "an integer >= 1", source)
    return n


def _per_group(st, n_groups: int, field: str, source) -> dict[int, object]:
    """``{G1: ..., G2: ...}`` (or 1, 2, ...) as {1: ..., 2: ...}; a group outside 1..n is an error."""
    if not isinstance(st, dict):
        raise invalid(field, st, f"a mapping G1..G{n_groups} -> strategy sets", source)
    out = {}
    for k, v in st.items():
        key = str(k)
        g = int(key[1:]) if key[:1] in "Gg" and key[1:].isdigit() else int(key) if key.isdigit() else None
        if g is None or not 1 <= g <= n_groups:
            raise invalid(f"{field}.{k}", v, f"groups G1..G{n_groups} (n_groups={n_groups})", source)
        out[g] = v
    return out


_BUDGET_MOVED = ("the budget is not part of a design: give it to compile_plan(), --budget, or the experiment's "
                 "budget: field")


@dataclass(frozen=True)
class Design:
    """One point of a design space: what a person chooses.

    ``strategies[g-1]`` is the strategy set of group ``g``; groups not in ``tuned_groups`` get no
    modules whatever their set says (the set is kept so the design stays readable). The budget is
    not part of a design: one design compiles to a plan for each (backbone, budget).
    """

    grouping: str = "spindle"
    allocation: str = "uniform"
    tuned_groups: tuple[int, ...] = (1, 2, 3, 4)
    strategies: tuple[tuple[str, ...], ...] = (("lora",),) * 4
    n_groups: int = 4

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
        strategies = list(self.strategies)
        if len(strategies) != self.n_groups:
            raise invalid("strategies", strategies, f"one strategy set per group ({self.n_groups} sets)")
        sets = tuple(_norm_strategy_set(s, f"strategies.G{i + 1}") for i, s in enumerate(strategies))
        object.__setattr__(self, "tuned_groups", tg)
        object.__setattr__(self, "strategies", sets)

    # --- identity and serialisation -------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "grouping": self.grouping,
            "allocation": self.allocation,
            "tuned_groups": list(self.tuned_groups),
            "strategies": {f"G{i + 1}": list(s) for i, s in enumerate(self.strategies)},
            "n_groups": self.n_groups,
        }

    @classmethod
    def from_dict(cls, d: dict, source: str | None = None) -> Design:
        if isinstance(d, dict) and "budget" in d:
            raise DesignSpaceError(f"{source + ': ' if source else ''}design.budget={d['budget']!r}: {_BUDGET_MOVED}")
        check_keys(d, ("grouping", "allocation", "tuned_groups", "strategies", "n_groups", "id", "kind"),
                   "design.", source)
        kw = {k: v for k, v in d.items() if k not in ("id", "kind")}
        n_groups = _n_groups_of(kw, source)
        if isinstance(kw.get("strategies"), dict):
            st = _per_group(kw["strategies"], n_groups, "strategies", source)
            missing = [f"G{g}" for g in range(1, n_groups + 1) if g not in st]
            if missing:
                raise invalid("strategies", missing, "a strategy set for every group", source)
            kw["strategies"] = tuple(st[g] for g in range(1, n_groups + 1))
        try:
            return cls(**kw)
        except DesignSpaceError as e:
            raise with_source(e, source) from None

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def id(self) -> str:
        """Stable id: a hash of the canonical form (same design, same id, on every machine)."""
        return hashlib.sha1(self.canonical_json().encode()).hexdigest()[:12]

    def describe(self) -> str:
        return f"{self.grouping}/{self.allocation} " + " ".join(
            f"G{g}={strategy_set_label(self.strategies[g - 1])}" for g in self.tuned_groups
        )

    def choice(self, component: str):
        """This design's choice of ``component`` (``grouping`` ... ``strategies.G3``)."""
        return _component(self, component, plural=False)

    def with_choice(self, component: str, choice) -> Design:
        """The same design with ``component`` set to ``choice`` (a paired stage's block member)."""
        if component in _COMPONENT_FIELDS:
            return replace(self, **{component: choice})
        st = list(self.strategies)
        st[_group_of(component, self.n_groups) - 1] = choice
        return replace(self, strategies=tuple(st))


def strategy_set_label(strategies) -> str:
    """('adapter', 'lora') -> '{A,L}': the letters every strategy declares."""
    return "{" + ",".join(registry.label(s) for s in strategies) + "}"


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


def format_choice(c) -> str:
    """A choice as reports print it: '{1,2}', '{adapter,lora}', 'spindle'."""
    if isinstance(c, tuple):
        return "{" + ",".join(map(str, c)) + "}"
    return str(c)


@dataclass(frozen=True)
class DesignSpace:
    """The allowed choices of each component. ``restrict`` narrows one component to some choices."""

    n_groups: int = 4
    groupings: tuple[str, ...] = GROUPING_PATTERNS
    allocations: tuple[str, ...] = ALLOCATION_PATTERNS
    tuned_groups: tuple[tuple[int, ...], ...] | None = None
    strategies: tuple[tuple[tuple[str, ...], ...], ...] | None = None
    strategy_pool: tuple[str, ...] = STRATEGIES

    def __post_init__(self):
        if not isinstance(self.n_groups, int) or self.n_groups < 1:
            raise invalid("n_groups", self.n_groups, "an integer >= 1")
        for name, allowed in (("groupings", GROUPING_PATTERNS), ("allocations", ALLOCATION_PATTERNS)):
            vals = tuple(dict.fromkeys(getattr(self, name)))
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
        tg = tuple(dict.fromkeys(_group_numbers(s, "tuned_groups", self.n_groups) for s in tg))
        if not tg or any(not s or s[0] < 1 or s[-1] > self.n_groups for s in tg):
            raise invalid("tuned_groups", [list(s) for s in tg], f"non-empty subsets of 1..{self.n_groups}")
        object.__setattr__(self, "tuned_groups", tg)
        st = self.strategies
        if st is None:
            st = (_all_subsets(pool),) * self.n_groups
        if len(st) != self.n_groups:
            raise invalid("strategies", len(st), f"one list of allowed sets per group ({self.n_groups})")
        st = tuple(
            tuple(dict.fromkeys(_norm_strategy_set(s, f"strategies.G{g}") for s in sets))
            for g, sets in enumerate(st, 1)
        )
        for g, sets in enumerate(st, 1):
            if not sets:
                raise invalid(f"strategies.G{g}", [], "at least one strategy set")
        object.__setattr__(self, "strategies", st)

    # --- components ---------------------------------------------------------------------
    def components(self) -> list[str]:
        """Names of the refinable components: grouping, allocation, tuned_groups, strategies.G1..."""
        return ["grouping", "allocation", "tuned_groups"] + [f"strategies.G{g}" for g in range(1, self.n_groups + 1)]

    def choices(self, component: str) -> tuple:
        return _component(self, component, plural=True)

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
        g = _group_of(component, self.n_groups)
        sets = tuple(self._member(component, _norm_strategy_set(c, component)) for c in chosen)
        st = list(self.strategies)
        st[g - 1] = sets
        return replace(self, strategies=tuple(st))

    def restrict_many(self, component: str, choices: list) -> DesignSpace:
        """The narrower space in which ``component`` keeps exactly ``choices`` (a list of choices)."""
        if len(choices) == 1:
            return self.restrict(component, choices[0])
        if component in ("grouping", "allocation"):
            field = _COMPONENT_FIELDS[component]
            return replace(self, **{field: tuple(self._member(component, c) for c in choices)})
        return self.restrict(component, [tuple(c) for c in choices])

    def _member(self, component, choice):
        allowed = self.choices(component)
        if choice not in allowed:
            raise invalid(component, choice, [format_choice(c) for c in allowed][:20])
        return choice

    def size(self) -> int:
        n = len(self.groupings) * len(self.allocations) * len(self.tuned_groups)
        for sets in self.strategies:
            n *= len(sets)
        return n

    # --- sampling -------------------------------------------------------------------------
    def draw(self, rng: random.Random, fixed: dict | None = None) -> Design:
        """One design, each component drawn uniformly from its choices unless ``fixed``."""
        fixed = fixed or {}

        def pick(component):
            return fixed[component] if component in fixed else rng.choice(self.choices(component))

        return Design(
            grouping=pick("grouping"),
            allocation=pick("allocation"),
            tuned_groups=pick("tuned_groups"),
            strategies=tuple(pick(f"strategies.G{g}") for g in range(1, self.n_groups + 1)),
            n_groups=self.n_groups,
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
            d = self.draw(rng)
            if unique and d.id in seen:
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
        return self.draw(random.Random(0))

    # --- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "n_groups": self.n_groups,
            "groupings": list(self.groupings),
            "allocations": list(self.allocations),
            "tuned_groups": [list(s) for s in self.tuned_groups],
            "strategies": {f"G{g}": [list(s) for s in sets] for g, sets in enumerate(self.strategies, 1)},
            "strategy_pool": list(self.strategy_pool),
        }

    @classmethod
    def from_dict(cls, d: dict, source: str | None = None) -> DesignSpace:
        if isinstance(d, dict) and "budget" in d:
            raise DesignSpaceError(f"{source + ': ' if source else ''}space.budget={d['budget']!r}: {_BUDGET_MOVED}")
        check_keys(d, ("n_groups", "groupings", "allocations", "tuned_groups", "strategies", "strategy_pool"),
                   "space.", source)
        kw = dict(d)
        n_groups = _n_groups_of(kw, source)
        if "strategy_pool" in kw:
            kw["strategy_pool"] = tuple([kw["strategy_pool"]] if isinstance(kw["strategy_pool"], str)
                                        else kw["strategy_pool"])
        if isinstance(kw.get("strategies"), dict):
            given = _per_group(kw["strategies"], n_groups, "space.strategies", source)
            # A group the file does not name keeps every set of the pool.
            pool = kw.get("strategy_pool", STRATEGIES)
            kw["strategies"] = tuple(tuple(given[g]) if g in given else _all_subsets(tuple(pool))
                                     for g in range(1, n_groups + 1))
        for k in ("groupings", "allocations"):
            if k in kw:
                kw[k] = tuple([kw[k]] if isinstance(kw[k], str) else kw[k])
        try:
            return cls(**kw)
        except DesignSpaceError as e:
            raise with_source(e, source) from None


__all__ = [
    "Design",
    "DesignSpace",
    "GROUPING_PATTERNS",
    "ALLOCATION_PATTERNS",
    "STRATEGIES",
    "group_sizes",
    "layer_groups",
    "apportion",
    "format_choice",
    "strategy_set_label",
]
