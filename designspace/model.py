"""A frozen backbone + the attached PET modules + a small task head.

Pooling: the mean over non-padding tokens for encoders (all-MiniLM's pooler is weak), the last
non-padding token for decoder-only models, and for encoder-decoder models (T5, BART) the mean over
the decoder's states, the decoder reading the input shifted right, so that decoder layers take part.
"""

from __future__ import annotations

import torch
from torch import nn

from .attach import Attached, Rows, attach, head_seed
from .backbones import Backbone
from .plan import Plan


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    if how == "last":
        # Works for right padding: index of the last 1 in each row.
        last = mask.long().cumsum(-1).argmax(-1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def shift_right(input_ids: torch.Tensor, config) -> torch.Tensor:
    """The decoder's input: the sequence shifted one step right behind the model's own start token
    (``decoder_start_token_id``; T5 uses its pad token, BART its eos)."""
    start = getattr(config, "decoder_start_token_id", None)
    if start is None:
        start = getattr(config, "bos_token_id", None) or getattr(config, "pad_token_id", None) or 0
    out = input_ids.new_full(input_ids.shape, int(start))
    out[:, 1:] = input_ids[:, :-1]
    return out


class SeededDropout(nn.Module):
    """Dropout whose masks come from its own generator, seeded with the design's seed.

    A design's masks then do not depend on what else draws random numbers in the process: trained
    alone or in a pack (``train_pack``) beside other designs, it sees the same masks. On a CPU they
    are also the masks ``nn.Dropout`` drew after ``torch.manual_seed(seed)`` (same Bernoulli draws),
    so records made before this class existed are reproduced bit for bit.
    """

    def __init__(self, p: float, seed: int, device):
        super().__init__()
        self.p = float(p)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(int(seed))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        return x * torch.empty_like(x).bernoulli_(keep, generator=self.generator).div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def new_head(hidden: int, num_labels: int, seed: int, dropout: float, device) -> nn.Sequential:
    """The task head; its initial weights and its dropout masks depend on the seed only (common random
    numbers: the same in every design of a block, alone or in a pack)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(head_seed(seed))
        linear = nn.Linear(hidden, num_labels)
    return nn.Sequential(SeededDropout(dropout, seed, device), linear.to(device))


class FrozenBody(nn.Module):
    """The frozen backbone's forward with the right pooling: features for the head(s)."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone.model
        self.family = backbone.family
        self.is_encoder_decoder = backbone.is_encoder_decoder
        self.pooling = "last" if backbone.is_decoder_only else "mean"

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.is_encoder_decoder:
            dec_in = shift_right(input_ids, self.backbone.config)
            dec_mask = torch.cat([attention_mask[:, :1], attention_mask[:, :-1]], dim=1)
            out = self.backbone(
                input_ids=input_ids,
                attention_mask=attention_mask,
                decoder_input_ids=dec_in,
                decoder_attention_mask=dec_mask,
                use_cache=False,
            )
            return pool(out.last_hidden_state, dec_mask, "mean")
        kwargs = {"use_cache": False} if self.pooling == "last" else {}
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        return pool(out.last_hidden_state, attention_mask, self.pooling)


class PETModel(FrozenBody):
    def __init__(self, backbone: Backbone, plan: Plan, num_labels: int, dropout: float = 0.1, seed: int = 0,
                 rows: Rows | None = None):
        super().__init__(backbone)
        device = next(self.backbone.parameters()).device
        self.pet: Attached = attach(backbone, plan, seed, rows)
        self.head = new_head(backbone.hidden_size, num_labels, seed, dropout, device)
        self.num_labels = num_labels

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_) -> torch.Tensor:
        return self.head(self.features(input_ids, attention_mask))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def pet_params(self) -> int:
        return self.pet.effective_params()

    def head_params(self) -> int:
        return sum(p.numel() for p in self.head.parameters())
