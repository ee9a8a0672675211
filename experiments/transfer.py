"""Transfer (issue 16): the discovered design and all-LoRA, recompiled for SmolLM2-135M (30 layers,
Llama) and all-mpnet-base-v2 (12 layers, 768 wide), 3 seeds, SST-2 and STS-B, scored on GLUE dev;
MiniLM-L6 (where the design was found) beside them.

    python experiments/transfer.py                # resumable; hours on 2 cores (SmolLM2 is 6x MiniLM)

A design names patterns and strategy sets, not layer counts or widths: it is compiled again for each
backbone at the same budget fraction (0.5 %).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from designspace.compare import paired_difference, verdict
from designspace.files import load_design_file
from designspace.presets import PRESETS
from designspace.regime import Regime
from designspace.runs import Run, cell, points
from designspace.trial import TrialSpec

ROOT = Path(__file__).resolve().parents[1]
REGIME = Regime(n_train=2000, max_length=128)
BACKBONES = ("minilm-l6", "mpnet-base", "smollm2-135m")
TASKS = ("sst2", "stsb")
SEEDS = (0, 1, 2)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--discovered", default=str(ROOT / "results" / "paper_minilm" / "design.yaml"))
    p.add_argument("--output", default=str(ROOT / "results" / "transfer"))
    p.add_argument("--backbones", default=",".join(BACKBONES))
    p.add_argument("--jobs", type=int)
    p.add_argument("--report", action="store_true")
    a = p.parse_args(argv)
    run = Run(a.output, "Transfer: the discovered design and all-LoRA on other backbones")
    designs = {"all-lora": PRESETS["all-lora"]}
    if Path(a.discovered).is_file():
        designs = {"discovered": load_design_file(a.discovered)[0], **designs}
    backbones = a.backbones.split(",")
    specs = [TrialSpec(task=t, design=d, seed=s, data_seed=s, regime=REGIME, backbone=b, label=f"{name}@{b}")
             for b in backbones for name, d in designs.items() for t in TASKS for s in SEEDS]
    if not a.report:
        for b in backbones:  # one backbone at a time: a worker keeps one loaded
            run.evaluate([s for s in specs if s.backbone == b], f"transfer {b}", a.jobs)
    records = run.store.records([s.key for s in specs])
    by: dict[tuple, dict[int, float]] = {}
    for r in records:
        if (v := points(r)) is not None:
            by.setdefault((r.spec.label, r.spec.task), {})[r.spec.seed] = v
    lines = run.header(records) + [
        f"Regime: {REGIME.n_train} examples x 1 epoch, max length {REGIME.max_length}, budget 0.5 % of each backbone; "
        "GLUE dev, main metric x 100 (SST-2 accuracy, STS-B Pearson), mean ± sd over seeds 0-2.", "",
        "| backbone | design | " + " | ".join(TASKS) + " |", "|---|---|" + "---|" * len(TASKS)]
    for b in backbones:
        for name in designs:
            lines.append(f"| {b} | {name} | " + " | ".join(cell(by.get((f'{name}@{b}', t), {}).values())
                                                         for t in TASKS) + " |")
    if "discovered" in designs:
        lines += ["", "Discovered minus all-LoRA, paired by seed (95 % t interval):", ""]
        for b in backbones:
            for t in TASKS:
                d = paired_difference(by.get((f"discovered@{b}", t), {}), by.get((f"all-lora@{b}", t), {}))
                if d and d["ci"]:
                    lines.append(f"- {b}, {t}: {d['mean']:+.2f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}] "
                                 f"({verdict(d, 'discovered')})")
    else:
        lines += ["", f"_The discovered design is pending ({a.discovered} does not exist yet)._"]
    print(run.finish(lines))


if __name__ == "__main__":
    main()
