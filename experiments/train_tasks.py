"""Every GLUE task we ship end to end: the all-LoRA design at 0.5 % in the default brief regime, seed 0.

    python experiments/train_tasks.py     # writes tasks.md (and tasks.jsonl) next to this file
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch

from designspace import PRESETS, compile_plan
from designspace.backbones import load_backbone
from designspace.regime import Regime
from designspace.tasks import get_task
from designspace.train import train_design

HERE = Path(__file__).resolve().parent.parent / "results" / "train"
TASKS = ("mrpc", "rte", "stsb", "cola")


def main(argv=None) -> None:
    import argparse

    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    torch.set_num_threads(1)
    regime = replace(Regime(), threads=1)
    backbone = load_backbone("minilm-l6")
    plan = compile_plan(PRESETS["all-lora"], backbone)
    rows = []
    for task in TASKS:
        r = train_design(plan, backbone, task, regime, seed=0)
        row = {"task": task, "status": str(r.status), "error": r.error, "metrics": r.metrics, "score": r.score,
               "n_train": r.n_train, "n_dev": r.n_eval, "steps": r.steps, "tokens": r.tokens,
               "final_loss": r.final_loss, "seconds_train": r.seconds_train, "seconds_eval": r.seconds_eval,
               "load": os.getloadavg()[0]}
        rows.append(row)
        print(row, file=sys.stderr, flush=True)
    (HERE / "tasks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = [
        "# Other GLUE tasks, end to end (all-LoRA at 0.5 %, MiniLM-L6, default brief regime, seed 0)",
        "",
        "Command: `python experiments/train_tasks.py` (1 torch thread, shared 2-core machine: seconds are",
        f"inflated by other jobs). Regime: `{json.dumps({k: v for k, v in regime.to_dict().items() if k != 'lr'})}`,",
        f"lr {regime.lr_for('lora')} (LoRA and head).",
        "",
        "| task | status | main metric | metrics | train / dev examples | steps | train tokens | train s | eval s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in r["metrics"].items())
        main = f"{get_task(r['task']).main_metric} {r['score']:.4f}" if r["score"] is not None else "-"
        lines.append(
            f"| {r['task']} | {r['status']} | {main} | {metrics} | {r['n_train']} / {r['n_dev']} | {r['steps']} | "
            f"{r['tokens']:,} | {r['seconds_train']:.0f} | {r['seconds_eval']:.0f} |"
        )
    (HERE / "tasks.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
