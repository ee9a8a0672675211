"""Choose the brief regime: accuracy, seed noise and cost of the all-LoRA design at 0.5 % on SST-2.

Runs every (regime, seed) pair, seed-major (so a cut-short run still covers every regime), appends one
JSON line per run to ``regime.jsonl`` next to this file and writes ``regime.md`` from all lines.

    python experiments/train_regime.py            # measure, then write regime.md
    python experiments/train_regime.py --only 0 1 2 & python experiments/train_regime.py --only 3 4  # 2 processes
    python experiments/train_regime.py --report   # only rewrite regime.md from regime.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from designspace import PRESETS, compile_plan
from designspace.backbones import load_backbone
from designspace.regime import Regime, with_lr
from designspace.train import train_design

HERE = Path(__file__).resolve().parent.parent / "results" / "train"
BASE = Regime(threads=1)
REGIMES = {
    "2000 ex x 1 epoch, bs 16, lr 2e-3": BASE,
    "1000 ex x 2 epochs, bs 16, lr 2e-3": replace(BASE, n_train=1000, epochs=2.0),
    "2000 ex x 1 epoch, bs 16, lr 1e-3": with_lr(BASE, lora=1e-3, head=1e-3),
    "2000 ex x 1 epoch, bs 16, lr 4e-3": with_lr(BASE, lora=4e-3, head=4e-3),
    "2000 ex x 1 epoch, bs 32, lr 4e-3": with_lr(replace(BASE, batch_size=32), lora=4e-3, head=4e-3),
}
SEEDS = (0, 1, 2)


def measure(out: Path, which: list[int]) -> None:
    torch.set_num_threads(1)
    backbone = load_backbone("minilm-l6")
    plan = compile_plan(PRESETS["all-lora"], backbone)
    done = {(r["regime"], r["seed"]) for r in load(out)}
    for seed in SEEDS:
        for i, (name, regime) in enumerate(REGIMES.items()):
            if (name, seed) in done or i not in which:
                continue
            t, c = time.perf_counter(), time.process_time()
            r = train_design(plan, backbone, "sst2", regime, seed=seed)
            row = {"regime": name, "seed": seed, "status": str(r.status), "accuracy": r.score, "final_loss": r.final_loss,
                   "seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - c,
                   "seconds_train": r.seconds_train, "seconds_eval": r.seconds_eval, "tokens": r.tokens,
                   "steps": r.steps, "load": os.getloadavg()[0]}
            with open(out, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(row, file=sys.stderr, flush=True)


def load(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def report(rows: list[dict], command: str) -> str:
    lines = [
        "# Brief regime: all-LoRA at 0.5 % on SST-2 (MiniLM-L6, full dev, 1 torch thread)",
        "",
        f"Command: `{command}` (raw rows: `regime.jsonl`). Seeds 0, 1, 2; the seed sets the initialisation",
        "and the training subset. Seconds are per design (build + train + full-dev eval) on a shared 2-core",
        "machine; CPU seconds are less disturbed by the other jobs and are what the noise figures use.",
        "",
        "| regime | n | dev accuracy mean | std | min | wall s | CPU s | std x sqrt(CPU s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in REGIMES:
        rs = [r for r in rows if r["regime"] == name and r["status"] == "ok"]
        if not rs:
            continue
        acc = [r["accuracy"] for r in rs]
        sd = statistics.stdev(acc) if len(acc) > 1 else float("nan")
        cpu = statistics.mean(r["cpu_seconds"] for r in rs)
        lines.append(
            f"| {name} | {len(rs)} | {statistics.mean(acc):.4f} | {sd:.4f} | {min(acc):.4f} | "
            f"{statistics.mean(r['seconds'] for r in rs):.1f} | {cpu:.1f} | {sd * math.sqrt(cpu):.3f} |"
        )
    lines += [
        "",
        "std x sqrt(CPU s) is the noise left after spending one CPU-second on repeats of a regime "
        "(k repeats shrink the std by sqrt(k)); lower is better, at a mean that is not lower.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", action="store_true", help="only rewrite regime.md from regime.jsonl")
    ap.add_argument("--only", type=int, nargs="*", default=list(range(len(REGIMES))),
                    help="indices of the regimes to measure (to split the work over processes)")
    args = ap.parse_args(argv)
    rows_path = HERE / "regime.jsonl"
    if not args.report:
        measure(rows_path, args.only)
    text = report(load(rows_path), "python experiments/train_regime.py")
    (HERE / "regime.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
