"""The strategy registry: adding a strategy is one module plus one ``register`` line below."""

from __future__ import annotations

from ..errors import invalid
from .base import Strategy

_REGISTRY: dict[str, Strategy] = {}


def register(strategy: Strategy) -> Strategy:
    _REGISTRY[strategy.name] = strategy
    return strategy


def get(name: str) -> Strategy:
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise invalid("strategy", name, sorted(_REGISTRY)) from None


def names() -> list[str]:
    _load_builtins()
    return list(_REGISTRY)


def _load_builtins() -> None:
    if _REGISTRY:
        return
    from .adapter import Adapter
    from .bitfit import BitFit
    from .lnfit import LNFit
    from .lora import LoRA
    from .prefix import Prefix

    for s in (Adapter(), Prefix(), BitFit(), LoRA(), LNFit()):
        register(s)
