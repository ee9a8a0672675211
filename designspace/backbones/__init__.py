"""Backbones: load a pretrained model (short name, local folder or hub id) with its role map."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .roles import ROLES, Layer, RoleMap, resolve_layers, role_map_for


@dataclass
class Backbone:
    """A loaded base model (no task head), its tokenizer and its resolved layers."""

    name: str
    model: nn.Module
    tokenizer: object = None
    role_map: RoleMap | None = None
    layers: list[Layer] = field(default_factory=list)
    n_params: int = 0

    @classmethod
    def from_model(cls, model: nn.Module, name: str | None = None, tokenizer=None, role_map=None) -> Backbone:
        rmap = role_map_for(model, role_map)
        return cls(
            name=name or getattr(model.config, "_name_or_path", None) or type(model).__name__,
            model=model,
            tokenizer=tokenizer,
            role_map=rmap,
            layers=resolve_layers(model, rmap),
            n_params=sum(p.numel() for p in model.parameters()),
        )

    @property
    def config(self):
        return self.model.config

    @property
    def family(self) -> str:
        return self.role_map.family if self.role_map else self.config.model_type

    @property
    def is_encoder_decoder(self) -> bool:
        return bool(getattr(self.config, "is_encoder_decoder", False))

    @property
    def is_decoder_only(self) -> bool:
        return not self.is_encoder_decoder and self.role_map is not None and self.role_map.family in DECODER_FAMILIES

    @property
    def hidden_size(self) -> int:
        return self.layers[-1].dim("ffn_out")


DECODER_FAMILIES = {"gpt2", "llama", "mistral", "qwen2"}


def load_backbone(
    name: str,
    role_map: RoleMap | dict | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Backbone:
    """Load ``name``: a short name (``minilm-l6``, ``smollm2-135m``), a local folder, or a hub id.

    The weights stay on ``device`` (default: CUDA when available, else CPU) and are frozen.
    """
    from transformers import AutoModel, AutoTokenizer

    from .offline import resolve_backbone_path

    path = resolve_backbone_path(name)
    model = AutoModel.from_pretrained(path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(pick_device(device))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Backbone.from_model(model, name=name, tokenizer=tokenizer, role_map=role_map)


def backbone_info(name: str, role_map: RoleMap | dict | None = None) -> Backbone:
    """Layers and parameter count only, on the meta device: compiling a plan needs no weights."""
    from transformers import AutoConfig, AutoModel

    from .offline import resolve_backbone_path

    config = AutoConfig.from_pretrained(resolve_backbone_path(name))
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    return Backbone.from_model(model, name=name, role_map=role_map)


def pick_device(device: str | torch.device | None = None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


__all__ = ["Backbone", "load_backbone", "backbone_info", "pick_device", "RoleMap", "ROLES", "Layer"]
