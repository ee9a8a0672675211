"""LoRA (Hu et al., 2021): a low-rank update ``B A x`` added to chosen projections' outputs."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..backbones.roles import Layer, RoleRef
from .base import PETModule, Strategy, add_to_output


class LoRAModule(PETModule):
    def __init__(self, refs: dict[str, RoleRef], rank: int, scale: float, dropout: float):
        super().__init__()
        self.rank, self.scale = rank, scale
        self.roles = tuple(refs)
        self.A = nn.ParameterDict()
        self.B = nn.ParameterDict()
        for role, ref in refs.items():
            a = torch.empty(rank, ref.in_features)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self.A[role] = nn.Parameter(a)
            # B starts at zero so that the model is unchanged at initialisation.
            self.B[role] = nn.Parameter(torch.zeros(ref.out_features, rank))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def delta(self, role: str, x: torch.Tensor) -> torch.Tensor:
        return (self.dropout(x) @ self.A[role].t() @ self.B[role].t()) * self.scale

    def attach(self, layer: Layer) -> list:
        handles = []
        for role in self.roles:
            ref = layer.roles[role]

            def hook(module, args, output, role=role, ref=ref):
                d = self.delta(role, args[0])
                if ref.n_parts == 1:
                    return add_to_output(output, lambda o: o + d)
                sl = ref.out_slice()

                def add_part(o):
                    # Fused projection (GPT-2 c_attn): pad the delta into its third of the output.
                    return o + nn.functional.pad(d, [sl.start, o.shape[-1] - sl.stop])

                return add_to_output(output, add_part)

            handles.append(ref.module.register_forward_hook(hook))
        return handles


class LoRA(Strategy):
    name = "lora"
    size_name = "rank"
    default_roles = ("attn_q", "attn_v")

    def unit_cost(self, layer: Layer, roles) -> int:
        return sum(layer.roles[r].in_features + layer.roles[r].out_features for r in roles)

    def build(self, layer: Layer, size: int, roles, options: dict) -> PETModule:
        # scale = alpha / r with alpha = 2 r by default: the update's scale does not depend on the
        # rank, so layers given different ranks by the allocation train at the same step size.
        scale = float(options.get("lora_scale", 2.0))
        return LoRAModule({r: layer.roles[r] for r in roles}, size, scale, float(options.get("lora_dropout", 0.0)))
