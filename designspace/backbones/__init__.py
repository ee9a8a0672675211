"""Backbones: load a pretrained model (short name, local folder or hub id) with its role map."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .roles import ROLES, Layer, RoleMap, resolve_layers, role_map_for

if TYPE_CHECKING:
    import torch
    from torch import nn


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
        """Decided from the model itself: its attention is causal (GPT-2, Llama, Phi, Gemma...)."""
        if self.is_encoder_decoder:
            return False
        attn = self.layers[0].roles.get("attn") if self.layers else None
        causal = getattr(attn.module, "is_causal", None) if attn is not None else None
        if causal is not None:
            return bool(causal)
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
            MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        )

        kind = self.config.model_type
        return kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES

    @property
    def hidden_size(self) -> int:
        return self.layers[-1].dim("ffn_out")



def load_backbone(
    name: str,
    role_map: RoleMap | dict | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Backbone:
    """Load ``name``: a short name (``minilm-l6``, ``smollm2-135m``), a local folder, or a hub id.

    The weights stay on ``device`` (default: CUDA when available, else CPU) and are frozen.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    from .offline import resolve_backbone_path

    dtype = dtype or torch.float32
    path = resolve_backbone_path(name)
    with _one_line(name):
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
    import torch
    from transformers import AutoConfig, AutoModel

    from .offline import resolve_backbone_path

    path = resolve_backbone_path(name)
    with _one_line(name):
        config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    return Backbone.from_model(model, name=name, role_map=role_map)


@contextmanager
def _one_line(name: str):
    """A folder that is not a model (no config.json, unreadable weights) is one line, not a traceback."""
    from ..errors import DesignSpaceError

    try:
        yield
    except (OSError, ValueError) as e:
        if isinstance(e, DesignSpaceError):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DesignSpaceError(f"backbone={name!r} could not be loaded: {first}") from None


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else the CPU: never assumed."""
    import torch

    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


__all__ = ["Backbone", "load_backbone", "backbone_info", "pick_device", "RoleMap", "ROLES", "Layer"]
