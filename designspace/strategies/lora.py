"""LoRA (Hu et al., 2021): a low-rank update ``scale * B A x`` added to chosen projections' outputs."""

from __future__ import annotations

import math

from .base import Strategy, place_part


class LoRA(Strategy):
    name = "lora"
    label = "L"
    size_name = "rank"
    size_symbol = "r"
    lr = 2e-3
    color = "tab:red"
    peft = "lora"
    default_roles = ("attn_q", "attn_v")

    def unit_cost(self, layer, roles) -> int:
        return sum(layer.roles[r].in_features + layer.roles[r].out_features for r in roles)

    def max_size(self, layer, roles) -> int:
        # A rank above min(in, out) of any adapted projection spans nothing new.
        return min(min(layer.roles[r].in_features, layer.roles[r].out_features) for r in roles)

    def init(self, layer, size, role, roles, options):
        import torch
        from torch import nn

        ref = layer.roles[role]
        a = torch.empty(size, ref.in_features)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        # B starts at zero so that the model is unchanged at initialisation.
        return {f"A.{role}": a, f"B.{role}": torch.zeros(ref.out_features, size)}

    def transform(self, pet, role, x, out):
        # scale = alpha / r with alpha = 2 r by default: the update's scale does not depend on the
        # rank, so layers given different ranks by the allocation train at the same step size.
        scale = float(pet.options.get("lora_scale", 2.0))
        dropout = float(pet.options.get("lora_dropout", 0.0))
        if dropout and pet.training:
            import torch.nn.functional as F

            x = F.dropout(x, dropout, training=True)
        delta = (x @ pet.A[role].t() @ pet.B[role].t()) * scale
        return out + place_part(delta, pet.layer.roles[role], out.shape[-1])


STRATEGY = LoRA()
