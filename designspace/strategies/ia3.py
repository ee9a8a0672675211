"""IA3 (Liu et al., 2022, "Few-shot PEFT is better and cheaper than in-context learning"): learned
rescaling of the attention's keys and values and of the FFN's intermediate activations.

The key and value vectors are multiplied element-wise by ``l_k`` and ``l_v`` (outputs of attn_k and
attn_v); the FFN's intermediate activations, which are the *input* of ffn_out, by ``l_ff``. Every
vector starts at one, so the model is unchanged at initialisation.
"""

from __future__ import annotations

from .base import Strategy


def _dim(layer, role) -> int:
    ref = layer.roles[role]
    return ref.in_features if role == "ffn_out" else ref.out_features


class IA3(Strategy):
    name = "ia3"
    label = "I"
    lr = 5e-3
    color = "tab:purple"
    peft = "ia3"
    sized = False
    default_roles = ("attn_k", "attn_v", "ffn_out")

    def hook(self, role):
        return "input" if role == "ffn_out" else "output"

    def base_cost(self, layer, roles) -> int:
        return sum(_dim(layer, r) for r in roles)

    def unit_cost(self, layer, roles) -> int:
        return 0

    def init(self, layer, size, role, roles, options):
        import torch

        return {f"scale.{role}": torch.ones(_dim(layer, role))}

    def transform(self, pet, role, x, out):
        scale = pet.scale[role]
        if out is None:  # the FFN's intermediate activations, on their way into ffn_out
            return x * scale
        ref = pet.layer.roles[role]
        if ref.n_parts > 1:  # one part of a fused projection: ones elsewhere
            import torch.nn.functional as F

            sl = ref.out_slice()
            scale = F.pad(scale - 1, [sl.start, out.shape[-1] - sl.stop]) + 1
        return out * scale


STRATEGY = IA3()
