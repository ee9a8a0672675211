"""BitFit (Ben Zaken et al., 2022): tune the biases of a layer.

Every family is treated alike: a zero-initialised bias *delta* is added to the outputs of the
layer's projections and norms. Where the backbone has a bias, tuning ``b + delta`` is tuning the
bias; where it has none (T5, Llama) this is the added bias the method needs. The backbone itself
stays frozen and the PET weights stay self-contained.
"""

from __future__ import annotations

from .base import Strategy

ROLES = ("attn_q", "attn_k", "attn_v", "attn_o", "ffn_in", "ffn_out", "ln_attn", "ln_ffn")


def distinct_roles(layer, roles) -> tuple[str, ...]:
    """One role per module: GPT-2's fused qkv is one module with one bias, held by its first role."""
    seen, out = set(), []
    for r in roles:
        m = layer.roles[r].module
        if id(m) not in seen:
            seen.add(id(m))
            out.append(r)
    return tuple(out)


def _width(ref) -> int:
    return ref.out_features * ref.n_parts  # the whole module's output


class BitFit(Strategy):
    name = "bitfit"
    label = "B"
    size_symbol = ""
    lr = 5e-3
    color = "tab:green"
    peft_note = "peft has no bias-only tuner (LoRA's bias option trains existing biases of LoRA targets only)"
    sized = False
    default_roles = ROLES

    def base_cost(self, layer, roles) -> int:
        return sum(_width(layer.roles[r]) for r in distinct_roles(layer, roles))

    def unit_cost(self, layer, roles) -> int:
        return 0

    def init(self, layer, size, role, roles, options):
        import torch

        if role not in distinct_roles(layer, roles):
            return {}
        return {f"bias.{role}": torch.zeros(_width(layer.roles[role]))}

    def transform(self, pet, role, x, out):
        if role not in pet.bias:
            return out
        return out + pet.bias[role]


STRATEGY = BitFit()
