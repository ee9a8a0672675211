"""Brief training of one design on one task (the low-compute regime of the design-space paper)."""

from __future__ import annotations

import hashlib
import json
import math
import platform
import resource
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from .backbones import Backbone
from .data import collate, epoch_batches, length_bucketed_batches, tokenise
from .errors import invalid
from .metrics import compute_metrics, main_score
from .model import PETModel
from .plan import Plan, compile
from .space import Design
from .tasks import TaskSpec, get_task

#: Learning rates per strategy. Prefixes want a larger step (Li & Liang; He et al. 2022).
DEFAULT_LR = {"lora": 2e-3, "adapter": 2e-3, "prefix": 1e-2, "bitfit": 5e-3, "lnfit": 5e-3, "head": 2e-3}


@dataclass(frozen=True)
class Regime:
    """How briefly a design is trained.

    The default (chosen in results/train/regime.md) gives the all-LoRA design at 0.5 % 81.8 % +- 0.9 %
    on SST-2 in ~27 CPU-seconds with full-dev evaluation (MiniLM-L6, one thread).
    """

    n_train: int | None = 2000
    n_dev: int | None = None
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 16
    eval_batch_size: int = 128
    max_length: int = 128
    lr: dict = field(default_factory=lambda: dict(DEFAULT_LR))
    weight_decay: float = 0.0
    warmup: float = 0.06
    grad_clip: float = 1.0
    threads: int | None = None

    def __post_init__(self):
        lr = {**DEFAULT_LR, **(self.lr or {})}
        for k, v in lr.items():
            if not isinstance(v, (int, float)) or not 0 < v < 1:
                raise invalid(f"regime.lr.{k}", v, "a learning rate 0 < lr < 1")
        object.__setattr__(self, "lr", lr)
        for k in ("n_train", "n_dev", "max_steps"):
            v = getattr(self, k)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise invalid(f"regime.{k}", v, "a positive integer or null (all)")
        if not self.epochs > 0:
            raise invalid("regime.epochs", self.epochs, "a positive number")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise invalid("regime.batch_size", self.batch_size, "a positive integer")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("threads")  # how fast, not what: not part of the regime's identity
        return d

    @classmethod
    def from_dict(cls, d: dict | None) -> Regime:
        d = dict(d or {})
        known = {f for f in cls.__dataclass_fields__}
        for k in d:
            if k not in known:
                raise invalid(f"regime.{k}", d[k], "fields " + ", ".join(sorted(known)))
        return cls(**d)

    @property
    def id(self) -> str:
        return hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:10]


@dataclass
class TrialResult:
    status: str  # ok | diverged | failed | infeasible
    task: str
    seed: int
    metrics: dict = field(default_factory=dict)
    score: float | None = None
    trainable_params: int = 0
    plan_params: int = 0
    head_params: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    steps: int = 0
    seconds_train: float = 0.0
    seconds_eval: float = 0.0
    peak_mem_mb: float = 0.0
    n_train: int = 0
    n_dev: int = 0
    final_loss: float | None = None
    error: str | None = None
    traceback: str | None = None
    versions: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def versions() -> dict:
    import transformers

    from . import __version__

    return {
        "designspace": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def _param_groups(model: PETModel, regime: Regime) -> list[dict]:
    groups: dict[str, list] = {}
    for module in model.pet.pets.values():
        groups.setdefault(module.strategy, []).extend(p for p in module.parameters() if p.requires_grad)
    groups["head"] = list(model.head.parameters())
    return [{"params": ps, "lr": regime.lr[s], "name": s} for s, ps in groups.items() if ps]


@contextmanager
def torch_threads(n: int | None):
    """Run with ``n`` intra-op threads (None: as set), then restore: a worker's setting is its pool's."""
    before = torch.get_num_threads()
    if n and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@torch.inference_mode()
def evaluate_model(model: PETModel, examples, regime: Regime, pad_id: int, regression: bool, device):
    """Predictions, labels and real tokens on ``examples``, in length-sorted batches (least padding)."""
    model.eval()
    preds, labels, tokens = [], [], 0
    for batch in length_bucketed_batches(examples, regime.eval_batch_size, seed=0, shuffle=False):
        b = collate(batch, pad_id, device, regression)
        out = model(**b)
        preds.append(out.squeeze(-1) if regression else out.argmax(-1))
        labels.append(b["labels"])
        tokens += int(b["attention_mask"].sum())
    return torch.cat(preds).float().cpu().numpy(), torch.cat(labels).cpu().numpy(), tokens


def fit(
    model: nn.Module,
    backbone: Backbone,
    param_groups: list[dict],
    batches: list,
    spec: TaskSpec,
    regime: Regime,
    result: TrialResult,
    progress: Callable[[int, int, float], None] | None = None,
) -> None:
    """Train ``param_groups`` of ``model`` on ``batches`` in place, recording steps, tokens and loss.

    AdamW with linear warmup and decay, gradients clipped to ``regime.grad_clip`` (0: off). A NaN or
    inf loss, or parameters that became non-finite, set ``result.status = "diverged"`` and stop.
    """
    from transformers import get_linear_schedule_with_warmup

    device = next(backbone.model.parameters()).device
    pad_id = pad_token_id(backbone)
    opt = torch.optim.AdamW(param_groups, weight_decay=regime.weight_decay)
    sched = get_linear_schedule_with_warmup(opt, int(regime.warmup * len(batches)), len(batches))
    loss_fn = nn.MSELoss() if spec.is_regression else nn.CrossEntropyLoss()
    params = [p for g in param_groups for p in g["params"]]
    model.train()
    backbone.model.eval()  # frozen backbone: no dropout in it, like the features it was trained for
    t0 = time.perf_counter()
    for step, batch in enumerate(batches):
        b = collate(batch, pad_id, device, spec.is_regression)
        out = model(b["input_ids"], b["attention_mask"])
        loss = loss_fn(out.squeeze(-1), b["labels"]) if spec.is_regression else loss_fn(out, b["labels"])
        value = loss.item()
        if not math.isfinite(value):
            result.status, result.error = "diverged", f"loss became {value} at step {step}"
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if regime.grad_clip:
            nn.utils.clip_grad_norm_(params, regime.grad_clip)
        opt.step()
        sched.step()
        result.steps = step + 1
        result.tokens += int(b["attention_mask"].sum())
        result.padded_tokens += b["attention_mask"].numel()
        result.final_loss = value
        if progress:
            progress(step + 1, len(batches), value)
    result.seconds_train = time.perf_counter() - t0
    # The last step's loss was finite, but the update it made may not be: never score NaN weights.
    if result.status == "ok" and not all(bool(torch.isfinite(p).all()) for p in params):
        result.status, result.error = "diverged", f"parameters became non-finite at step {result.steps - 1}"


def pad_token_id(backbone: Backbone) -> int:
    tok = backbone.tokenizer
    return tok.pad_token_id if tok is not None and tok.pad_token_id is not None else 0


def train_design(
    design: Design | Plan,
    backbone: Backbone,
    task: str,
    regime: Regime | None = None,
    seed: int = 0,
    data_seed: int | None = None,
    data_dir=None,
    hub: bool = False,
    keep_model: bool = False,
    progress: Callable[[int, int, float], None] | None = None,
) -> TrialResult | tuple[TrialResult, PETModel]:
    """Attach ``design`` to ``backbone``, train it briefly on ``task`` and evaluate on dev.

    ``seed`` sets the initialisation; ``data_seed`` (default: ``seed``) sets the training subset and
    the batch order, so that designs compared within a stage can see the same data (paired runs).
    A NaN or inf loss ends the trial with status ``diverged``; it does not raise.
    """
    regime = regime or Regime()
    spec = get_task(task)
    data_seed = seed if data_seed is None else data_seed
    device = next(backbone.model.parameters()).device
    plan = design if isinstance(design, Plan) else compile(design, backbone)
    result = TrialResult(status="ok", task=spec.name, seed=seed, plan_params=plan.params, versions=versions())
    pad_id = pad_token_id(backbone)
    train = tokenise(spec, "train", backbone.tokenizer, regime.max_length, regime.n_train, data_seed, data_dir, hub)
    dev = tokenise(spec, "dev", backbone.tokenizer, regime.max_length, regime.n_dev, 0, data_dir, hub)
    result.n_train, result.n_dev = len(train), len(dev)

    with torch_threads(regime.threads):
        torch.manual_seed(seed)
        model = PETModel(backbone, plan, num_labels=spec.num_labels)
        try:
            result.trainable_params = model.pet_params()
            result.head_params = model.head_params()
            batches = epoch_batches(train, regime.batch_size, regime.epochs, data_seed, regime.max_steps)
            fit(model, backbone, _param_groups(model, regime), batches, spec, regime, result, progress)
            if result.status == "ok":
                t0 = time.perf_counter()
                preds, labels, _ = evaluate_model(model, dev, regime, pad_id, spec.is_regression, device)
                result.seconds_eval = time.perf_counter() - t0
                result.metrics = compute_metrics(spec, preds, labels)
                result.score = main_score(spec, result.metrics)
        except Exception as e:  # a failed trial is a result, recorded with its traceback
            result.status = "failed"
            result.error = f"{type(e).__name__}: {e}"
            result.traceback = traceback.format_exc()
        finally:
            result.peak_mem_mb = peak_memory_mb(device)
            if not keep_model:
                model.pet.detach()
    if keep_model:
        return result, model
    return result


def with_lr(regime: Regime, **lr) -> Regime:
    return replace(regime, lr={**regime.lr, **lr})
