"""Differentiable structure search under a parameter budget (S3Delta, Hu et al., NeurIPS 2022).

Every candidate of the pool is attached at once, one gate each (``PETModule.gate``: the module's
change to its frozen module is scaled by the gate). A warm-up with every gate open trains the
candidates first; then weight steps (sampled gates, one half of the training subset) alternate with
gate steps (the other half). The gate probabilities ``p`` are re-shifted every step so that their
expected cost is the budget; the structure is the candidates of highest ``p`` that fit.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

import torch
from torch import nn

from ..attach import module_keys
from ..data import epoch_batches, length_bucketed_batches, tokenise
from ..errors import invalid
from ..model import PETModel
from ..plan import ModuleSpec, Plan
from ..regime import Regime
from ..tasks import TaskSpec, get_task
from ..train import Targets, design_groups, loss_function, pad_token_id, task_loss, to_device, update
from .config import SearchConfig
from .gates import Gates
from .structure import candidate_specs, candidates_plan, heatmap_data, structure_plan, top_fill
from .summary import decided_share, mean_entropy


@dataclass
class SearchResult:
    plan: Plan  # the discretised structure
    candidates: tuple[ModuleSpec, ...]
    alpha: list[float | None]  # None: the candidate is larger than the budget and had no gate
    p: list[float]
    shift: float  # -inf when the whole pool fits the budget
    chosen: list[int]
    history: list[dict]  # losses, entropy of p and expected cost along the steps
    snapshots: dict  # {"steps": [...], "p": [[...], ...]}: p over the search
    seconds: dict  # {"warmup": s, "search": s}
    steps: dict  # {"warmup": n, "search": n}
    n_train: int

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    def heatmap(self) -> dict:
        return heatmap_data(self.candidates, self.p, self.chosen)

    def to_result(self) -> dict:
        """What a search record keeps (``TrialRecord.result``): plain JSON."""
        return {
            "plan": self.plan.to_dict(),
            "candidates": [{"layer": c.layer, "strategy": c.strategy, "role": c.roles[0], "size": c.size,
                            "params": c.params} for c in self.candidates],
            "pool_params": sum(c.params for c in self.candidates),
            "alpha": [None if a is None else round(a, 6) for a in self.alpha],
            "p": [round(x, 6) for x in self.p],
            "shift": self.shift if math.isfinite(self.shift) else None,
            "chosen": list(self.chosen),
            "heatmap": self.heatmap(),
            "history": self.history,
            "p_history": self.snapshots,
            "entropy": [h["entropy"] for h in self.history],
            "seconds": self.seconds,
            "steps": self.steps,
        }


def batch_loss(model: nn.Module, batch, spec: TaskSpec, pad_id: int, device) -> torch.Tensor:
    """The task's loss on one batch, as retraining computes it."""
    b = to_device(batch, pad_id, device, spec.is_regression)
    return task_loss(loss_function(spec), model(b["input_ids"], b["attention_mask"]), b["labels"], spec.is_regression)


def search(backbone, task: str, budget: float, config: SearchConfig, seed: int = 0, data_seed: int | None = None,
           regime: Regime | None = None, data_dir=None, hub: bool = False, progress=None) -> SearchResult:
    """Search ``config.space`` on ``backbone`` for ``task`` under ``budget`` (a fraction of the backbone).

    ``seed`` sets the candidates' and the head's initial weights (the same as in their retraining),
    the gates' noise and the halves; ``data_seed`` (default ``seed``) the training subset.
    """
    spec = get_task(task)
    regime = regime or Regime()
    cands = candidate_specs(backbone, config.space, config.sizes)
    params = [c.params for c in cands]
    budget_params = int(budget * backbone.n_params)
    if min(params) > budget_params:
        raise invalid("budget", budget, f"a budget of at least {min(params):,} parameters (the smallest candidate) "
                                        f"on {backbone.name}")
    # A candidate larger than the whole budget can never be chosen: it gets no gate (p = 0), so it
    # neither holds probability mass nor trains beside the others.
    eligible = [i for i, n in enumerate(params) if n <= budget_params]
    gates = Gates([params[i] for i in eligible], budget_params, config.beta, config.tau)
    history: list[dict] = []
    snapshots: dict = {"steps": [], "p": []}
    seconds, steps, n_train = {"warmup": 0.0, "search": 0.0}, {"warmup": 0, "search": 0}, 0
    if budget_params < sum(params[i] for i in eligible):
        n_train = _optimise(backbone, spec, [cands[i] for i in eligible], gates, config, regime, seed,
                            seed if data_seed is None else data_seed, data_dir, hub,
                            history, snapshots, seconds, steps, progress)
    with torch.no_grad():
        shift = gates.shift()
        p_eligible, a_eligible = gates.probs(shift).tolist(), gates.alpha.detach().tolist()
    p, alpha = [0.0] * len(cands), [None] * len(cands)
    for j, i in enumerate(eligible):
        p[i], alpha[i] = p_eligible[j], a_eligible[j]
    snapshots["p"] = [_spread(row, eligible, len(cands)) for row in snapshots["p"]]
    chosen = top_fill(p, params, budget_params)
    origin = f"s3pet search ({spec.name}, seed {seed})"
    plan = structure_plan(backbone, [cands[i] for i in chosen], budget, {**config.options, "origin": origin})
    return SearchResult(plan, tuple(cands), alpha, p, shift, chosen, history, snapshots, seconds, steps, n_train)


def _spread(values: list[float], eligible: list[int], n: int) -> list[float]:
    """Values of the eligible candidates at their places in the pool; 0 for the others."""
    out = [0.0] * n
    for j, i in enumerate(eligible):
        out[i] = values[j]
    return out


def _weight_groups(model: PETModel, config: SearchConfig, regime: Regime) -> list[dict]:
    """The retraining's AdamW groups (one per strategy, and the head), at one rate if the search sets one."""
    groups = design_groups(model.pet, model.head, regime)
    if config.lr_weights != "regime":
        for g in groups:
            g["lr"] = float(config.lr_weights)
    return groups


def _linear(warmup: int, total: int):
    """LR multiplier: linear ramp over ``warmup`` steps, then linear decay to 0 at ``total``."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return f


def _optimise(backbone, spec, cands, gates, config, regime, seed, data_seed, data_dir, hub, history, snapshots,
              seconds, steps, progress) -> int:
    device = next(backbone.model.parameters()).device
    pad_id = pad_token_id(backbone)
    train = tokenise(spec, "train", backbone.tokenizer, config.max_length, config.n_train, data_seed, data_dir, hub)
    train = Targets.of(spec, regime, train).learned(train)  # the search's model is not scored: nothing to fold
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    half = len(order) // 2
    w_half, g_half = [train[i] for i in order[:half]], [train[i] for i in order[half:]]
    warm = epoch_batches(w_half, config.batch_size, config.warmup_epochs, seed) if config.warmup_epochs else []
    w_batches = epoch_batches(w_half, config.batch_size, config.epochs, seed + 1)
    g_batches: list = []  # one gate step per weight step, cycling over the gates' half
    while len(g_batches) < len(w_batches):
        g_batches += length_bucketed_batches(g_half, config.batch_size, seed + 1000 + len(g_batches))

    plan = candidates_plan(backbone, cands, gates.budget / backbone.n_params, config.options)
    model = PETModel(backbone, plan, num_labels=spec.num_labels, seed=seed)
    for i, key in enumerate(module_keys(plan)):
        model.pet.pets[key].gate = (gates, i)
    gates.to(device)
    groups = _weight_groups(model, config, regime)
    weights = [p for g in groups for p in g["params"]]
    total = len(warm) + len(w_batches)
    opt_w = torch.optim.AdamW(groups)
    sched_w = torch.optim.lr_scheduler.LambdaLR(opt_w, _linear(max(1, int(regime.warmup * total)), total))
    opt_g = torch.optim.AdamW([gates.alpha], lr=config.lr_gates, weight_decay=0.0)
    sched_g = torch.optim.lr_scheduler.LambdaLR(
        opt_g, _linear(max(1, int(config.gate_warmup * len(w_batches))), len(w_batches)))
    snap_at = {round(k * len(w_batches) / (config.snapshots - 1)) for k in range(config.snapshots)}
    target = gates.budget
    start = max(target, config.anneal_from * float(gates.n.sum()))
    n_anneal = int(config.anneal * len(w_batches))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the head's dropout masks

    def snapshot(step: int) -> None:
        with torch.no_grad():
            p = gates.probs().tolist()
        snapshots["steps"].append(step)
        snapshots["p"].append([round(x, 5) for x in p])

    def log(phase: str, step: int, loss_w: float, loss_g: float | None) -> None:
        with torch.no_grad():
            p = gates.probs().tolist()
        history.append({"phase": phase, "step": step, "loss_weights": round(loss_w, 5),
                        "loss_gates": None if loss_g is None else round(loss_g, 5),
                        "entropy": round(mean_entropy(p), 5),
                        "decided": round(decided_share(p, gates.n.tolist(), gates.budget), 4),
                        "expected_cost": round(gates.expected_cost(), 1), "lr_gates": sched_g.get_last_lr()[0]})

    def weight_step(batch, gate_values) -> float:
        gates.current = gate_values
        loss = batch_loss(model, batch, spec, pad_id, device)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"search diverged: weight loss {value}")
        update(loss, opt_w, sched_w, weights, regime.grad_clip)
        return value

    every = max(1, len(w_batches) // 100)
    model.train()
    model.backbone.eval()  # frozen backbone: no dropout in it, as in retraining
    try:
        t0 = time.perf_counter()
        ones = torch.ones(len(cands), device=device)
        for step, batch in enumerate(warm):
            loss_w = weight_step(batch, ones)
            if step % every == 0 or step == len(warm) - 1:
                log("warmup", step, loss_w, None)
            if progress:
                progress(step + 1, total, loss_w)
        seconds["warmup"], steps["warmup"] = time.perf_counter() - t0, len(warm)
        t0 = time.perf_counter()
        for step, (wb, gb) in enumerate(zip(w_batches, g_batches, strict=False)):
            # The budget falls geometrically from a share of the pool to the target, so the gates
            # learn while p is far from 0 (gradients flow) and the least useful candidates drop first.
            gates.budget = target if step >= n_anneal else start * (target / start) ** (step / n_anneal)
            if step in snap_at:
                snapshot(step)
            with torch.no_grad():
                sampled = gates.sample(gates.noise(gen))
            loss_w = weight_step(wb, sampled)
            opt_g.zero_grad(set_to_none=True)
            if config.order == 1:
                gates.current = gates.sample(gates.noise(gen))
                loss_g = batch_loss(model, gb, spec, pad_id, device)
                # Only the gates learn from their half (and autograd skips the weights' gradients).
                (gates.alpha.grad,) = torch.autograd.grad(loss_g, [gates.alpha])
            else:
                xi = opt_w.param_groups[0]["lr"]
                loss_g = _unrolled_gate_grad(model, weights, gates, wb, gb, spec, pad_id, device, xi, gen)
            opt_g.step()
            sched_g.step()
            if step % every == 0 or step == len(w_batches) - 1:
                log("search", step, loss_w, float(loss_g.detach()))
            if progress:
                progress(len(warm) + step + 1, total, loss_w)
        snapshot(len(w_batches))
        seconds["search"], steps["search"] = time.perf_counter() - t0, len(w_batches)
    finally:
        gates.current, gates.budget = None, target
        model.pet.detach()
    return len(train)


def _unrolled_gate_grad(model, weights, gates, train_batch, val_batch, spec, pad_id, device, xi, gen) -> torch.Tensor:
    """DARTS' second-order gate gradient, with one fixed noise draw for every pass of the step:

    grad_a L_val(w', a) - xi * (grad_a L_train(w+, a) - grad_a L_train(w-, a)) / (2 eps),
    w' = w - xi grad_w L_train(w, a),  w+- = w +- eps grad_w' L_val(w', a).
    """
    noise = gates.noise(gen)

    def grads(batch, wrt):
        gates.current = gates.sample(noise)
        loss = batch_loss(model, batch, spec, pad_id, device)
        gs = torch.autograd.grad(loss, wrt, allow_unused=True)
        return loss, [torch.zeros_like(w) if g is None else g for g, w in zip(gs, wrt, strict=True)]

    backup = [w.detach().clone() for w in weights]
    _, g_train = grads(train_batch, weights)
    with torch.no_grad():
        for w, g in zip(weights, g_train, strict=True):
            w.sub_(xi * g)
    loss_val, g_val = grads(val_batch, [gates.alpha, *weights])
    d_alpha, dw = g_val[0], g_val[1:]
    eps = 0.01 / (torch.sqrt(sum((g * g).sum() for g in dw)) + 1e-12)
    hessian = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for w, b, g in zip(weights, backup, dw, strict=True):
                w.copy_(b + sign * eps * g)
        hessian.append(grads(train_batch, [gates.alpha])[1][0])
    with torch.no_grad():
        for w, b in zip(weights, backup, strict=True):
            w.copy_(b)
    gates.alpha.grad = d_alpha - xi * (hessian[0] - hessian[1]) / (2 * eps)
    return loss_val.detach()
