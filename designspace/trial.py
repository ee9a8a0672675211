"""One trial: what to run (:class:`TrialSpec`, whose ``key`` covers everything that changes the
outcome) and what came of it (:class:`TrialRecord`). The store, the pool, the refiner, the report
and the plots all read and write these two types; nothing else describes a trial. No torch here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .errors import DesignSpaceError, check_choice, check_int, invalid
from .plan import DEFAULT_BUDGET, check_budget
from .regime import Regime
from .space import Design

EVAL_SPLITS = ("dev", "select")
KINDS = ("train", "search", "full")


class Status(str, Enum):
    """How a trial ended. ``lost`` is the infrastructure's failure (a worker died, a time-out, the
    driver stopped): it says nothing of the design and is run again; the others are results."""

    OK = "ok"
    DIVERGED = "diverged"  # the loss or the weights became NaN/inf
    INFEASIBLE = "infeasible"  # the design does not fit the budget on this backbone
    FAILED = "failed"  # training raised
    LOST = "lost"

    @property
    def final(self) -> bool:
        return self is not Status.LOST

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class TrialSpec:
    """One trial: a design (or a compiled structure) trained on a task with a seed, and every input
    that changes its result. Two specs with the same ``key`` are the same trial."""

    task: str
    design: Design | None = None
    plan: dict | None = None  # a compiled structure (S3PET) when there is no design
    budget: float = DEFAULT_BUDGET
    seed: int = 0
    data_seed: int = 0
    regime: Regime = field(default_factory=Regime)
    backbone: str = "minilm-l6"
    backbone_id: str = ""  # what identifies the weights (backbones.offline.backbone_fingerprint)
    data_id: str = ""  # content hash of the task's files (tasks.data_fingerprint)
    data_dir: str | None = None  # where to read them: not identity, the content hash is
    eval_split: str = "dev"  # 'select': a split carved from train (decisions); 'dev': final reports
    n_select: int = 0  # examples in the selection split, carved from train before the training subset
    options: dict = field(default_factory=dict)  # plan options (roles, lora_scale, ...)
    role_map: dict | None = None
    kind: str = "train"  # 'search': an S3PET search (its result is a structure); 'full': full fine-tuning
    search: dict | None = None  # the search's settings (kind 'search')
    label: str = ""  # for people (a method name); not identity

    def __post_init__(self):
        if (self.design is None) == (self.plan is None) and self.kind == "train":
            raise invalid("spec.design", self.design, "a Design, or a plan, not both")
        if self.kind == "full" and (self.design is not None or self.plan is not None):
            raise invalid("spec.design", self.design, "none for full fine-tuning (every weight trains)")
        if self.design is not None and not isinstance(self.design, Design):
            raise invalid("spec.design", type(self.design).__name__, "a Design")
        if not isinstance(self.regime, Regime):
            raise invalid("spec.regime", type(self.regime).__name__, "a Regime")
        check_int(self.seed, "spec.seed", 0)
        check_int(self.data_seed, "spec.data_seed", 0)
        check_int(self.n_select, "spec.n_select", 0)
        check_choice(self.eval_split, "spec.eval_split", EVAL_SPLITS)
        check_choice(self.kind, "spec.kind", KINDS)
        object.__setattr__(self, "budget", check_budget(self.budget, "spec.budget"))
        if self.eval_split == "select" and not self.n_select:
            raise invalid("spec.n_select", self.n_select, "a selection split size >= 1 when eval_split is 'select'")
        from .tasks import get_task

        object.__setattr__(self, "task", get_task(self.task).name)
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", str(self.data_dir))

    # --- identity ---------------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """Every input that changes the outcome, as plain JSON (the key is its hash)."""
        d = {
            "task": self.task,
            "design": self.design.to_dict() if self.design else None,
            "plan": _plan_identity(self.plan),
            "budget": self.budget,
            "seed": self.seed,
            "data_seed": self.data_seed,
            "regime": self.regime_identity(),
            "lr": self.learning_rates(),
            "backbone": self.backbone_id or self.backbone,
            "data": self.data_id,
            "eval": [self.eval_split, self.n_select],
            "options": self.options,
            "role_map": self.role_map,
            "kind": self.kind,
            "search": self.search,
        }
        return {k: v for k, v in d.items() if v not in (None, {}, "")}

    @property
    def key(self) -> str:
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(text.encode()).hexdigest()[:20]

    def regime_identity(self) -> dict[str, Any]:
        """The regime as it changes this trial: how regression targets are learned is no part of a
        classification trial."""
        from .tasks import get_task

        d = self.regime.to_dict()
        if not get_task(self.task).is_regression:
            d.pop("targets", None)
        return d

    def learning_rates(self) -> dict[str, float]:
        """The rate of every strategy this trial trains (and the head): defaults can change between
        versions, and a different rate is a different trial."""
        names = {"backbone"} if self.kind == "full" else set()
        if self.design is not None:
            names = {s for g in self.design.tuned_groups for s in self.design.strategies[g - 1]}
        elif self.plan is not None:
            names = {m["strategy"] for m in self.plan.get("modules", [])}
        return {n: self.regime.lr_for(n) for n in sorted(names | {"head"})}

    @property
    def design_id(self) -> str:
        if self.kind == "full":
            return "full"
        if self.design is not None:
            return self.design.id
        return "plan-" + hashlib.sha1(json.dumps(_plan_identity(self.plan), sort_keys=True).encode()).hexdigest()[:8]

    # --- serialisation ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["design"] = self.design.to_dict() if self.design else None
        d["regime"] = self.regime.to_dict() | ({"threads": self.regime.threads} if self.regime.threads else {})
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrialSpec:
        from .errors import check_keys

        check_keys(d, [f.name for f in dataclasses.fields(cls)], "spec.")
        d = dict(d)
        if d.get("design") is not None:
            d["design"] = Design.from_dict(d["design"])
        d["regime"] = Regime.from_dict(d.get("regime"))
        return cls(**d)

    def with_(self, **changes) -> TrialSpec:
        return dataclasses.replace(self, **changes)


def _plan_identity(plan: dict | None):
    """A plan's identity: its modules, budget and options (not its printable extras)."""
    if plan is None:
        return None
    keep = ("backbone", "n_layers", "budget", "budget_params", "modules", "options")
    options = {k: v for k, v in (plan.get("options") or {}).items() if k != "origin"}
    return {k: (options if k == "options" else plan.get(k)) for k in keep}


@dataclass
class TrialRecord:
    """What a trial produced. ``spec`` says what ran; ``attempts`` is kept by the store."""

    spec: TrialSpec
    status: Status
    score: float | None = None  # the task's main metric on the evaluated split, as a fraction
    metrics: dict = field(default_factory=dict)
    predictions: list | None = None  # per-example predictions on the selection split (paired analyses)
    trainable_params: int = 0
    plan_params: int = 0
    head_params: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    steps: int = 0
    n_train: int = 0
    n_eval: int = 0
    final_loss: float | None = None
    seconds_train: float = 0.0
    seconds_eval: float = 0.0
    peak_mem_mb: float = 0.0
    device: str = ""
    error: str | None = None
    traceback: str | None = None
    versions: dict = field(default_factory=dict)
    result: dict = field(default_factory=dict)  # what else a trial returns (a search: its structure)
    worker: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    attempts: int = 1

    def __post_init__(self):
        try:
            self.status = Status(self.status)
        except ValueError:
            raise invalid("status", self.status, [s.value for s in Status]) from None

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def ok(self) -> bool:
        return self.status is Status.OK and self.score is not None

    def outcome(self) -> dict[str, Any]:
        """Every field but the spec, as plain JSON-ready values."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "spec"}
        d["status"] = self.status.value
        return d

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "spec": self.spec.to_dict(), **self.outcome()}

    @classmethod
    def from_dict(cls, d: dict) -> TrialRecord:
        d = dict(d)
        d.pop("key", None)
        spec = d.pop("spec")
        return cls(spec=spec if isinstance(spec, TrialSpec) else TrialSpec.from_dict(spec), **d)


#: Outcome fields by how the store keeps them (everything else is a JSON column).
OUTCOME_FIELDS = [f for f in dataclasses.fields(TrialRecord) if f.name != "spec"]


def lost(spec: TrialSpec, why: str, **extra) -> TrialRecord:
    """The record of a trial the infrastructure lost (it runs again on the next pass)."""
    return TrialRecord(spec, Status.LOST, error=why, **extra)


__all__ = ["Status", "TrialSpec", "TrialRecord", "OUTCOME_FIELDS", "EVAL_SPLITS", "lost", "DesignSpaceError"]
