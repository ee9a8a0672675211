"""Train a pack of designs in one pass over one frozen backbone (see ``pack.py`` for what may share one).

Each batch is repeated K times; rows [kB, (k+1)B) belong to design k (``attach.Rows``), whose PET
modules act on those rows only, and whose own head reads them. The loss is the sum of the designs'
mean losses, so every design's gradients are those it has alone; each design has its own AdamW groups
(its regime's rates), its own gradient clipping and its own dropout generator, under the one shared
schedule. A design whose loss becomes non-finite leaves the pack at the next check; the rest go on.

Shared frozen layers: no design acts below its lowest PET module, the pack's *cut*. Layers below the
cut run once on the B rows of the batch instead of K times (their inputs are sliced to the first
copy), and the cut layer's inputs are repeated K times (every batch-shaped argument: hidden states,
masks, position biases or embeddings, an encoder's states). Nothing is kept between batches, so this
costs no memory; below the cut nothing needs gradients, so it saves (K - 1) / K of those layers'
forward FLOPs and no backward ones. Nothing is cached across batches: every epoch reshuffles its
batches (``data.epoch_batches``), so a batch never comes back within a trial, and caching per example
would mean re-padding hidden states and rebuilding batch-shaped tensors (T5's position bias) per
family. Such a cache would hold the cut layer's inputs of every training example: sum of lengths x
width x 4 bytes, 41 MB for MiniLM-L6 on 2000 SST-2 examples.

Where it pays (benchmarks/shared_pass.py): on a GPU, where a small backbone's step is bound by kernel
launches, K = 8 trained 1.95x the designs per hour on an H100. On a CPU the GEMMs already run near
their peak at one design's batch, so a pack gains only where its designs leave lower layers frozen.
"""

from __future__ import annotations

import functools
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from .attach import Rows, attach
from .backbones import Backbone
from .errors import DesignSpaceError
from .model import FrozenBody, new_head
from .pack import check_pack, pack_key
from .plan import Plan
from .regime import Regime
from .tasks import get_task
from .train import (
    CHECK_EVERY,
    design_groups,
    loss_function,
    optimiser,
    pad_token_id,
    peak_memory_mb,
    predict,
    run_spec,
    score_record,
    spec_data,
    spec_plan,
    task_loss,
    to_device,
    torch_threads,
    training_batches,
    versions,
)
from .trial import Status, TrialRecord, TrialSpec


class PackModel(FrozenBody):
    """Designs on one frozen backbone, each on its own rows of a batch repeated once per design.

    ``add`` attaches a design (its plan, its seed) and its head; ``forward`` returns the logits of
    every active design, in order; ``drop`` takes a design out; ``close`` leaves the backbone clean.
    """

    def __init__(self, backbone: Backbone, num_labels: int, dropout: float = 0.1, share_frozen: bool = True):
        super().__init__(backbone)
        self.source, self.num_labels, self.dropout = backbone, num_labels, dropout
        self.share_frozen = share_frozen
        self.designs = nn.ModuleList()
        self.heads = nn.ModuleList()
        self.rows: list[Rows] = []
        self.active: list[int] = []
        self._pass: tuple[int, int, int] | None = None  # (B, K, cut) while a shared pass runs
        self._memo: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles: list = []

    # --- designs ------------------------------------------------------------------------------------
    def add(self, plan: Plan, seed: int) -> int:
        """Attach ``plan`` (initialised from ``seed``) with its own head; its index in the pack."""
        rows = Rows()
        attached = attach(self.source, plan, seed, rows)
        device = next(self.backbone.parameters()).device
        head = new_head(self.source.hidden_size, self.num_labels, seed, self.dropout, device)
        self.designs.append(attached)
        self.heads.append(head)
        self.rows.append(rows)
        self.active.append(len(self.designs) - 1)
        if self.share_frozen and not self._handles:
            for layer in self.source.layers:
                hook = functools.partial(self._share, layer.index)
                self._handles.append(layer.module.register_forward_pre_hook(hook, with_kwargs=True))
        return len(self.designs) - 1

    def drop(self, index: int) -> None:
        """Take design ``index`` out of the pass (its modules leave the backbone; its record stays)."""
        if index in self.active:
            self.designs[index].detach()
            self.active.remove(index)

    def close(self) -> None:
        for index in list(self.active):
            self.drop(index)
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def pet_params(self, index: int) -> int:
        return self.designs[index].effective_params()

    def head_params(self, index: int) -> int:
        return sum(p.numel() for p in self.heads[index].parameters())

    @property
    def cut(self) -> int:
        """The lowest layer any active design acts on: layers below it are the same for all designs."""
        layers = [m.layer for i in self.active for m in self.designs[i].plan.modules]
        return min(layers, default=len(self.source.layers))

    # --- the pass -----------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_) -> list[torch.Tensor]:
        b, k = input_ids.shape[0], len(self.active)
        for j, index in enumerate(self.active):
            # One design owns every row (the fast path of a route); else its block of rows.
            self.rows[index].span = None if k == 1 else (j * b, (j + 1) * b)
        cut = self.cut
        self._pass = (b, k, cut) if self.share_frozen and k > 1 and cut > 0 else None
        try:
            features = self.features(input_ids.repeat(k, 1), attention_mask.repeat(k, 1))
        finally:
            self._pass, self._memo = None, {}
        return [self.heads[index](features[j * b:(j + 1) * b]) for j, index in enumerate(self.active)]

    def _share(self, index: int, module, args, kwargs):
        """Pre-hook of every layer: below the cut keep the first copy of each batch-shaped input (the K
        copies are identical there); at and above it, repeat any input still holding one copy."""
        if self._pass is None:
            return None
        b, k, cut = self._pass
        fn = functools.partial(_first_copy, b, k) if index < cut else self._repeat
        return _map_batch(fn, args), {name: _map_batch(fn, value) for name, value in kwargs.items()}

    def _repeat(self, t: torch.Tensor) -> torch.Tensor:
        b, k, _ = self._pass
        if t.shape[0] != b:
            return t
        # The same mask or encoder state goes to every layer: repeat it once per pass.
        hit = self._memo.get(id(t))
        if hit is None or hit[0] is not t:
            hit = self._memo[id(t)] = (t, t.repeat(k, *([1] * (t.dim() - 1))))
        return hit[1]


def _first_copy(b: int, k: int, t: torch.Tensor) -> torch.Tensor:
    return t[:b] if t.shape[0] == k * b else t


def _map_batch(fn, value):
    """``fn`` on every tensor of rank >= 2 in ``value`` (tuples and lists too); rank-1 tensors (cache
    positions) and everything else pass unchanged."""
    if isinstance(value, torch.Tensor):
        return fn(value) if value.dim() >= 2 else value
    if isinstance(value, (tuple, list)):
        return type(value)(_map_batch(fn, v) for v in value)
    return value


# --- training ----------------------------------------------------------------------------------------
@dataclass
class _Design:
    """One design of a pack while it trains: its place in the model, its spec, record and AdamW groups."""

    index: int  # in the model
    position: int  # in the pack's specs
    spec: TrialSpec
    record: TrialRecord
    groups: list[dict]
    params: list = field(default_factory=list)

    def __post_init__(self):
        self.params = [p for g in self.groups for p in g["params"]]


def fit_pack(model: PackModel, designs: list[_Design], batches: list, task, regime: Regime, pad_id: int, device,
             progress: Callable[[int, int, float], None] | None = None) -> float:
    """Train every design of ``model`` on ``batches`` in one pass each step; fill each design's record
    (steps, tokens, final loss, diverged) as ``train.fit`` does alone. Returns the training seconds."""
    opt, sched = optimiser([g for d in designs for g in d.groups], regime, len(batches))
    loss_fn = loss_function(task)
    live = list(designs)  # in the model's active order
    model.train()
    model.backbone.eval()  # frozen backbone: no dropout in it
    t0 = time.perf_counter()
    tokens = padded = 0
    for step, batch in enumerate(batches):
        b = to_device(batch, pad_id, device, task.is_regression)
        outs = model(b["input_ids"], b["attention_mask"])
        losses = [task_loss(loss_fn, out, b["labels"], task.is_regression) for out in outs]
        opt.zero_grad(set_to_none=True)
        # The sum of the designs' mean losses: each design's gradients are those it has alone.
        (losses[0] if len(losses) == 1 else torch.stack(losses).sum()).backward()
        for d in live:
            if d.spec.regime.grad_clip:
                nn.utils.clip_grad_norm_(d.params, d.spec.regime.grad_clip)
        opt.step()
        sched.step()
        tokens += sum(len(e.input_ids) for e in batch)
        padded += len(batch) * max(len(e.input_ids) for e in batch)
        if progress:
            progress(step + 1, len(batches), float(sum(loss.detach() for loss in losses)))
        if step % CHECK_EVERY == CHECK_EVERY - 1 or step == len(batches) - 1:
            values = torch.stack([loss.detach() for loss in losses]).tolist()  # one host sync for all designs
            for d, value in zip(list(live), values, strict=True):
                d.record.steps, d.record.final_loss = step + 1, value
                d.record.tokens, d.record.padded_tokens = tokens, padded
                if not math.isfinite(value):
                    d.record.status, d.record.error = Status.DIVERGED, f"loss became {value} by step {step}"
                    model.drop(d.index)
                    live.remove(d)
            if not live:
                break
    seconds = time.perf_counter() - t0
    # The last loss was finite, but the update it made may not be: never score NaN weights.
    finite = torch.stack([torch.stack([torch.isfinite(p).all() for p in d.params]).all() for d in live]).tolist() \
        if live else []
    for d, ok in zip(list(live), finite, strict=True):
        if not ok:
            d.record.status = Status.DIVERGED
            d.record.error = f"parameters became non-finite by step {d.record.steps - 1}"
            model.drop(d.index)
    return seconds


def run_pack(specs: list[TrialSpec], backbone: Backbone, hub: bool = False, share_frozen: bool = True,
             progress: Callable[[int, int, float], None] | None = None) -> list[TrialRecord]:
    """Train ``specs`` in one pass over ``backbone`` and score each; one record per spec, in order, each
    as ``train.run_spec`` makes it alone (same statuses, same results to float tolerance).

    The specs must share what a pass shares (``pack.check_pack`` raises otherwise). Never raises for
    a trial's own failure: a design that does not fit is infeasible, one whose loss becomes NaN is
    diverged and leaves the pack; if the pack as a whole raises (out of memory, say), each of its
    designs runs again alone, so a failure is charged to the design that causes it alone.
    ``seconds_train``/``seconds_eval`` of each record are its share of the pack's (divided by the
    number of designs trained); ``result['pack']`` holds the pack's size, times and shared layers.
    """
    check_pack(specs)
    if len(specs) == 1 and pack_key(specs[0]) is None:
        return [run_spec(specs[0], backbone, hub=hub, progress=progress)]
    task = get_task(specs[0].task)
    regime = specs[0].regime
    device = next(backbone.model.parameters()).device
    records = [TrialRecord(s, Status.OK, versions=versions(), device=str(device)) for s in specs]
    plans: dict[int, Plan] = {}
    for i, spec in enumerate(specs):
        try:
            plans[i] = spec_plan(spec, backbone)
            records[i].plan_params = plans[i].params
        except DesignSpaceError as e:
            records[i].status, records[i].error = Status.INFEASIBLE, str(e)
    if not plans:
        return records
    pad_id = pad_token_id(backbone)
    model: PackModel | None = None
    designs: list[_Design] = []
    with torch_threads(regime.threads):
        try:
            train, evaluated = spec_data(specs[0], backbone, hub)
            model = PackModel(backbone, task.num_labels, share_frozen=share_frozen)
            for i, plan in plans.items():
                records[i].n_train, records[i].n_eval = len(train), len(evaluated)
                try:
                    index = model.add(plan, specs[i].seed)
                except Exception as e:  # this design's own failure (its modules do not build)
                    _failed(records[i], e)
                    continue
                records[i].trainable_params, records[i].head_params = model.pet_params(index), model.head_params(index)
                designs.append(_Design(index, i, specs[i], records[i], design_groups(
                    model.designs[index], model.heads[index], specs[i].regime)))
            if designs:
                cut = model.cut
                batches, targets = training_batches(task, regime, train, specs[0].data_seed)
                seconds_train = fit_pack(model, designs, batches, task, regime, pad_id, device, progress)
                for d in designs:
                    targets.fold(model.heads[d.index])
                scored = [d for d in designs if d.record.status is Status.OK]
                t0 = time.perf_counter()
                if scored:
                    preds, labels = predict(model, evaluated, eval_regime(regime, len(scored), device), pad_id,
                                            task.is_regression, device)
                    for d, p in zip(scored, preds, strict=True):
                        score_record(d.record, task, p, labels)
                seconds_eval = time.perf_counter() - t0
                info = {"size": len(designs), "seconds_train": seconds_train, "seconds_eval": seconds_eval,
                        "shared_layers": cut if share_frozen and len(designs) > 1 else 0}
                for d in designs:
                    d.record.seconds_train, d.record.seconds_eval = seconds_train / len(designs), seconds_eval / len(designs)
                    d.record.result = {**d.record.result, "pack": info}
        except Exception as e:
            if model is not None:
                model.close()
                model = None
            if not designs:  # before any design was built (the data, say): every trial's failure
                for i in plans:
                    if records[i].status is Status.OK:
                        _failed(records[i], e)
            # The pack failed as a whole: no design is charged for it. Each runs again alone, on a clean
            # backbone, where a failure is its own.
            for d in designs:
                records[d.position] = run_spec(d.spec, backbone, hub=hub)
        finally:
            if model is not None:
                model.close()
            peak = peak_memory_mb(device)
            for r in records:
                if r.status is not Status.INFEASIBLE and not r.peak_mem_mb:
                    r.peak_mem_mb = peak
    return records


def eval_regime(regime: Regime, k: int, device) -> Regime:
    """On a CPU a pack evaluates ``eval_batch_size // k`` examples per pass, the rows one design has
    alone: K x 128 rows of dev sentences fall out of the CPU's caches, and the elementwise kernels
    (GELU, layer norm, residual adds) then made a pack of 4 evaluate 20 % slower than 4 designs one
    after the other. A GPU takes the K x 128 rows in one pass. Predictions are per row, the same."""
    if torch.device(device).type == "cuda" or k == 1:
        return regime
    return replace(regime, eval_batch_size=max(1, regime.eval_batch_size // k))


def _failed(record: TrialRecord, error: BaseException) -> None:
    record.status, record.error = Status.FAILED, f"{type(error).__name__}: {error}"
    record.traceback = traceback.format_exc()


__all__ = ["PackModel", "run_pack", "fit_pack"]
