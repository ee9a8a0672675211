"""How briefly a design is trained (the low-compute regime of the design-space paper). No torch here."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

from .errors import check_choice, check_float, check_int, dataclass_from_dict, invalid
from .strategies import registry

HEAD_LR = 2e-3
#: How a regression task's labels may be learned (``Regime.targets``).
TARGETS = ("raw", "standard")
#: Full fine-tuning's rate for the backbone's own weights (the usual 2e-5 .. 5e-5 for BERT-size models).
BACKBONE_LR = 5e-5


@dataclass(frozen=True)
class Regime:
    """How briefly a design is trained.

    The default (chosen in results/train/regime.md) gives the all-LoRA design at 0.5 % 81.8 % +- 0.9 %
    on SST-2 in ~27 CPU-seconds with full-dev evaluation (MiniLM-L6, one thread). ``lr`` holds
    per-strategy overrides (and ``head``); every other strategy trains at its own default rate.
    """

    n_train: int | None = 2000
    n_dev: int | None = None  # dev examples scored (None: all); the selection split is scored whole
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 16
    eval_batch_size: int = 128
    max_length: int = 128
    lr: dict = field(default_factory=dict)
    weight_decay: float = 0.0
    warmup: float = 0.06
    grad_clip: float = 1.0
    #: A regression task's labels as the model learns them: ``raw`` (the label itself, MSE on it, as
    #: HF's run_glue) or ``standard`` ((label - mean) / sd over the trial's training examples; the head
    #: is rescaled after training, so predictions and exports are labels again). In the brief regime
    #: raw STS-B targets leave some seeds at the constant prediction (results/transfer/README.md).
    #: Classification ignores it.
    targets: str = "raw"
    threads: int | None = None  # how fast, not what: not part of the regime's identity

    def __post_init__(self):
        for k, v in (self.lr or {}).items():
            if k not in ("head", "backbone") and k not in registry.names():
                raise invalid(f"regime.lr.{k}", v, "strategies " + ", ".join(registry.names()) + ", head, backbone")
            check_float(v, f"regime.lr.{k}", 0.0, 1.0, open_low=True, open_high=True)
        object.__setattr__(self, "lr", dict(self.lr or {}))
        for k in ("n_train", "n_dev", "max_steps"):
            check_int(getattr(self, k), f"regime.{k}", 1, none=True)
        check_float(self.epochs, "regime.epochs", 0.0, 1000.0, open_low=True)
        check_int(self.batch_size, "regime.batch_size", 1)
        check_int(self.eval_batch_size, "regime.eval_batch_size", 1)
        check_int(self.max_length, "regime.max_length", 2, 100_000)
        check_float(self.weight_decay, "regime.weight_decay", 0.0, 1.0)
        check_float(self.warmup, "regime.warmup", 0.0, 1.0, open_high=True)
        check_float(self.grad_clip, "regime.grad_clip", 0.0)
        check_int(self.threads, "regime.threads", 1, none=True)
        check_choice(self.targets, "regime.targets", TARGETS)
        if self.n_train is not None and self.epochs * self.n_train < self.batch_size and not self.max_steps:
            raise invalid("regime.epochs", self.epochs,
                          f"at least one batch: epochs * n_train >= batch_size ({self.batch_size})")

    def lr_for(self, name: str) -> float:
        """The learning rate of a strategy's parameters (``head``: the task head; ``backbone``: the
        backbone's own weights under full fine-tuning)."""
        if name in self.lr:
            return float(self.lr[name])
        return {"head": HEAD_LR, "backbone": BACKBONE_LR}.get(name) or registry.get(name).lr

    def to_dict(self) -> dict:
        """The regime as plain JSON; ``targets`` only where it is not ``raw``, so that regimes written
        before it existed keep their identity (and their stored trials)."""
        d = asdict(self)
        d.pop("threads")
        if d["targets"] == "raw":
            d.pop("targets")
        return d

    @classmethod
    def from_dict(cls, d: dict | None, source: str | None = None) -> Regime:
        return dataclass_from_dict(cls, d, "regime.", source)

    @property
    def id(self) -> str:
        return hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:10]


def with_lr(regime: Regime, **lr) -> Regime:
    return replace(regime, lr={**regime.lr, **lr})
