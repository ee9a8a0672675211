"""Prefix tuning (Li & Liang, 2021): learned key/value prefixes for a layer's self-attention.

One implementation for every family: transformers >= 5 routes attention through
``ALL_ATTENTION_FUNCTIONS`` with the attention module as first argument, so we register an
attention function that prepends the prefixes of every design attached to that module (each on its
own rows of the batch, shorter prefixes padded and masked), widens the mask and T5's position bias,
and then calls the implementation the model was using (sdpa or the family's eager).

Attention modules that compute attention themselves (MPNet's, in transformers 5) get a forward of
their own instead (:data:`_SELF_COMPUTING`): the same computation with the prefixes prepended, and the
module's original forward whenever no prefix is attached.
"""

from __future__ import annotations

import sys

from .base import Strategy

_IMPL_PREFIX = "designspace_"


class Prefix(Strategy):
    name = "prefix"
    label = "P"
    size_name = "length"
    size_symbol = "len"
    lr = 1e-2  # prefixes want a larger step (Li & Liang; He et al. 2022)
    color = "tab:orange"
    peft = "prefix_tuning"
    default_roles = ("attn",)

    def hook(self, role):
        return "attention"

    def needed_roles(self, roles):
        return ("attn", "attn_k")

    def check_roles(self, layer, roles, where: str) -> None:
        """Prefixes enter through transformers' attention interface, or through a forward of our own
        for the attention modules that compute attention themselves (:data:`_SELF_COMPUTING`); any
        other module cannot take them. Said at compile time, in one line."""
        super().check_roles(layer, roles, where)
        attn = layer.roles["attn"].module
        if _self_computing(attn) is None and getattr(getattr(attn, "config", None), "_attn_implementation", None) is None:
            from ..errors import DesignSpaceError

            raise DesignSpaceError(
                f"{where}: prefix tuning needs an attention module that calls transformers' attention interface; "
                f"{type(attn).__name__} computes attention itself; use a design without prefix on this backbone"
            )

    def unit_cost(self, layer, roles) -> int:
        return 2 * layer.dim("attn_k")

    def init(self, layer, size, role, roles, options):
        import torch
        from torch import nn

        kv_dim = layer.dim("attn_k")
        hidden = int(options.get("prefix_reparam_hidden", 0))
        init_std = 0.5
        if hidden > 0:
            # Li & Liang produce the prefixes with a small MLP while training (it stabilises the
            # optimisation); ``fold`` replaces it by the plain prefixes it produces.
            mlp = nn.Sequential(nn.Linear(kv_dim, hidden), nn.Tanh(), nn.Linear(hidden, 2 * kv_dim))
            return {"embed": torch.randn(size, kv_dim) * init_std, "mlp": mlp}
        return {"key": torch.randn(size, kv_dim) * init_std, "value": torch.randn(size, kv_dim) * init_std}

    def transform(self, pet, role, x, out):
        raise TypeError("prefix tuning acts inside the attention function, not through a hook")

    def effective_params(self, pet) -> int:
        return 2 * pet.size * pet.layer.dim("attn_k")

    def fold(self, pet) -> None:
        import torch
        from torch import nn

        if not hasattr(pet, "mlp"):
            return
        with torch.no_grad():
            k, v = kv(pet)
        del pet.embed, pet.mlp
        pet.key, pet.value = nn.Parameter(k.detach().clone()), nn.Parameter(v.detach().clone())


def kv(pet):
    """(keys, values) of a prefix module, each (length, kv_dim)."""
    if hasattr(pet, "mlp"):
        k, v = pet.mlp(pet.embed).chunk(2, dim=-1)
        return k, v
    return pet.key, pet.value


STRATEGY = Prefix()


# --- the attention function -------------------------------------------------------------------------
def _prefix_tensors(entries, key, value):
    """Prefix keys/values for every row (b, heads, P, d) and which prefix slots each row may see (b, P)."""
    import torch

    b, kv_heads, _, head_dim = key.shape
    if len(entries) == 1 and entries[0][0] is None:  # one design on every row: no padding needed
        pet = entries[0][1]
        pk, pv = kv(pet)
        pk = pk.to(key.dtype).view(pet.size, kv_heads, head_dim).transpose(0, 1)
        pv = pv.to(value.dtype).view(pet.size, kv_heads, head_dim).transpose(0, 1)
        return pk.unsqueeze(0).expand(b, -1, -1, -1), pv.unsqueeze(0).expand(b, -1, -1, -1), None
    length = max(pet.size for _, pet in entries)
    keys = key.new_zeros(b, kv_heads, length, head_dim)
    values = value.new_zeros(b, kv_heads, length, head_dim)
    visible = torch.zeros(b, length, dtype=torch.bool, device=key.device)
    for rows, pet in entries:
        pk, pv = kv(pet)
        n = pet.size
        keys[rows, :, :n] = pk.to(key.dtype).view(n, kv_heads, head_dim).transpose(0, 1)
        values[rows, :, :n] = pv.to(value.dtype).view(n, kv_heads, head_dim).transpose(0, 1)
        visible[rows, :n] = True
    return keys, values, visible


def _widen_mask(mask, visible, n_prefix: int, q_len: int, k_len: int, causal: bool, batch: int, device):
    """Prepend ``n_prefix`` key positions: visible to every query (``visible`` None) or per row."""
    import torch

    if mask is None:
        if not causal and visible is None:
            return None
        q = torch.arange(q_len, device=device)[:, None]
        k = torch.arange(k_len, device=device)[None, :]
        # The base implementation would have used is_causal (or no mask); spell the pattern out
        # because the key axis is now longer than the query axis.
        mask = ((k <= q + (k_len - q_len)) if causal else torch.ones(q_len, k_len, dtype=torch.bool, device=device))
        mask = mask[None, None]
    if visible is None:
        pad_value = True if mask.dtype == torch.bool else 0.0
        pad = torch.full((*mask.shape[:-1], n_prefix), pad_value, dtype=mask.dtype, device=mask.device)
        return torch.cat([pad, mask], dim=-1)
    mask = mask.expand(batch, *mask.shape[1:])
    seen = visible[:, None, None, :].expand(batch, mask.shape[1], mask.shape[2], n_prefix)
    if mask.dtype != torch.bool:
        seen = torch.zeros_like(seen, dtype=mask.dtype).masked_fill(~seen, torch.finfo(mask.dtype).min)
    return torch.cat([seen, mask], dim=-1)


def _base_function(module, name: str):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    base = name[len(_IMPL_PREFIX):]
    if base == "eager":
        # Every family keeps its own eager function next to its attention module.
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[base]


def _entries(module):
    """(rows, prefix module) of every design with a non-empty prefix on ``module``."""
    from ..attach import routed_entries

    return [(rows, pet) for rows, pet in routed_entries(module, "attention") if pet.size > 0]


def _prepend(entries, query, key, value, mask, causal: bool, bias=None):
    """The prefixes of ``entries`` put before ``key`` and ``value``, with the mask widened (each row
    sees its own design's prefix slots) and a position bias padded with zeros (prefix slots get none:
    T5, MPNet)."""
    import torch

    k_len = key.shape[2]
    pk, pv, visible = _prefix_tensors(entries, key, value)
    key, value = torch.cat([pk, key], dim=2), torch.cat([pv, value], dim=2)
    n_prefix = pk.shape[2]
    mask = _widen_mask(mask, visible, n_prefix, query.shape[2], k_len, causal, key.shape[0], query.device)
    if bias is not None:
        bias = torch.cat([bias.new_zeros((*bias.shape[:-1], n_prefix)), bias], dim=-1)
    return key, value, mask, bias


def _make_attention(name: str):
    def prefixed_attention(module, query, key, value, attention_mask, *args, **kwargs):
        base = _base_function(module, name)
        entries = _entries(module)
        if not entries:
            return base(module, query, key, value, attention_mask, *args, **kwargs)
        causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", False)))
        key, value, attention_mask, bias = _prepend(entries, query, key, value, attention_mask, causal,
                                                    kwargs.get("position_bias"))
        if bias is not None:
            kwargs["position_bias"] = bias
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


def route_attention(attn) -> None:
    """Point the model's attention dispatch (every config that ``attn`` may read) at our function, or
    give an attention module that computes attention itself its prefixed forward."""
    from ..errors import DesignSpaceError

    forward = _self_computing(attn)
    if forward is not None:
        if getattr(attn.forward, "__func__", None) is not forward:
            import types

            # An instance attribute: this module only, and ``copy.deepcopy`` rebinds it to the copy.
            attn.forward = types.MethodType(forward, attn)
        return
    config = getattr(attn, "config", None)
    if config is None:
        raise DesignSpaceError(f"{type(attn).__name__} has no config; prefix tuning needs transformers >= 5")
    current = config._attn_implementation or "eager"
    if current.startswith(_IMPL_PREFIX):
        return
    if current not in ("eager", "sdpa"):
        current = "sdpa"  # flash/flex kernels cannot take our widened masks
    name = _IMPL_PREFIX + current
    _register(name)
    config._attn_implementation = name


# --- attention modules that compute attention themselves ---------------------------------------------
def _mpnet_forward(self, hidden_states, attention_mask=None, position_bias=None, output_attentions=False, **kwargs):
    """``MPNetSelfAttention.forward`` with the attached prefixes prepended to its keys and values:
    scaled dot products, the relative-position bias (none for prefix positions, as for T5), the
    additive mask (prefix slots visible to the rows whose design has them), softmax, dropout. Without
    a prefix attached: the original forward, untouched."""
    import math

    import torch

    entries = _entries(self)
    if not entries:
        return type(self).forward(self, hidden_states, attention_mask, position_bias, output_attentions, **kwargs)
    shape = (*hidden_states.shape[:-1], -1, self.attention_head_size)
    q = self.q(hidden_states).view(shape).transpose(1, 2)
    k = self.k(hidden_states).view(shape).transpose(1, 2)
    v = self.v(hidden_states).view(shape).transpose(1, 2)
    k, v, mask, bias = _prepend(entries, q, k, v, attention_mask, False, position_bias)
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.attention_head_size)
    if bias is not None:
        scores = scores + bias
    if mask is not None and mask.dtype == torch.bool:  # built here (no padding in the batch): which keys count
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    elif mask is not None:  # MPNet's additive mask
        scores = scores + mask
    probs = self.dropout(torch.softmax(scores, dim=-1))
    context = torch.matmul(probs, v).transpose(1, 2).reshape(*hidden_states.shape[:-1], self.all_head_size)
    out = self.o(context)
    return (out, probs) if output_attentions else (out,)


def _self_computing(attn):
    """The prefixed forward for ``attn`` when it is an attention module that computes attention
    itself and that we know (MPNet's), else None."""
    try:
        from transformers.models.mpnet.modeling_mpnet import MPNetSelfAttention
    except ImportError:  # pragma: no cover - an older or trimmed transformers
        return None
    return _mpnet_forward if type(attn) is MPNetSelfAttention else None
