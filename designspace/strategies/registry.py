"""The strategy registry: adding a strategy is one module (ending ``STRATEGY = MyStrategy()``) plus one
line in ``_BUILTINS`` below.

Built-in strategies are registered when this module is imported (no torch: strategy modules import
it only inside the methods that compute). A second strategy under a taken name is refused, so a
plug-in cannot silently replace LoRA; ``register(..., replace=True)`` says so on purpose.
"""

from __future__ import annotations

import importlib

from ..errors import DesignSpaceError, invalid
from .base import Strategy

_REGISTRY: dict[str, Strategy] = {}


def register(strategy: Strategy, replace: bool = False) -> Strategy:
    """Add ``strategy`` under its ``name``; a taken name or label is an error unless ``replace``."""
    if not isinstance(strategy, Strategy) or not strategy.name or not strategy.label:
        raise invalid("strategy", strategy, "a Strategy instance with a name and a one-letter label")
    if strategy.name in _REGISTRY and not replace:
        raise DesignSpaceError(
            f"strategy {strategy.name!r} is already registered ({_REGISTRY[strategy.name]!r}); "
            "choose another name or pass replace=True"
        )
    taken = {s.label: s.name for s in _REGISTRY.values() if s.name != strategy.name}
    if strategy.label in taken:
        raise DesignSpaceError(
            f"strategy {strategy.name!r}: label {strategy.label!r} is taken by {taken[strategy.label]!r}; choose another"
        )
    _REGISTRY[strategy.name] = strategy
    return strategy


def unregister(name: str) -> None:
    """Remove a strategy (tests and plug-ins that registered one for a while)."""
    _REGISTRY.pop(name, None)


def get(name: str) -> Strategy:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise invalid("strategy", name, sorted(_REGISTRY)) from None


def names() -> list[str]:
    return list(_REGISTRY)


def label(name: str) -> str:
    """One letter for ``name`` (the name itself for an unknown one, so old records still print)."""
    s = _REGISTRY.get(name)
    return s.label if s else name


#: Modules of the built-in strategies, in display order; each defines ``STRATEGY``.
_BUILTINS = (
    "adapter",
    "prefix",
    "bitfit",
    "lora",
    "lnfit",
    "ia3",
)
for _module in _BUILTINS:
    register(importlib.import_module(f"{__package__}.{_module}").STRATEGY)
