"""LNFit: tune a scale delta of the layer norms (used by the S3PET search space)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..backbones.roles import Layer
from .base import PETModule, Strategy, add_to_output


def normalised(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The norm's output before its affine scale and bias (LayerNorm or RMSNorm)."""
    eps = getattr(module, "eps", None) or getattr(module, "variance_epsilon", None) or 1e-6
    if isinstance(module, nn.LayerNorm) or getattr(module, "bias", None) is not None:
        return F.layer_norm(x, (x.shape[-1],), None, None, eps)
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


class LNFitModule(PETModule):
    def __init__(self, layer: Layer, roles):
        super().__init__()
        self.roles = tuple(roles)
        self.scale = nn.ParameterDict({r: nn.Parameter(torch.zeros(layer.dim(r))) for r in self.roles})

    def attach(self, layer: Layer) -> list:
        handles = []
        for role in self.roles:
            def hook(module, args, output, role=role):
                n = normalised(module, args[0])
                return add_to_output(output, lambda o: o + n * self.scale[role])

            handles.append(layer.roles[role].module.register_forward_hook(hook))
        return handles


class LNFit(Strategy):
    name = "lnfit"
    sized = False
    default_roles = ("ln_attn", "ln_ffn")

    def base_cost(self, layer: Layer, roles) -> int:
        return sum(layer.dim(r) for r in roles)

    def unit_cost(self, layer: Layer, roles) -> int:
        return 0

    def build(self, layer: Layer, size: int, roles, options: dict) -> PETModule:
        return LNFitModule(layer, roles)
