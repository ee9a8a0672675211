"""The settings of one S3PET search (no torch here): a search spec's ``search`` dict, validated."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import check_choice, check_float, check_int, dataclass_from_dict, invalid
from .structure import DEFAULT_SIZES, DEFAULT_SPACE, check_space


@dataclass(frozen=True)
class SearchConfig:
    """How a search learns its gates (task, budget, seed and data come from the trial spec).

    The training subset (``n_train`` examples of the task's train split, drawn with the spec's data
    seed) is cut in halves: the candidates' weights and the head learn on one, the gate logits on
    the other (bi-level, as in DARTS and S3Delta). Two phases:

    1. *Warm-up* (``warmup_epochs`` over the weights' half): every gate open, the weights alone
       learn. Every candidate starts as a no-op (LoRA B = 0, adapter up = 0, zero deltas), so before
       this a gate's gradient is zero and the gates cannot tell candidates apart.
    2. *Search* (``epochs`` over the weights' half): each step a weight step with sampled gates,
       then a gate step on the other half. The gates' learning rate ramps up over the first
       ``gate_warmup`` of the search steps and decays linearly to zero (the reference code's
       alpha schedule).

    ``lr_weights``: ``regime`` trains each strategy at the rate its retraining uses (the regime's),
    a number trains every weight at that rate (S3Delta used 3e-4 on T5-large over ~12k steps).
    """

    beta: float = 1.0  # temperature of p = sigmoid((alpha - shift) / beta)
    tau: float = 0.5  # temperature of the binary-concrete samples
    n_train: int = 4000
    batch_size: int = 16
    max_length: int = 128
    warmup_epochs: float = 1.0
    epochs: float = 3.0
    lr_weights: float | str = "regime"
    lr_gates: float = 0.1
    gate_warmup: float = 0.1
    anneal: float = 0.5  # share of the search steps over which the budget falls to its target
    anneal_from: float = 0.5  # the budget the search starts from, as a share of the pool
    order: int = 1  # 2: DARTS' unrolled (second-order) gate gradient
    space: dict = field(default_factory=lambda: dict(DEFAULT_SPACE))
    sizes: dict = field(default_factory=lambda: dict(DEFAULT_SIZES))
    options: dict = field(default_factory=dict)  # strategy options carried by the plans (lora_scale, ...)
    snapshots: int = 24  # p is recorded this many times over the search (entropy, heat maps over time)

    def __post_init__(self):
        check_float(self.beta, "search.beta", 0.0, open_low=True)
        check_float(self.tau, "search.tau", 0.0, open_low=True)
        check_int(self.n_train, "search.n_train", 4)
        check_int(self.batch_size, "search.batch_size", 1)
        check_int(self.max_length, "search.max_length", 2)
        check_float(self.warmup_epochs, "search.warmup_epochs", 0.0, 100.0)
        check_float(self.epochs, "search.epochs", 0.0, 100.0, open_low=True)
        if self.lr_weights != "regime":
            check_float(self.lr_weights, "search.lr_weights", 0.0, 1.0, open_low=True)
        check_float(self.lr_gates, "search.lr_gates", 0.0, 10.0, open_low=True)
        check_float(self.gate_warmup, "search.gate_warmup", 0.0, 1.0, open_high=True)
        check_float(self.anneal, "search.anneal", 0.0, 1.0)
        check_float(self.anneal_from, "search.anneal_from", 0.0, 1.0, open_low=True, open_high=True)
        check_choice(self.order, "search.order", (1, 2))
        check_int(self.snapshots, "search.snapshots", 2, 1000)
        object.__setattr__(self, "space", check_space(self.space, "search.space"))
        sizes = {**DEFAULT_SIZES, **(self.sizes or {})}
        for k, v in sizes.items():
            if k not in DEFAULT_SIZES or not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise invalid(f"search.sizes.{k}", v, "lora: <rank >= 1>, adapter: <bottleneck >= 1>")
        object.__setattr__(self, "sizes", sizes)
        from ..plan import check_options

        object.__setattr__(self, "options", check_options(self.options))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["space"] = {r: list(ks) for r, ks in self.space.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict | None, source: str | None = None) -> SearchConfig:
        return dataclass_from_dict(cls, d, "search.", source)
