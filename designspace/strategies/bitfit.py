"""BitFit (Ben Zaken et al., 2022): tune the biases of a layer.

Every family is treated alike: a zero-initialised bias *delta* is added to the outputs of the
layer's projections and norms. Where the backbone has a bias, tuning ``b + delta`` is tuning the
bias; where it has none (T5, Llama) this is the added bias the method needs. The backbone itself
stays frozen and the PET weights stay self-contained.
"""

from __future__ import annotations

import torch
from torch import nn

from ..backbones.roles import Layer, linear_dims
from .base import PETModule, Strategy, add_to_output

ROLES = ("attn_q", "attn_k", "attn_v", "attn_o", "ffn_in", "ffn_out", "ln_attn", "ln_ffn")


def distinct_modules(layer: Layer, roles) -> dict[str, nn.Module]:
    """Role -> module, one role per module (GPT-2's fused qkv is one module, one bias)."""
    seen, out = set(), {}
    for r in roles:
        m = layer.roles[r].module
        if id(m) not in seen:
            seen.add(id(m))
            out[r] = m
    return out


class BitFitModule(PETModule):
    def __init__(self, layer: Layer, roles):
        super().__init__()
        self.mods = distinct_modules(layer, roles)
        self.bias = nn.ParameterDict({r: nn.Parameter(torch.zeros(linear_dims(m)[1])) for r, m in self.mods.items()})

    def attach(self, layer: Layer) -> list:
        handles = []
        for role in self.mods:
            def hook(module, args, output, role=role):
                return add_to_output(output, lambda o: o + self.bias[role])

            handles.append(layer.roles[role].module.register_forward_hook(hook))
        return handles


class BitFit(Strategy):
    name = "bitfit"
    sized = False
    default_roles = ROLES

    def base_cost(self, layer: Layer, roles) -> int:
        return sum(linear_dims(m)[1] for m in distinct_modules(layer, roles).values())

    def unit_cost(self, layer: Layer, roles) -> int:
        return 0

    def build(self, layer: Layer, size: int, roles, options: dict) -> PETModule:
        return BitFitModule(layer, roles)
