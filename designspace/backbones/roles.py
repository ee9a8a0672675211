"""Role maps: the only place that knows where a model family keeps its layers and projections.

A role map names, per layer stack, the path of each *role* relative to a layer:
``attn`` (the attention module that receives prefixes), ``attn_q``, ``attn_k``, ``attn_v``,
``attn_o``, ``ffn_in``, ``ffn_out``, ``ln_attn``, ``ln_ffn``. A path may name one part of a fused
projection (``attn.c_attn#1/3`` is the middle third of GPT-2's fused qkv output) and may list
alternatives separated by ``|`` (T5 v1.0 ``wi`` versus gated v1.1 ``wi_1``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import DesignSpaceError

if TYPE_CHECKING:
    from torch import nn

ROLES = ("attn", "attn_q", "attn_k", "attn_v", "attn_o", "ffn_in", "ffn_out", "ln_attn", "ln_ffn")
LINEAR_ROLES = ("attn_q", "attn_k", "attn_v", "attn_o", "ffn_in", "ffn_out")
NORM_ROLES = ("ln_attn", "ln_ffn")


@dataclass(frozen=True)
class RoleMap:
    """``stacks``: (path of a ModuleList of layers, {role: path relative to a layer}), in layer order."""

    family: str
    stacks: tuple[tuple[str, dict], ...]

    def to_dict(self) -> dict:
        return {"family": self.family, "stacks": [{"layers": p, "roles": dict(r)} for p, r in self.stacks]}

    @classmethod
    def from_dict(cls, d: dict, source: str | None = None) -> RoleMap:
        where = f"{source}: " if source else ""
        try:
            stacks = tuple((s["layers"], dict(s["roles"])) for s in d["stacks"])
        except (KeyError, TypeError):
            raise DesignSpaceError(
                f"{where}role_map: expected {{family: ..., stacks: [{{layers: <path>, roles: {{attn_q: <path>, ...}}}}]}}"
            ) from None
        for _, roles in stacks:
            for role in roles:
                if role not in ROLES:
                    raise DesignSpaceError(f"{where}role_map role {role!r} is invalid; allowed: {', '.join(ROLES)}")
        return cls(family=d.get("family", "custom"), stacks=stacks)

    @classmethod
    def load(cls, path) -> RoleMap:
        """A role map from a YAML/JSON file (``{family, stacks: [...]}``, or under a ``role_map:`` key)."""
        from ..files import load_yaml

        data = load_yaml(path)
        return cls.from_dict(data.get("role_map", data), source=str(path))


_BERT = {
    "attn": "attention.self",
    "attn_q": "attention.self.query",
    "attn_k": "attention.self.key",
    "attn_v": "attention.self.value",
    "attn_o": "attention.output.dense",
    "ffn_in": "intermediate.dense",
    "ffn_out": "output.dense",
    "ln_attn": "attention.output.LayerNorm",
    "ln_ffn": "output.LayerNorm",
}
_GPT2 = {
    "attn": "attn",
    "attn_q": "attn.c_attn#0/3",
    "attn_k": "attn.c_attn#1/3",
    "attn_v": "attn.c_attn#2/3",
    "attn_o": "attn.c_proj",
    "ffn_in": "mlp.c_fc",
    "ffn_out": "mlp.c_proj",
    "ln_attn": "ln_1",
    "ln_ffn": "ln_2",
}
_LLAMA = {
    "attn": "self_attn",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_o": "self_attn.o_proj",
    "ffn_in": "mlp.up_proj",
    "ffn_out": "mlp.down_proj",
    "ln_attn": "input_layernorm",
    "ln_ffn": "post_attention_layernorm",
}


# Phi: attention and FFN in parallel after one norm, so there is no ln_ffn role.
_PHI = {
    "attn": "self_attn",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_o": "self_attn.dense",
    "ffn_in": "mlp.fc1",
    "ffn_out": "mlp.fc2",
    "ln_attn": "input_layernorm",
}
_MPNET = {
    "attn": "attention.attn",
    "attn_q": "attention.attn.q",
    "attn_k": "attention.attn.k",
    "attn_v": "attention.attn.v",
    "attn_o": "attention.attn.o",
    "ffn_in": "intermediate.dense",
    "ffn_out": "output.dense",
    "ln_attn": "attention.LayerNorm",
    "ln_ffn": "output.LayerNorm",
}
_BART = {
    "attn": "self_attn",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_o": "self_attn.out_proj",
    "ffn_in": "fc1",
    "ffn_out": "fc2",
    "ln_attn": "self_attn_layer_norm",
    "ln_ffn": "final_layer_norm",
}


def _t5_roles(ffn_index: int) -> dict:
    ff = f"layer.{ffn_index}"
    return {
        "attn": "layer.0.SelfAttention",
        "attn_q": "layer.0.SelfAttention.q",
        "attn_k": "layer.0.SelfAttention.k",
        "attn_v": "layer.0.SelfAttention.v",
        "attn_o": "layer.0.SelfAttention.o",
        "ffn_in": f"{ff}.DenseReluDense.wi|{ff}.DenseReluDense.wi_1",
        "ffn_out": f"{ff}.DenseReluDense.wo",
        "ln_attn": "layer.0.layer_norm",
        "ln_ffn": f"{ff}.layer_norm",
    }


BUILTIN: dict[str, RoleMap] = {
    "bert": RoleMap("bert", (("encoder.layer", _BERT),)),
    "roberta": RoleMap("roberta", (("encoder.layer", _BERT),)),
    "xlm-roberta": RoleMap("xlm-roberta", (("encoder.layer", _BERT),)),
    "gpt2": RoleMap("gpt2", (("h", _GPT2),)),
    "llama": RoleMap("llama", (("layers", _LLAMA),)),
    "mistral": RoleMap("mistral", (("layers", _LLAMA),)),
    "qwen2": RoleMap("qwen2", (("layers", _LLAMA),)),
    "gemma": RoleMap("gemma", (("layers", _LLAMA),)),
    "gemma2": RoleMap("gemma2", (("layers", _LLAMA),)),
    "phi": RoleMap("phi", (("layers", _PHI),)),
    "mpnet": RoleMap("mpnet", (("encoder.layer", _MPNET),)),
    "bart": RoleMap("bart", (("encoder.layers", _BART), ("decoder.layers", _BART))),
    # Encoder layers first, then decoder layers: the paper's layer order for T5.
    "t5": RoleMap("t5", (("encoder.block", _t5_roles(1)), ("decoder.block", _t5_roles(2)))),
}


def role_map_for(model: nn.Module, role_map: RoleMap | dict | None = None) -> RoleMap:
    """The role map of ``model``: the user's if given, else the built-in one for ``config.model_type``."""
    if role_map is not None:
        return role_map if isinstance(role_map, RoleMap) else RoleMap.from_dict(role_map)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in BUILTIN:
        raise DesignSpaceError(
            f"model_type={model_type!r} has no built-in role map (known: {', '.join(sorted(BUILTIN))}); "
            "give a role map: --role-map FILE, or role_map: in the experiment file ({family, stacks: [{layers, roles}]})"
        )
    return BUILTIN[model_type]


@dataclass(frozen=True)
class RoleRef:
    """One resolved role: the module, and which part of its output (for fused projections)."""

    path: str
    module: nn.Module = field(compare=False, repr=False)
    part: int = 0
    n_parts: int = 1

    @property
    def in_features(self) -> int:
        return linear_dims(self.module)[0]

    @property
    def out_features(self) -> int:
        return linear_dims(self.module)[1] // self.n_parts

    def out_slice(self) -> slice:
        size = self.out_features
        return slice(self.part * size, (self.part + 1) * size)


def linear_dims(module: nn.Module) -> tuple[int, int]:
    """(in, out) of a Linear, a GPT-2 Conv1D (weight stored as in x out) or a norm (dim, dim)."""
    import torch
    from torch import nn

    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":
        return module.weight.shape[0], module.weight.shape[1]
    w = getattr(module, "weight", None)
    if isinstance(w, torch.Tensor) and w.dim() == 1:
        return w.shape[0], w.shape[0]
    raise DesignSpaceError(f"{type(module).__name__} is not a linear projection or a norm; fix the role map")


def _base(model: nn.Module) -> nn.Module:
    # Accept task models (BertForSequenceClassification...) as well as bare backbones.
    from torch import nn

    base = getattr(model, "base_model", None)
    return base if isinstance(base, nn.Module) else model


def _resolve(root: nn.Module, spec: str) -> tuple[str, nn.Module, int, int] | None:
    for alt in spec.split("|"):
        path, part, n_parts = alt, 0, 1
        if "#" in alt:
            path, frac = alt.split("#", 1)
            part, n_parts = (int(x) for x in frac.split("/"))
        try:
            return path, root.get_submodule(path), part, n_parts
        except AttributeError:
            continue
    return None


@dataclass
class Layer:
    """One transformer layer with its resolved roles (a plain view; nothing is modified)."""

    index: int
    stack: int
    module: nn.Module
    roles: dict[str, RoleRef]

    def dim(self, role: str) -> int:
        return self.roles[role].out_features


def resolve_layers(model: nn.Module, role_map: RoleMap | dict | None = None) -> list[Layer]:
    """Every layer of ``model`` in order, with its roles resolved; an error lists what is missing."""
    rmap = role_map_for(model, role_map)
    base = _base(model)
    layers: list[Layer] = []
    missing: list[str] = []
    for s, (stack_path, roles) in enumerate(rmap.stacks):
        try:
            stack = base.get_submodule(stack_path)
        except AttributeError:
            missing.append(f"layers:{stack_path}")
            continue
        for i, layer_module in enumerate(stack):
            refs = {}
            for role, spec in roles.items():
                hit = _resolve(layer_module, spec)
                if hit is None:
                    missing.append(f"{role}:{spec}")
                    continue
                path, mod, part, n_parts = hit
                refs[role] = RoleRef(f"{stack_path}.{i}.{path}", mod, part, n_parts)
            layers.append(Layer(len(layers), s, layer_module, refs))
    if missing:
        uniq = sorted(set(missing))
        raise DesignSpaceError(
            f"role map {rmap.family!r} does not fit {type(base).__name__}: not found {', '.join(uniq)}; "
            "give a role map with the right paths (--role-map FILE or role_map: in the experiment file)"
        )
    if not layers:
        raise DesignSpaceError(f"role map {rmap.family!r} found no layers in {type(base).__name__}")
    return layers
