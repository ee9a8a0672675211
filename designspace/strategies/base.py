"""What every PET strategy provides: its cost for a size, and a module that attaches to a layer.

A strategy is *sized* (adapter bottleneck, LoRA rank, prefix length) or *fixed* (BitFit, LNFit:
the size is 1, meaning "on"). ``cost(layer, size)`` must equal the parameters of ``build(...)``;
the attach step checks that on the real model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import nn

from ..backbones.roles import Layer


class PETModule(nn.Module, ABC):
    """A strategy's parameters for one layer. ``attach`` registers hooks and returns their handles."""

    @abstractmethod
    def attach(self, layer: Layer) -> list:
        """Register the hooks that route this module into ``layer``; return removable handles."""

    def effective_params(self) -> int:
        """Parameters that a saved copy holds (training-only reparameterisations excluded)."""
        return sum(p.numel() for p in self.parameters())


class Strategy(ABC):
    name: str = ""
    sized: bool = True
    size_name: str = "size"
    #: Roles this strategy touches by default; a plan may override them (e.g. LoRA on attn_k too).
    default_roles: tuple[str, ...] = ()

    def base_cost(self, layer: Layer, roles: tuple[str, ...]) -> int:
        """Parameters that do not grow with size (for example an adapter's output bias)."""
        return 0

    @abstractmethod
    def unit_cost(self, layer: Layer, roles: tuple[str, ...]) -> int:
        """Parameters added by one more unit of size (0 for fixed-cost strategies)."""

    def cost(self, layer: Layer, size: int, roles: tuple[str, ...] | None = None) -> int:
        roles = tuple(roles or self.default_roles)
        if size <= 0:
            return 0
        if not self.sized:
            return self.base_cost(layer, roles)
        return self.base_cost(layer, roles) + size * self.unit_cost(layer, roles)

    @abstractmethod
    def build(self, layer: Layer, size: int, roles: tuple[str, ...], options: dict) -> PETModule:
        """The module of this strategy for ``layer`` at ``size`` on ``roles``."""


def add_to_output(output, delta_fn):
    """Apply ``delta_fn`` to a module's output tensor, whether it returns a tensor or a tuple."""
    if isinstance(output, tuple):
        return (delta_fn(output[0]),) + output[1:]
    return delta_fn(output)
