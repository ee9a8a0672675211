"""Sequential bottleneck adapter (Houlsby et al., 2019) after the FFN output projection (default) or
after another hidden-state role such as ``attn_o`` (the module sits on ``roles[0]``)."""

from __future__ import annotations

import torch
from torch import nn

from ..backbones.roles import Layer
from .base import PETModule, Strategy, add_to_output


class AdapterModule(PETModule):
    def __init__(self, dim: int, bottleneck: int, activation: str = "relu", role: str = "ffn_out"):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        # Zero up-projection: the adapter is the identity at initialisation.
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        self.act = {"relu": nn.ReLU(), "gelu": nn.GELU(), "silu": nn.SiLU()}[activation]
        self.role = role

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h)))

    def attach(self, layer: Layer) -> list:
        def hook(module, args, output):
            return add_to_output(output, self)

        return [layer.roles[self.role].module.register_forward_hook(hook)]


class Adapter(Strategy):
    name = "adapter"
    size_name = "bottleneck"
    default_roles = ("ffn_out",)

    @staticmethod
    def _role(roles) -> str:
        return roles[0] if roles else Adapter.default_roles[0]

    def base_cost(self, layer: Layer, roles) -> int:
        return layer.dim(self._role(roles))  # the up-projection's bias

    def unit_cost(self, layer: Layer, roles) -> int:
        d = layer.dim(self._role(roles))
        return 2 * d + 1  # one down row + its bias, one up column

    def build(self, layer: Layer, size: int, roles, options: dict) -> PETModule:
        role = self._role(roles)
        return AdapterModule(layer.dim(role), size, options.get("adapter_activation", "relu"), role)
