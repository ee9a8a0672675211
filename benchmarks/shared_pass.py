"""Many designs in one pass over one frozen backbone (issue #15): packs of K designs vs K sequential trials.

One process, one backbone (MiniLM-L6 by default), real SST-2 through the task readers, the regime's
defaults (2000 training examples, 1 epoch, batch 16, full dev) unless flags say otherwise:

(a) K sequential single-design trials (``run_spec``) of K designs of the paper's space, seeds 0..K-1;
(b) the same K designs, same seeds, in one pack (``run_pack``), for each K of ``--ks``; the scores of
    (a) and (b) are printed side by side (they must be equal);
(c) the training step's fraction of the fp32 GEMM bound (the formula of train_throughput.py);
(d) one paired stage of the paper's space (the grouping stage: every grouping class on two bases
    that leave G1 frozen), sequentially, packed without and with the shared frozen layers, and the
    fraction of the backbone's FLOPs the shared layers saved;
(e) peak memory per K (RSS sampled every 20 ms on a CPU; the allocator's peak on a GPU) next to the
    pool's estimate (``pack.pack_memory_mb``).

Wall and CPU time are both reported; on a shared CPU the CPU-time ratios are the ones other jobs
disturb least at one thread. The machine's load average is printed before and after.

    python benchmarks/shared_pass.py --quick                            # minutes: a smoke run
    python benchmarks/shared_pass.py --out results/train/shared_pass.md  # the full CPU run (~20 min)
    python benchmarks/shared_pass.py --device cuda --ks 1,2,4,8,16       # a GPU (with K = 16)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch

from designspace import Design, DesignSpace
from designspace.attach import is_clean
from designspace.backbones import load_backbone, pick_device
from designspace.pack import group_packs, pack_memory_mb
from designspace.regime import Regime
from designspace.stage import choice_classes
from designspace.train import run_spec, spec_data
from designspace.train_pack import run_pack
from designspace.trial import TrialSpec

TASK = "sst2"
LINEAR_ROLES = ("attn_q", "attn_k", "attn_v", "attn_o", "ffn_in", "ffn_out")


# --- the bound (as in train_throughput.py) ------------------------------------------------------------
def gemm_rate(device: torch.device, n: int = 2048, reps: int = 8) -> tuple[float, float]:
    """(wall, CPU-time) GFLOP/s of an n x n x n fp32 matmul on ``device``."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    sync(device)
    t, c = time.perf_counter(), time.process_time()
    for _ in range(reps):
        a @ b
    sync(device)
    flops = 2 * n**3 * reps
    return flops / (time.perf_counter() - t) / 1e9, flops / max(time.process_time() - c, 1e-9) / 1e9


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def layer_flops(backbone, length: int, backward: bool) -> float:
    """FLOPs of one layer on one example of ``length`` tokens: 2 N l (+ 2 N l input gradients) for the
    linear layers and 4 l^2 d (+ 8 l^2 d) for attention (train_throughput.flops_per_token, per layer)."""
    layer = backbone.layers[-1]
    n = sum(layer.roles[r].in_features * layer.roles[r].out_features for r in LINEAR_ROLES)
    d = backbone.hidden_size
    return (4 if backward else 2) * n * length + (12 if backward else 4) * d * length * length


def pass_flops(backbone, lengths: list[int], k: int, cut: int, shared: bool) -> tuple[float, float]:
    """(FLOPs a training pass of K designs does, FLOPs K single-design passes do) over examples of
    ``lengths``; with ``shared`` the layers below ``cut`` run forward once instead of K times. Like
    train_throughput's formula, every layer is counted with its input gradients except those below a
    shared cut (which no design needs)."""
    n_layers = len(backbone.layers)
    full = sum(layer_flops(backbone, ln, True) for ln in lengths) * n_layers * k
    if not shared or k == 1 or cut == 0:
        return full, full
    below = sum(layer_flops(backbone, ln, False) for ln in lengths) * cut
    above = sum(layer_flops(backbone, ln, True) for ln in lengths) * (n_layers - cut) * k
    return below + above, full


# --- measuring ----------------------------------------------------------------------------------------
class PeakMemory:
    """The peak of this process's memory during a ``with`` block: RSS sampled every 20 ms on a CPU
    (allocator caches included), the CUDA allocator's peak on a GPU."""

    def __init__(self, device: torch.device):
        self.device, self.peak_mb = device, 0.0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, rss_mb())
            self._stop.wait(0.02)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def timed(device, work, label: str) -> dict:
    """Run ``work(progress)``; wall and CPU seconds, the training steps' marks, the peak memory."""
    marks: list[tuple[float, float]] = []

    def progress(step, total, loss):
        marks.append((time.process_time(), time.perf_counter()))

    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    with PeakMemory(device) as mem:
        # A progress callback reads the loss at every step: a host sync per step, fine on a CPU only.
        records = work(progress if device.type == "cpu" else None)
        sync(device)
    out = {"records": records if isinstance(records, list) else [records], "wall": time.perf_counter() - t0,
           "cpu": time.process_time() - c0, "marks": marks, "peak_mb": mem.peak_mb, "label": label}
    print(f"{label}: {out['wall']:.1f} s wall, {out['cpu']:.1f} s CPU, peak {mem.peak_mb:,.0f} MiB, "
          f"load {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
    return out


def step_rate(run: dict, first_batch_tokens: int, k: int) -> tuple[float, float]:
    """(design-tokens per wall second, per CPU-second) of the training steps after the first (on a GPU,
    without per-step marks: of the whole training loop, per wall second only)."""
    marks, record = run["marks"], run["records"][0]
    if not marks:
        seconds = record.result["pack"]["seconds_train"] if "pack" in record.result else record.seconds_train
        return record.tokens * k / seconds, float("nan")
    tokens = (record.tokens - first_batch_tokens) * k
    return tokens / (marks[-1][1] - marks[0][1]), tokens / max(marks[-1][0] - marks[0][0], 1e-9)


# --- the designs --------------------------------------------------------------------------------------
def designs_of_the_space(n: int, seed: int = 0) -> list[Design]:
    return DesignSpace().sample(n, seed=seed)


def stage_specs(backbone, regime: Regime, bases: int, backbone_name: str) -> tuple[list[TrialSpec], list[Design]]:
    """The grouping stage on ``bases`` bases leaving G1 frozen: every grouping class on each, one block
    seed per base (seed = data seed, as a stage's blocks)."""
    space = DesignSpace()
    classes = choice_classes("grouping", space, len(backbone.layers))
    picked = [d for d in space.sample(50, seed=1) if 1 not in d.tuned_groups][:bases]
    specs = [TrialSpec(TASK, base.with_choice("grouping", c.representative("grouping")), seed=100 + b,
                       data_seed=100 + b, regime=regime, backbone=backbone_name, label=f"{c.label} on base {b}")
             for b, base in enumerate(picked) for c in classes]
    return specs, picked


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="cpu or cuda (default: backbones.pick_device)")
    ap.add_argument("--backbone", default="minilm-l6")
    ap.add_argument("--ks", default=None, help="pack sizes (default 1,2,4,8; 1,2,4,8,16 on a GPU)")
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-dev", type=int, default=None, help="dev examples (default: all)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on a CPU (default 1: a shared CPU)")
    ap.add_argument("--stage-bases", type=int, default=2, help="bases of the grouping stage (0: skip it)")
    ap.add_argument("--quick", action="store_true", help="256 training and 128 dev examples, K up to 4, one base")
    ap.add_argument("--out", type=Path, help="also write the report (markdown) here")
    args = ap.parse_args(argv)
    if args.quick:
        args.n_train, args.n_dev = min(args.n_train, 256), args.n_dev or 128
        args.ks = args.ks or "1,2,4"
        args.stage_bases = min(args.stage_bases, 1)

    t_start = time.perf_counter()
    load_before = os.getloadavg()
    device = pick_device(args.device)
    ks = [int(k) for k in (args.ks or ("1,2,4,8,16" if device.type == "cuda" else "1,2,4,8")).split(",")]
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    threads = args.threads if device.type == "cpu" else None
    regime = Regime(n_train=args.n_train, n_dev=args.n_dev, threads=threads)
    backbone = load_backbone(args.backbone, device=device)
    designs = designs_of_the_space(max(ks))
    specs = [TrialSpec(TASK, d, seed=i, data_seed=0, regime=regime, backbone=args.backbone, label=f"design {i}")
             for i, d in enumerate(designs)]
    train, dev = spec_data(specs[0], backbone)  # tokenised once per process: not part of any timing
    lengths = [len(e.input_ids) for e in train]
    from designspace.data import epoch_batches

    first_batch = sum(len(e.input_ids) for e in epoch_batches(train, regime.batch_size, regime.epochs, 0)[0])
    # Warm-up (allocator, kernels, lazy imports): three steps of one design.
    run_spec(replace(specs[0], regime=replace(regime, max_steps=3, n_dev=16)), backbone)
    gemm = [gemm_rate(device)]

    singles = [timed(device, lambda p, s=s: run_spec(s, backbone, progress=p), f"alone {s.label}") for s in specs]
    gemm.append(gemm_rate(device))
    packs = {}
    for k in ks:
        packs[k] = timed(device, lambda p, k=k: run_pack(specs[:k], backbone, progress=p), f"pack K={k}")
        gemm.append(gemm_rate(device))
    assert is_clean(backbone)

    stage = None
    if args.stage_bases:
        s_specs, bases = stage_specs(backbone, regime, args.stage_bases, args.backbone)
        units = group_packs(s_specs, max(ks))
        lengths_of = {}  # tokenised outside the timings
        for seed in sorted({x.data_seed for x in s_specs}):
            block_train = spec_data(next(x for x in s_specs if x.data_seed == seed), backbone)[0]
            lengths_of[seed] = [len(e.input_ids) for e in block_train]
        stage = {
            "specs": s_specs, "bases": bases, "units": units, "lengths": lengths_of,
            "off": timed(device, lambda p: [run_spec(s, backbone) for s in s_specs], "stage, one by one"),
            "packed": timed(device, lambda p: [r for u in units for r in run_pack(u, backbone, share_frozen=False)],
                            "stage, packed, frozen layers not shared"),
            "shared": timed(device, lambda p: [r for u in units for r in run_pack(u, backbone)],
                            "stage, packed, frozen layers shared"),
        }
        gemm.append(gemm_rate(device))

    report_text = report(args, argv, device, backbone, regime, specs, singles, packs, ks, stage, gemm, lengths,
                         first_batch, load_before, time.perf_counter() - t_start)
    print(report_text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report_text)


def report(args, argv, device, backbone, regime, specs, singles, packs, ks, stage, gemm, lengths, first_batch,
           load_before, seconds) -> str:
    med = statistics.median
    cpu = device.type == "cpu"
    gemm_wall, gemm_cpu = med(g[0] for g in gemm), med(g[1] for g in gemm)
    fpt = pass_flops(backbone, lengths, 1, 0, False)[0] / sum(lengths)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} torch thread(s)"
    lines = [
        "# Many designs in one pass: packs of K designs vs K sequential single-design trials",
        "",
        "Command: `python benchmarks/shared_pass.py " + " ".join(argv if argv is not None else sys.argv[1:]) + "`",
        "",
        f"{backbone.name} on {name}; SST-2, {regime.n_train} training examples (data seed 0), {regime.epochs:g} "
        f"epoch, batch {regime.batch_size}, dev {singles[0]['records'][0].n_eval} examples; designs sampled from "
        f"the paper's space (seed 0), seeds 0..K-1, budget 0.5 %. Load average (1, 5, 15 min) before: "
        f"{', '.join(f'{x:.2f}' for x in load_before)}; after: {', '.join(f'{x:.2f}' for x in os.getloadavg())} "
        f"on {os.cpu_count()} cores. Wall time of the whole run: {seconds / 60:.1f} min.",
        "",
        "## Packs vs sequential trials",
        "",
        "| K | sequential: wall s | CPU s | designs/h | train tok/s | pack: wall s | CPU s | designs/h | "
        "train tok/s | ratio (wall) | ratio (CPU) | peak MiB (est.) | max abs score / loss diff |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for k in ks:
        seq, pk = singles[:k], packs[k]
        s_wall, s_cpu = sum(r["wall"] for r in seq), sum(r["cpu"] for r in seq)
        s_tok = sum(r["records"][0].tokens for r in seq) / sum(r["records"][0].seconds_train for r in seq)
        p_tok = sum(r.tokens for r in pk["records"]) / pk["records"][0].result["pack"]["seconds_train"]
        diffs = [(abs(a["records"][0].score - b.score), abs(a["records"][0].final_loss - b.final_loss))
                 for a, b in zip(seq, pk["records"], strict=True)]
        estimate = pack_memory_mb(specs[0], k)
        lines.append(
            f"| {k} | {s_wall:.1f} | {s_cpu:.1f} | {3600 * k / s_wall:.0f} | {s_tok:.0f} | {pk['wall']:.1f} | "
            f"{pk['cpu']:.1f} | {3600 * k / pk['wall']:.0f} | {p_tok:.0f} | {s_wall / pk['wall']:.2f}x | "
            f"{s_cpu / pk['cpu']:.2f}x | {pk['peak_mb']:,.0f} ({estimate:,.0f}) | "
            f"{max(d[0] for d in diffs):.1e} / {max(d[1] for d in diffs):.1e} |"
        )
    kmax = max(ks)
    lines += ["", f"Scores side by side (K = {kmax}; alone = run_spec, packed = run_pack):", "",
              "| design | alone: score | packed: score | alone: final loss | packed: final loss |",
              "| --- | --- | --- | --- | --- |"]
    for spec, alone, packed in zip(specs, singles, packs[kmax]["records"], strict=False):
        a = alone["records"][0]
        lines.append(f"| {spec.label}: `{spec.design.describe()}` | {a.score:.4f} | {packed.score:.4f} | "
                     f"{a.final_loss:.6f} | {packed.final_loss:.6f} |")
    # The training step against the GEMM bound.
    lines += ["", "## The training step against the fp32 GEMM bound", "",
              f"GEMM rate ({'2048^3 fp32 matmul' if cpu else '2048^3 fp32 matmul on the GPU'}, measured between "
              f"the phases): {gemm_wall:.1f} GFLOP/s wall, {gemm_cpu:.1f} GFLOP/s per CPU-second; FLOPs per "
              f"training token (train_throughput's formula) {fpt / 1e6:.1f} MFLOP. The first step of each run "
              "is left out.", "",
              "| run | design-tokens/s wall | per CPU-second | fraction of the bound (wall) | (per CPU-second) |",
              "| --- | --- | --- | --- | --- |"]
    a_wall, a_cpu = zip(*(step_rate(r, first_batch, 1) for r in singles), strict=True)
    rows = [("one design alone (median of the sequential runs)", med(a_wall), med(a_cpu))]
    rows += [(f"pack K={k}", *step_rate(packs[k], first_batch, k)) for k in ks]
    for label, w, c in rows:
        lines.append(f"| {label} | {w:.0f} | {c:.0f} | {w * fpt / 1e9 / gemm_wall:.0%} | {c * fpt / 1e9 / gemm_cpu:.0%} |")
    if stage:
        lines += stage_report(stage, backbone, lengths, regime)
    return "\n".join(lines) + "\n"


def stage_report(stage, backbone, lengths, regime) -> list[str]:
    specs, units = stage["specs"], stage["units"]
    n = len(specs)
    lines = ["", "## A paired stage: grouping, every class on each base", "",
             f"{n} designs: {len(stage['bases'])} bases leaving G1 frozen (tuned groups "
             f"{', '.join(str(list(b.tuned_groups)) for b in stage['bases'])}), each with every grouping class "
             f"({', '.join(sorted({s.label.split(' on ')[0] for s in specs}))}), block seed = data seed per base; "
             f"packs as the pool forms them (`group_packs`): {[len(u) for u in units]}.", "",
             "| mode | wall s | CPU s | designs/h (wall) | designs/h (per CPU-hour) | vs one by one (wall / CPU) |",
             "| --- | --- | --- | --- | --- | --- |"]
    off = stage["off"]
    for key, label in (("off", "one by one (run_spec)"), ("packed", "packed, frozen layers not shared"),
                       ("shared", "packed, frozen layers shared")):
        r = stage[key]
        lines.append(f"| {label} | {r['wall']:.1f} | {r['cpu']:.1f} | {3600 * n / r['wall']:.0f} | "
                     f"{3600 * n / r['cpu']:.0f} | {off['wall'] / r['wall']:.2f}x / {off['cpu'] / r['cpu']:.2f}x |")
    diffs = [abs(a.score - b.score) for a, b in zip(off["records"], stage["shared"]["records"], strict=True)]
    firsts = [stage["shared"]["records"][sum(len(x) for x in units[:i])] for i in range(len(units))]
    cuts = [r.result["pack"]["shared_layers"] for r in firsts]
    done = full = 0.0
    for u, cut in zip(units, cuts, strict=True):
        d, f = pass_flops(backbone, stage["lengths"][u[0].data_seed], len(u), cut, True)
        done, full = done + d, full + f
    eval_saved = sum(c * (len(u) - 1) for c, u in zip(cuts, units, strict=True)) / \
        sum(len(backbone.layers) * len(u) for u in units)
    lines += ["", f"Shared frozen layers: cut (the lowest layer any design of the pack acts on) per pack {cuts}; "
              f"training FLOPs of the backbone saved by running the layers below the cut once per batch: "
              f"**{1 - done / full:.1%}** (train_throughput's formula); evaluation (forward only) saves "
              f"{eval_saved:.1%} of its layer FLOPs. Max |score difference|, packed and shared vs one by one: "
              f"{max(diffs):.1e}."]
    return lines


if __name__ == "__main__":
    main()
