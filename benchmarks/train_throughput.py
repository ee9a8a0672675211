"""Training throughput of one design: our train_design versus HF Trainer + peft LoRA, and the GEMM bound.

All in one process, on the same data (SST-2, the same ``--n-train`` examples, 1 epoch, full dev), the
same offline MiniLM-L6 and the same LoRA (r=8 on query and value in every layer, scale 2, no dropout):

(a) HF ``Trainer`` + peft ``LoraConfig`` on ``AutoModelForSequenceClassification``, padded to 128
    (run_glue's default) and with dynamic padding (``DataCollatorWithPadding``);
(b) ``train_design`` of the all-LoRA design at the same budget (it compiles to r=8 everywhere);
(c) this machine's fp32 GEMM rate (``torch.matmul`` of 2048 x 2048 matrices).

Methods run interleaved, ``--repeats`` times, with the same torch thread count, so that the other jobs on
a shared CPU slow all of them alike; ratios are taken within a repeat. Time per design counts
everything after the one-off backbone load and tokenisation: building the model, training, evaluating.

    python benchmarks/train_throughput.py --out results/train/throughput.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from designspace import PRESETS, compile_plan
from designspace.backbones import load_backbone
from designspace.backbones.offline import resolve_backbone_path
from designspace.data import epoch_batches, tokenise
from designspace.metrics import compute_metrics
from designspace.regime import Regime
from designspace.train import train_design

BACKBONE, TASK, RANK, ROLES = "minilm-l6", "sst2", 8, ("attn_q", "attn_v")
HF_TARGETS = ["query", "value"]  # the same two roles, in BERT's module names


def gemm_rate(n: int = 2048, reps: int = 8) -> tuple[float, float]:
    """(wall, CPU-time) GFLOP/s of an n x n x n fp32 matmul."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    t, c = time.perf_counter(), time.process_time()
    for _ in range(reps):
        a @ b
    flops = 2 * n**3 * reps
    return flops / (time.perf_counter() - t) / 1e9, flops / (time.process_time() - c) / 1e9


LINEAR_ROLES = ("attn_q", "attn_k", "attn_v", "attn_o", "ffn_in", "ffn_out")


def linear_weights(backbone) -> int:
    """N: the weights of every layer's linear projections (embeddings, norms and biases left out)."""
    return sum(
        layer.roles[r].in_features * layer.roles[r].out_features for layer in backbone.layers for r in LINEAR_ROLES
    )


def flops_per_token(backbone, lengths: list[int]) -> float:
    """Training FLOPs of the frozen backbone per real token (the formula is printed in the report).

    Linear layers: 2 N (forward) + 2 N (gradient of the inputs; frozen weights need no weight
    gradient). Attention scores and the weighted sum: 4 l d per token and layer forward, twice that
    backward, l = the sequence's length.
    """
    d, n_layers, n = backbone.hidden_size, len(backbone.layers), linear_weights(backbone)
    return sum(4 * n * ln + 12 * n_layers * d * ln * ln for ln in lengths) / sum(lengths)


def hf_reference(path, train, dev, padding: str, regime: Regime, threads: int) -> dict:
    """HF Trainer + peft LoRA, run_glue style; ``padding`` is 'max_length' (128) or 'dynamic'."""
    import datasets
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        default_data_collator,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tok = AutoTokenizer.from_pretrained(path)

    def dataset(examples):
        ids = [list(e.input_ids) for e in examples]
        if padding == "max_length":
            mask = [[1] * len(x) + [0] * (regime.max_length - len(x)) for x in ids]
            ids = [x + [tok.pad_token_id] * (regime.max_length - len(x)) for x in ids]
        else:
            mask = [[1] * len(x) for x in ids]
        return datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": mask, "labels": [int(e.label) for e in examples]})

    train_ds, dev_ds = dataset(train), dataset(dev)
    collator = default_data_collator if padding == "max_length" else DataCollatorWithPadding(tok)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    model = get_peft_model(model, LoraConfig(
        task_type=TaskType.SEQ_CLS, r=RANK, lora_alpha=2 * RANK, lora_dropout=0.0, target_modules=HF_TARGETS
    ))
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=regime.batch_size,
            per_device_eval_batch_size=regime.eval_batch_size, learning_rate=regime.lr["lora"],
            num_train_epochs=regime.epochs, warmup_steps=regime.warmup, weight_decay=regime.weight_decay,
            max_grad_norm=regime.grad_clip, lr_scheduler_type="linear", seed=0, report_to="none",
            save_strategy="no", logging_strategy="no", use_cpu=True, disable_tqdm=True, dataloader_num_workers=0,
        )
        trainer = Trainer(model=model, args=args, train_dataset=train_ds, data_collator=collator)
        torch.set_num_threads(threads)  # the Trainer may reset it; keep all methods on the same count
        t1 = time.perf_counter()
        trainer.train()
        t2 = time.perf_counter()
        pred = trainer.predict(dev_ds)
        t3 = time.perf_counter()
    tokens = sum(len(e.input_ids) for e in train)
    acc = compute_metrics(TASK, pred.predictions, np.array([e.label for e in dev]))["accuracy"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"accuracy": acc, "train_s": t2 - t1, "eval_s": t3 - t2, "total_s": t3 - t0, "tokens": tokens,
            "padded_tokens": len(train) * regime.max_length if padding == "max_length" else None,
            "trainable": trainable}


def ours(backbone, plan, regime: Regime) -> dict:
    marks = []  # (cpu, wall) after each step: CPU time of the training steps alone

    def progress(step, total, loss):
        marks.append((time.process_time(), time.perf_counter()))

    t0, c0 = time.perf_counter(), time.process_time()
    r = train_design(plan, backbone, TASK, regime, seed=0, progress=progress)
    total = time.perf_counter() - t0
    assert r.ok, r.error
    # Steps 2..n: the first step also builds the optimiser and warms the allocator.
    batches = epoch_batches(_TRAIN, regime.batch_size, regime.epochs, 0, regime.max_steps)
    tok_after_first = r.tokens - sum(len(e.input_ids) for e in batches[0])
    cpu_s = marks[-1][0] - marks[0][0]
    return {"accuracy": r.score, "train_s": r.seconds_train, "eval_s": r.seconds_eval, "total_s": total,
            "tokens": r.tokens, "padded_tokens": r.padded_tokens, "trainable": r.trainable_params + r.head_params,
            "cpu_tok_s": tok_after_first / cpu_s, "n_dev": r.n_eval, "cpu_total_s": time.process_time() - c0}


def profile_ours(backbone, plan, regime: Regime, steps: int = 40) -> list[tuple[str, float]]:
    """Shares of self CPU time by kind of operator over ``steps`` training steps (torch.profiler)."""
    from dataclasses import replace

    from torch.profiler import ProfilerActivity, profile

    short = replace(regime, max_steps=steps, n_dev=16)
    train_design(plan, backbone, TASK, replace(short, max_steps=3))  # warm-up
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        train_design(plan, backbone, TASK, short)
    kinds: dict[str, float] = {}
    for e in prof.key_averages(group_by_input_shape=True):
        if e.self_cpu_time_total <= 0:
            continue
        kinds[_kind(e.key, e.input_shapes)] = kinds.get(_kind(e.key, e.input_shapes), 0.0) + e.self_cpu_time_total
    total = sum(kinds.values())
    return sorted(((k, v / total) for k, v in kinds.items()), key=lambda kv: -kv[1])


def _kind(name: str, shapes) -> str:
    if name in ("aten::mm", "aten::addmm", "aten::bmm"):
        dims = [d for s in shapes if s and len(s) == 2 for d in s]
        return "GEMM, LoRA (a dimension <= 16)" if dims and min(dims) <= 16 else "GEMM, backbone linear layers"
    if "scaled_dot_product" in name or name in ("aten::_softmax", "aten::_softmax_backward_data"):
        return "attention (SDPA kernels)"
    if "gelu" in name:
        return "GELU (forward + backward)"
    if "layer_norm" in name:
        return "layer norm (forward + backward)"
    if name in ("aten::add", "aten::add_", "aten::mul", "aten::mul_", "aten::copy_", "aten::fill_", "aten::zero_",
                "aten::sum", "aten::div", "aten::clone", "aten::cat", "aten::index_select", "aten::embedding_dense_backward"):
        return "elementwise / copies (residual adds, LoRA add and scale, grad accumulation)"
    if "Optimizer" in name or name in ("aten::_foreach_mul_", "aten::sqrt", "aten::lerp_", "aten::addcdiv_",
                                        "aten::addcmul_", "aten::linalg_vector_norm", "aten::_foreach_norm"):
        return "optimiser + gradient clipping"
    return "other (dispatch, views, autograd bookkeeping, ...)"


def thread_check(backbone, plan, regime: Regime, steps: int = 40) -> dict[int, float]:
    """Training tokens/s of ours at 1 and 2 threads, alternated twice."""
    from dataclasses import replace

    out: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(2):
        for t in (1, 2):
            r = train_design(plan, backbone, TASK, replace(regime, max_steps=steps, n_dev=16, threads=t))
            out[t].append(r.tokens / r.seconds_train)
    return {t: statistics.median(v) for t, v in out.items()}


_TRAIN: list = []


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-dev", type=int, default=None, help="dev examples (default: all)")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved repeats of ours + dynamic reference")
    ap.add_argument("--padded-repeats", type=int, default=1, help="repeats of the (slow) padded reference")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for every method (default 1: a shared CPU)")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--out", type=Path, help="also write the report (markdown) here")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    regime = Regime(n_train=args.n_train, n_dev=args.n_dev, threads=args.threads)
    backbone = load_backbone(BACKBONE)
    path = resolve_backbone_path(BACKBONE)
    train = tokenise(TASK, "train", backbone.tokenizer, regime.max_length, regime.n_train, 0)
    dev = tokenise(TASK, "dev", backbone.tokenizer, regime.max_length, regime.n_dev, 0)
    _TRAIN[:] = train
    n_lora = sum(RANK * (layer.roles[r].in_features + layer.roles[r].out_features) for layer in backbone.layers for r in ROLES)
    # +0.5: the budget is floored to whole parameters; land exactly on the peft model's count.
    plan = compile_plan(PRESETS["all-lora"], backbone, (n_lora + 0.5) / backbone.n_params)
    assert plan.params == n_lora and {m.size for m in plan.modules} == {RANK}, plan.table()

    runs: dict[str, list[dict]] = {"ours": [], "dynamic": [], "padded": []}
    gemm: list[tuple[float, float]] = [gemm_rate()]
    log = sys.stderr
    for rep in range(max(args.repeats, args.padded_repeats)):
        if rep < args.repeats:
            runs["ours"].append(ours(backbone, plan, regime))
            print(f"rep {rep} ours {runs['ours'][-1]}", file=log, flush=True)
            runs["dynamic"].append(hf_reference(path, train, dev, "dynamic", regime, args.threads))
            print(f"rep {rep} dynamic {runs['dynamic'][-1]}", file=log, flush=True)
        if rep < args.padded_repeats:
            runs["padded"].append(hf_reference(path, train, dev, "max_length", regime, args.threads))
            print(f"rep {rep} padded {runs['padded'][-1]}", file=log, flush=True)
        gemm.append(gemm_rate())
        print(f"rep {rep} gemm {gemm[-1]} load {os.getloadavg()}", file=log, flush=True)
    shares = [] if args.no_profile else profile_ours(backbone, plan, regime)
    threads = thread_check(backbone, plan, regime)
    gemm.append(gemm_rate())

    print(report(args, argv, backbone, plan, train, runs, gemm, shares, threads, regime), end="", file=sys.stdout)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report(args, argv, backbone, plan, train, runs, gemm, shares, threads, regime))


def report(args, argv, backbone, plan, train, runs, gemm, shares, threads, regime) -> str:
    med = statistics.median
    fpt = flops_per_token(backbone, [len(e.input_ids) for e in train])
    gemm_wall, gemm_cpu = med(g[0] for g in gemm), med(g[1] for g in gemm)
    lines = [
        "# Training throughput: train_design vs HF Trainer + peft LoRA",
        "",
        "Command: `python benchmarks/train_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]) + "`",
        "",
        f"SST-2, {len(train)} training examples (stratified, seed 0), 1 epoch, batch {regime.batch_size}, "
        f"lr {regime.lr_for('lora')}, dev: {runs['ours'][0]['n_dev']} examples; {backbone.name}; LoRA r={RANK} on query+value in all "
        f"{len(backbone.layers)} layers ({plan.params:,} params, {plan.fraction:.4%}); torch threads = {args.threads}; "
        f"load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (a shared machine).",
        "",
        "| method | dev accuracy | train s | eval s | per design s | train tokens/s | designs/hour |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    names = {"padded": "(a) HF Trainer + peft, padded to 128", "dynamic": "(a) HF Trainer + peft, dynamic padding",
             "ours": "(b) train_design, all-LoRA"}
    for k in ("padded", "dynamic", "ours"):
        rs = runs[k]
        lines.append(
            f"| {names[k]} (n={len(rs)}) | {med(r['accuracy'] for r in rs):.4f} | {med(r['train_s'] for r in rs):.1f} | "
            f"{med(r['eval_s'] for r in rs):.1f} | {med(r['total_s'] for r in rs):.1f} | "
            f"{med(r['tokens'] / r['train_s'] for r in rs):.0f} | {med(3600 / r['total_s'] for r in rs):.0f} |"
        )
    ratio_dyn = [d["total_s"] / o["total_s"] for o, d in zip(runs["ours"], runs["dynamic"], strict=False)]
    ratio_pad = [p["total_s"] / o["total_s"] for o, p in zip(runs["ours"], runs["padded"], strict=False)]
    tok_dyn = [(o["tokens"] / o["train_s"]) / (d["tokens"] / d["train_s"]) for o, d in zip(runs["ours"], runs["dynamic"], strict=False)]
    tok_pad = [(o["tokens"] / o["train_s"]) / (p["tokens"] / p["train_s"]) for o, p in zip(runs["ours"], runs["padded"], strict=False)]
    o = runs["ours"]
    ours_wall = med(r["tokens"] / r["train_s"] for r in o)
    ours_cpu = med(r["cpu_tok_s"] for r in o)
    pad = runs["ours"][0]["padded_tokens"]
    lines += [
        "",
        "Ratios (b)/(a), within the same repeat (median):",
        "",
        f"- designs/hour: {med(ratio_pad):.1f}x the padded reference, {med(ratio_dyn):.2f}x the dynamic-padding one",
        f"- training tokens/s: {med(tok_pad):.1f}x padded, {med(tok_dyn):.2f}x dynamic",
        f"- trainable parameters: ours {o[0]['trainable']:,} (LoRA + head), peft {runs['dynamic'][0]['trainable']:,}",
        f"- ours: {o[0]['tokens']:,} real tokens in {pad:,} padded positions ({o[0]['tokens'] / pad:.1%} useful); "
        f"padded reference: {o[0]['tokens'] / (len(train) * regime.max_length):.1%} useful",
        "",
        "GEMM bound (fp32, 2048 x 2048 matmul, same threads, measured before, between and after the runs):",
        "",
        f"- GEMM rate: {gemm_wall:.1f} GFLOP/s wall clock, {gemm_cpu:.1f} GFLOP/s per CPU-second "
        f"(per-run wall: {', '.join(f'{g[0]:.0f}' for g in gemm)})",
        f"- FLOPs per training token = [sum over examples of 4 N l + 12 L d l^2] / [sum of l] = {fpt / 1e6:.1f} MFLOP, "
        f"N = {linear_weights(backbone):,} "
        f"weights of the encoder's linear layers (2N forward + 2N input gradients), attention 4 l d per layer forward "
        f"and 8 l d backward (L = {len(backbone.layers)} layers, d = {backbone.hidden_size}, "
        f"l = the example's length). Left out: LoRA (+6 x 73,728 = +0.4 MFLOP) and the input gradients layer 0 "
        f"does not need (-6 d^2 = -0.9 MFLOP).",
        f"- bound: {gemm_wall * 1e9 / fpt:.0f} tokens/s wall ({gemm_cpu * 1e9 / fpt:.0f} per CPU-second)",
        f"- ours: {ours_wall:.0f} tokens/s wall = **{ours_wall * fpt / 1e9 / gemm_wall:.0%} of the wall-clock bound**; "
        f"{ours_cpu:.0f} tokens per CPU-second = **{ours_cpu * fpt / 1e9 / gemm_cpu:.0%} of the per-CPU-second bound** "
        "(the CPU-time figure is the one the other jobs on the machine disturb least at 1 thread)",
        "",
        f"Threads (ours, 40 steps, alternated, same run): 1 thread {threads[1]:.0f} tokens/s, "
        f"2 threads {threads[2]:.0f} tokens/s.",
    ]
    if shares:
        lines += ["", "Profile of our training step (torch.profiler, 40 steps, self CPU time by kind):", "",
                  "| kind | share |", "| --- | --- |"]
        lines += [f"| {k} | {v:.1%} |" for k, v in shares]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
