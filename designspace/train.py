"""Brief training of one design on one task (the low-compute regime of the design-space paper)."""

from __future__ import annotations

import math
import platform
import resource
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch import nn

from .backbones import Backbone
from .data import collate, epoch_batches, length_bucketed_batches, tokenise
from .errors import DesignSpaceError
from .metrics import compute_metrics, main_score
from .model import PETModel
from .plan import DEFAULT_BUDGET, Plan, compile_plan
from .regime import Regime
from .space import Design
from .tasks import get_task
from .trial import Status, TrialRecord, TrialSpec


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


def param_groups(model: PETModel, regime: Regime) -> list[dict]:
    """One AdamW group per strategy (and the head), each at the regime's rate for it."""
    return design_groups(model.pet, model.head, regime)


def design_groups(attached, head: nn.Module, regime: Regime) -> list[dict]:
    """The AdamW groups of one design (its attached PET modules and its head) under ``regime``."""
    groups: dict[str, list] = {}
    for module in attached.pets.values():
        groups.setdefault(module.strategy_name, []).extend(p for p in module.parameters() if p.requires_grad)
    groups["head"] = list(head.parameters())
    return [{"params": ps, "lr": regime.lr_for(s), "name": s, "weight_decay": regime.weight_decay}
            for s, ps in groups.items() if ps]


def to_device(batch: list, pad_id: int, device, regression: bool) -> dict[str, torch.Tensor]:
    """``collate`` on the CPU, then to ``device``: from pinned memory without waiting on a GPU, whose
    queue a plain host-to-device copy of pageable memory would drain at every step."""
    b = collate(batch, pad_id, "cpu", regression)
    if torch.device(device).type != "cuda":
        return b
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in b.items()}


#: Steps between two host syncs of the loss (and at the end): the check is cheap on a CPU but stalls
#: a GPU's queue.
CHECK_EVERY = 16


def optimiser(groups: list[dict], regime: Regime, n_steps: int):
    """AdamW over ``groups`` with linear warmup and decay over ``n_steps``."""
    from transformers import get_linear_schedule_with_warmup

    opt = torch.optim.AdamW(groups, weight_decay=regime.weight_decay)
    return opt, get_linear_schedule_with_warmup(opt, int(regime.warmup * n_steps), n_steps)


def loss_function(task) -> nn.Module:
    return nn.MSELoss() if task.is_regression else nn.CrossEntropyLoss()


def task_loss(loss_fn: nn.Module, out: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    return loss_fn(out.squeeze(-1), labels) if regression else loss_fn(out, labels)


@dataclass(frozen=True)
class Targets:
    """The labels a regression head learns (``Regime.targets``): z = (label - mean) / sd over the
    trial's training examples under ``standard``; after training :meth:`fold` rescales the head's last
    linear layer, so the model predicts labels again (scores, stored predictions, exports). The
    identity for ``raw`` targets and for classification."""

    mean: float = 0.0
    sd: float = 1.0

    @classmethod
    def of(cls, task, regime: Regime, train: list) -> Targets:
        if not task.is_regression or regime.targets == "raw" or not train:
            return cls()
        labels = [float(e.label) for e in train]
        sd = statistics.pstdev(labels)
        return cls(statistics.fmean(labels), sd if sd > 0 else 1.0)

    @property
    def raw(self) -> bool:
        return self.mean == 0.0 and self.sd == 1.0

    def learned(self, examples: list) -> list:
        """``examples`` with the labels the model learns."""
        if self.raw:
            return examples
        return [replace(e, label=(float(e.label) - self.mean) / self.sd) for e in examples]

    def fold(self, head: nn.Module) -> None:
        """Make ``head`` output mean + sd * z: its last linear layer's weight times sd, bias sd * b + mean."""
        if self.raw:
            return
        linear = [m for m in head.modules() if isinstance(m, nn.Linear)][-1]
        with torch.no_grad():
            linear.weight.mul_(self.sd)
            linear.bias.mul_(self.sd).add_(self.mean)


def training_batches(task, regime: Regime, train: list, data_seed: int) -> tuple[list, Targets]:
    """A trial's training batches, carrying the labels it learns, and the :class:`Targets` whose
    ``fold`` turns its head back to labels after training."""
    targets = Targets.of(task, regime, train)
    return epoch_batches(targets.learned(train), regime.batch_size, regime.epochs, data_seed,
                         regime.max_steps), targets


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


def evaluate_model(model: nn.Module, examples, regime: Regime, pad_id: int, regression: bool, device):
    """Predictions and labels on ``examples`` in their original order (batches are length-sorted)."""
    preds, gold = predict(model, examples, regime, pad_id, regression, device)
    return preds[0], gold


@torch.inference_mode()
def predict(model: nn.Module, examples, regime: Regime, pad_id: int, regression: bool, device):
    """([predictions of each of the model's outputs], labels) on ``examples`` in their original order.

    A model returns one tensor, or a list of them (a pack: one per design, on the same examples).
    """
    model.eval()
    preds, labels, order = [], [], []
    for batch in length_bucketed_batches(examples, regime.eval_batch_size, seed=0, shuffle=False):
        b = to_device(batch, pad_id, device, regression)
        outs = model(b["input_ids"], b["attention_mask"])
        outs = [outs] if isinstance(outs, torch.Tensor) else outs
        preds.append([out.squeeze(-1) if regression else out.argmax(-1) for out in outs])
        labels.append(b["labels"])
        order += [e.idx for e in batch]
    rank = sorted(range(len(order)), key=lambda i: order[i])
    gold = torch.cat(labels).cpu().numpy()[rank]
    per_output = [torch.cat(p).float().cpu().numpy()[rank] for p in zip(*preds, strict=True)]
    return per_output, gold


def update(loss: torch.Tensor, opt, sched, params: list, grad_clip: float) -> None:
    """One optimiser step: gradients of ``loss``, clipped to ``grad_clip`` (0: off), then the schedule."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    sched.step()


def fit(model: nn.Module, param_groups: list[dict], batches: list, spec_task, regime: Regime, record: TrialRecord,
        pad_id: int, device, progress: Callable[[int, int, float], None] | None = None) -> None:
    """Train ``param_groups`` of ``model`` on ``batches`` in place, recording steps, tokens and loss.

    AdamW with linear warmup and decay, gradients clipped to ``regime.grad_clip`` (0: off). A NaN or
    inf loss, or parameters that became non-finite, set the record's status to diverged and stop.
    """
    opt, sched = optimiser(param_groups, regime, len(batches))
    loss_fn = loss_function(spec_task)
    params = [p for g in param_groups for p in g["params"]]
    model.train()
    model.backbone.eval()  # frozen backbone: no dropout in it, like the features it was trained for
    t0 = time.perf_counter()
    tokens = padded = 0
    for step, batch in enumerate(batches):
        b = to_device(batch, pad_id, device, spec_task.is_regression)
        loss = task_loss(loss_fn, model(b["input_ids"], b["attention_mask"]), b["labels"], spec_task.is_regression)
        update(loss, opt, sched, params, regime.grad_clip)
        tokens += b["attention_mask"].sum()
        padded += b["attention_mask"].numel()
        if progress:
            progress(step + 1, len(batches), float(loss.detach()))
        # One host sync every 16 steps (and at the end), not per step: the loss check is cheap on a
        # CPU but stalls a GPU's queue.
        if step % 16 == 15 or step == len(batches) - 1:
            value = float(loss.detach())
            if not math.isfinite(value):
                record.status, record.error = Status.DIVERGED, f"loss became {value} by step {step}"
                break
    record.steps, record.final_loss = step + 1, float(loss.detach())
    record.tokens, record.padded_tokens = int(tokens), int(padded)
    record.seconds_train = time.perf_counter() - t0
    # The last loss was finite, but the update it made may not be: never score NaN weights.
    if record.status is Status.OK and not all(bool(torch.isfinite(p).all()) for p in params):
        record.status, record.error = Status.DIVERGED, f"parameters became non-finite by step {record.steps - 1}"


def pad_token_id(backbone: Backbone) -> int:
    tok = backbone.tokenizer
    return tok.pad_token_id if tok is not None and tok.pad_token_id is not None else 0


def spec_plan(spec: TrialSpec, backbone: Backbone) -> Plan:
    """The plan a spec trains: its structure, or its design compiled at its budget on ``backbone``."""
    if spec.plan is not None:
        return Plan.from_dict(spec.plan)
    return compile_plan(spec.design, backbone, spec.budget, spec.options)


def spec_data(spec: TrialSpec, backbone: Backbone, hub: bool = False):
    """(training examples, evaluated examples) of a spec, tokenised once per process."""
    r = spec.regime
    tok = backbone.tokenizer
    train = tokenise(spec.task, "train", tok, r.max_length, r.n_train, spec.data_seed, spec.data_dir, hub, spec.n_select)
    n_eval = r.n_dev if spec.eval_split == "dev" else None
    evaluated = tokenise(spec.task, spec.eval_split, tok, r.max_length, n_eval, 0, spec.data_dir, hub, spec.n_select)
    return train, evaluated


def score_record(record: TrialRecord, task, preds, labels) -> None:
    """The record's metrics and score from predictions (and the predictions on a selection split)."""
    record.metrics = {k: float(v) for k, v in compute_metrics(task, preds, labels).items()}
    record.score = main_score(task, record.metrics)
    if record.spec.eval_split == "select":
        record.predictions = [round(float(p), 5) for p in preds]


def run_spec(spec: TrialSpec, backbone: Backbone, keep_model: bool = False, hub: bool = False,
             progress: Callable[[int, int, float], None] | None = None):
    """Train ``spec`` on ``backbone`` and score it; never raises for the trial's own failure.

    ``seed`` sets the initialisation (each module's weights from its own seed, the head's from the
    seed alone) and the head's dropout masks (its own generator: :class:`~designspace.model.SeededDropout`);
    ``data_seed`` the training subset and batch order, so that designs compared in a stage see the
    same data (common random numbers). ``train_pack.run_pack`` trains several specs in one pass to
    the same results.
    """
    task = get_task(spec.task)
    device = next(backbone.model.parameters()).device
    record = TrialRecord(spec, Status.OK, versions=versions(), device=str(device))
    try:
        plan = spec_plan(spec, backbone)
    except DesignSpaceError as e:
        record.status, record.error = Status.INFEASIBLE, str(e)
        return (record, None) if keep_model else record
    record.plan_params = plan.params
    pad_id = pad_token_id(backbone)
    model = None
    with torch_threads(spec.regime.threads):
        try:
            train, evaluated = spec_data(spec, backbone, hub)
            record.n_train, record.n_eval = len(train), len(evaluated)
            model = PETModel(backbone, plan, num_labels=task.num_labels, seed=spec.seed)
            record.trainable_params, record.head_params = model.pet_params(), model.head_params()
            batches, targets = training_batches(task, spec.regime, train, spec.data_seed)
            torch.manual_seed(spec.seed)  # LoRA's dropout (option lora_dropout) draws from the global generator
            fit(model, param_groups(model, spec.regime), batches, task, spec.regime, record, pad_id, device, progress)
            targets.fold(model.head)
            if record.status is Status.OK:
                t0 = time.perf_counter()
                preds, labels = evaluate_model(model, evaluated, spec.regime, pad_id, task.is_regression, device)
                record.seconds_eval = time.perf_counter() - t0
                score_record(record, task, preds, labels)
        except Exception as e:  # a failed trial is a result, recorded with its traceback
            record.status, record.error = Status.FAILED, f"{type(e).__name__}: {e}"
            record.traceback = traceback.format_exc()
        finally:
            record.peak_mem_mb = peak_memory_mb(device)
            if model is not None and not keep_model:
                model.pet.detach()
    return (record, model) if keep_model else record


def train_design(
    design: Design | Plan,
    backbone: Backbone,
    task: str,
    regime: Regime | None = None,
    seed: int = 0,
    data_seed: int | None = None,
    budget: float | None = None,
    data_dir=None,
    eval_split: str = "dev",
    n_select: int = 0,
    options: dict | None = None,
    hub: bool = False,
    keep_model: bool = False,
    progress: Callable[[int, int, float], None] | None = None,
):
    """Attach ``design`` (compiled at ``budget``, default 0.5 %) or a ready plan to ``backbone``, train
    it briefly on ``task`` and score it on dev (or on a selection split carved from train).

    Returns the :class:`TrialRecord` (and the trained model with ``keep_model``). A NaN or inf loss
    ends the trial as ``diverged``; it does not raise.
    """
    if isinstance(design, Plan):
        if budget is not None and abs(budget - design.budget) > 1e-12:
            raise DesignSpaceError(f"budget={budget} differs from the plan's {design.budget}; recompile the design")
        kw = {"plan": design.to_dict(), "budget": design.budget}
    else:
        kw = {"design": design, "budget": DEFAULT_BUDGET if budget is None else budget, "options": options or {}}
    spec = TrialSpec(task=task, regime=regime or Regime(), seed=seed, data_seed=seed if data_seed is None else data_seed,
                     backbone=backbone.name, data_dir=data_dir, eval_split=eval_split, n_select=n_select, **kw)
    return run_spec(spec, backbone, keep_model=keep_model, hub=hub, progress=progress)
