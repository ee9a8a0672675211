"""LNFit: tune a scale delta of the layer norms (used by the S3PET search space)."""

from __future__ import annotations

from .base import Strategy


def normalised(module, x):
    """The norm's output before its affine scale and bias (LayerNorm or RMSNorm)."""
    import torch
    import torch.nn.functional as F

    eps = getattr(module, "eps", None) or getattr(module, "variance_epsilon", None) or 1e-6
    if isinstance(module, torch.nn.LayerNorm) or getattr(module, "bias", None) is not None:
        return F.layer_norm(x, (x.shape[-1],), None, None, eps)
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


class LNFit(Strategy):
    name = "lnfit"
    label = "N"
    lr = 5e-3
    color = "tab:brown"
    peft_note = "peft's ln_tuning trains the whole norm (weight and bias) and cannot share an adapter with LoRA"
    sized = False
    default_roles = ("ln_attn", "ln_ffn")

    def base_cost(self, layer, roles) -> int:
        return sum(layer.dim(r) for r in roles)

    def unit_cost(self, layer, roles) -> int:
        return 0

    def init(self, layer, size, role, roles, options):
        import torch

        return {f"scale.{role}": torch.zeros(layer.dim(role))}

    def transform(self, pet, role, x, out):
        return out + normalised(pet.layer.roles[role].module, x) * pet.scale[role]


STRATEGY = LNFit()
