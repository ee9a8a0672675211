"""Prefix tuning (Li & Liang, 2021): learned key/value prefixes for a layer's self-attention.

One implementation for every family: transformers >= 5 routes attention through
``ALL_ATTENTION_FUNCTIONS`` with the attention module as first argument, so we register an
attention function that prepends the module's prefix keys and values, widens the mask and T5's
position bias, and then calls the implementation the model was using (sdpa or the family's eager).
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from ..backbones.roles import Layer
from .base import PETModule, Strategy

_PREFIX_ATTR = "_designspace_prefix"
_IMPL_PREFIX = "designspace_"


class PrefixModule(PETModule):
    """``length`` key and value vectors per layer, stored flat as (length, kv_dim).

    With ``reparam_hidden`` > 0 the prefixes are produced by a small MLP while training (Li & Liang
    found this stabilises optimisation); ``fold()`` replaces it by the plain prefixes it produces.
    """

    def __init__(self, length: int, kv_dim: int, reparam_hidden: int = 0, init_std: float = 0.5):
        super().__init__()
        self.length, self.kv_dim = length, kv_dim
        self.reparam_hidden = reparam_hidden
        if reparam_hidden > 0:
            self.embed = nn.Parameter(torch.randn(length, kv_dim) * init_std)
            self.mlp = nn.Sequential(
                nn.Linear(kv_dim, reparam_hidden), nn.Tanh(), nn.Linear(reparam_hidden, 2 * kv_dim)
            )
        else:
            self.key = nn.Parameter(torch.randn(length, kv_dim) * init_std)
            self.value = nn.Parameter(torch.randn(length, kv_dim) * init_std)

    def kv(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reparam_hidden > 0:
            k, v = self.mlp(self.embed).chunk(2, dim=-1)
            return k, v
        return self.key, self.value

    def effective_params(self) -> int:
        return 2 * self.length * self.kv_dim

    @torch.no_grad()
    def fold(self) -> None:
        """Replace the training-time MLP by the prefixes it currently produces."""
        if self.reparam_hidden <= 0:
            return
        k, v = self.kv()
        del self.embed, self.mlp
        self.reparam_hidden = 0
        self.key, self.value = nn.Parameter(k.detach().clone()), nn.Parameter(v.detach().clone())

    def attach(self, layer: Layer) -> list:
        attn = layer.roles["attn"].module
        # Plain attribute, not a registered submodule: the prefix belongs to the PET modules,
        # not to the (frozen) backbone's parameters or state dict.
        object.__setattr__(attn, _PREFIX_ATTR, self)
        _route_attention(attn)

        class _Handle:
            def remove(self_inner):
                if attn.__dict__.get(_PREFIX_ATTR) is self:
                    del attn.__dict__[_PREFIX_ATTR]

        return [_Handle()]


class Prefix(Strategy):
    name = "prefix"
    size_name = "length"
    default_roles = ("attn",)

    def unit_cost(self, layer: Layer, roles) -> int:
        return 2 * layer.dim("attn_k")

    def build(self, layer: Layer, size: int, roles, options: dict) -> PETModule:
        return PrefixModule(size, layer.dim("attn_k"), int(options.get("prefix_reparam_hidden", 0)))


# --- the attention function -------------------------------------------------------------
def _widen_mask(mask, n_prefix: int, q_len: int, k_len: int, causal: bool, device):
    """Let every query see the prefix: prepend ``n_prefix`` always-visible key positions."""
    if mask is None:
        if not causal:
            return None
        # The base implementation would have used is_causal; spell the causal pattern out
        # because the key axis is now longer than the query axis.
        q = torch.arange(q_len, device=device)[:, None]
        k = torch.arange(k_len, device=device)[None, :]
        mask = (k <= q + (k_len - q_len))[None, None]
        visible = True
    else:
        visible = True if mask.dtype == torch.bool else 0.0
    pad = torch.full((*mask.shape[:-1], n_prefix), visible, dtype=mask.dtype, device=mask.device)
    return torch.cat([pad, mask], dim=-1)


def _base_function(module: nn.Module, name: str):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    base = name[len(_IMPL_PREFIX):]
    if base == "eager":
        # Every family keeps its own eager function next to its attention module.
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[base]


def _make_attention(name: str):
    def prefixed_attention(module, query, key, value, attention_mask, *args, **kwargs):
        base = _base_function(module, name)
        prefix: PrefixModule | None = getattr(module, _PREFIX_ATTR, None)
        if prefix is None or prefix.length == 0:
            return base(module, query, key, value, attention_mask, *args, **kwargs)
        b, kv_heads, k_len, head_dim = key.shape
        pk, pv = prefix.kv()
        pk = pk.to(key.dtype).view(prefix.length, kv_heads, head_dim).transpose(0, 1)
        pv = pv.to(value.dtype).view(prefix.length, kv_heads, head_dim).transpose(0, 1)
        key = torch.cat([pk.unsqueeze(0).expand(b, -1, -1, -1), key], dim=2)
        value = torch.cat([pv.unsqueeze(0).expand(b, -1, -1, -1), value], dim=2)
        causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", False)))
        attention_mask = _widen_mask(attention_mask, prefix.length, query.shape[2], k_len, causal, query.device)
        bias = kwargs.get("position_bias")
        if bias is not None:
            # T5: prefix positions get no relative-position bias.
            zeros = bias.new_zeros((*bias.shape[:-1], prefix.length))
            kwargs["position_bias"] = torch.cat([zeros, bias], dim=-1)
        kwargs["is_causal"] = False
        return base(module, query, key, value, attention_mask, *args, **kwargs)

    return prefixed_attention


def _register(name: str) -> None:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    if name in ALL_ATTENTION_FUNCTIONS:
        return
    base = name[len(_IMPL_PREFIX):]
    AttentionInterface.register(name, _make_attention(name))
    # Masks are built exactly as for the base implementation.
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])


def _route_attention(attn: nn.Module) -> None:
    """Point the model's attention dispatch (every config that ``attn`` may read) at our function."""
    config = getattr(attn, "config", None)
    if config is None:
        raise RuntimeError(f"{type(attn).__name__} has no config; prefix tuning needs transformers >= 5")
    current = config._attn_implementation or "eager"
    if current.startswith(_IMPL_PREFIX):
        return
    if current not in ("eager", "sdpa"):
        current = "sdpa"  # flash/flex kernels cannot take our widened masks
    name = _IMPL_PREFIX + current
    _register(name)
    config._attn_implementation = name
