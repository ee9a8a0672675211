"""Sequential bottleneck adapter (Houlsby et al., 2019) after the FFN output projection."""

from __future__ import annotations

import torch
from torch import nn

from ..backbones.roles import Layer
from .base import PETModule, Strategy, add_to_output


class AdapterModule(PETModule):
    def __init__(self, dim: int, bottleneck: int, activation: str = "relu"):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        # Zero up-projection: the adapter is the identity at initialisation.
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        self.act = {"relu": nn.ReLU(), "gelu": nn.GELU(), "silu": nn.SiLU()}[activation]
        self.role = "ffn_out"

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

    def base_cost(self, layer: Layer, roles) -> int:
        return layer.dim("ffn_out")  # the up-projection's bias

    def unit_cost(self, layer: Layer, roles) -> int:
        d = layer.dim("ffn_out")
        return 2 * d + 1  # one down row + its bias, one up column

    def build(self, layer: Layer, size: int, roles, options: dict) -> PETModule:
        return AdapterModule(layer.dim("ffn_out"), size, options.get("adapter_activation", "relu"))
