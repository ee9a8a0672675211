"""Apply the S4 design (found on T5 in the paper) to SmolLM2-135M on real SST-2, briefly trained.

Writes results/apply/smollm2_s4_sst2.md and .json: metrics, plan summary, seconds and the command.
With ``--compare all-lora`` the all-LoRA baseline runs in the same regime on the same backbone.
The S4 model is saved, loaded into a fresh backbone and evaluated again: the metric must not move.

    python experiments/apply_s4_smollm2.py --compare all-lora
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from designspace.apply import apply_design, report_markdown
from designspace.backbones import load_backbone
from designspace.data import tokenise
from designspace.io import load_trained, read_meta
from designspace.metrics import compute_metrics
from designspace.regime import Regime
from designspace.tasks import get_task
from designspace.train import evaluate_model

OUT = Path(__file__).resolve().parent.parent / "results" / "apply"


def reload_check(saved: Path, regime: Regime, task: str) -> dict:
    """Load the saved model into a fresh backbone and evaluate the same dev rows again."""
    t0 = time.perf_counter()
    fresh = load_backbone(read_meta(saved)["backbone"])
    model = load_trained(saved, fresh)
    backbone_tok = fresh.tokenizer
    spec = get_task(task)
    dev = tokenise(spec, "dev", backbone_tok, regime.max_length, regime.n_dev, 0)
    pad = backbone_tok.pad_token_id or 0
    device = next(model.parameters()).device
    preds, labels = evaluate_model(model, dev, regime, pad, spec.is_regression, device)
    return {"metrics": compute_metrics(spec, np.asarray(preds), labels), "seconds": round(time.perf_counter() - t0, 2)}


def progress(step: int, total: int, loss: float) -> None:
    if step % 10 == 0 or step == total:
        print(f"  step {step}/{total} loss {loss:.4f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="smollm2-135m")
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--n-dev", type=int, default=300)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compare", nargs="*", default=[], help="more designs in the same regime, e.g. all-lora")
    ap.add_argument("--no-reload-check", action="store_true")
    args = ap.parse_args(argv)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])

    regime = Regime(n_train=args.n_train, n_dev=args.n_dev, max_length=args.max_length, batch_size=args.batch_size)
    backbone = load_backbone(args.backbone)  # loaded once, shared by every design below
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ["s4", *args.compare]:
            out_dir = Path(tmp) / name if name == "s4" and not args.no_reload_check else None
            print(f"applying {name} to {args.backbone} on {args.task} ...", flush=True)
            load0, cpu0 = os.getloadavg()[0], time.process_time()
            res = apply_design(name, backbone, args.task, regime, seed=args.seed, out_dir=out_dir, progress=progress)
            # The machine is shared: CPU seconds and the load average say how much of the wall time was ours.
            res["cpu_seconds"] = round(time.process_time() - cpu0, 1)
            res["load_average_1min"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
            print(f"  {res['status']} {res['metrics']} in {res['seconds']['total']} s", flush=True)
            if out_dir is not None and res["status"] == "ok":
                res["reload_check"] = reload_check(out_dir, regime, args.task)
                res["reload_check"]["identical"] = res["reload_check"]["metrics"] == res["metrics"]
                print(f"  reload check: {res['reload_check']}", flush=True)
                res["saved_to"] = None  # a temporary folder; the check above is what it was for
            runs.append(res)

    stem = f"{args.backbone.split('-')[0]}_s4_{get_task(args.task).name}"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{stem}.json").write_text(json.dumps({"command": command, "runs": runs}, indent=1) + "\n")
    head = [
        f"# S4 applied to {args.backbone} on {args.task}",
        "",
        f"Command: `{command}`",
        "",
        f"Regime: {json.dumps({k: v for k, v in regime.to_dict().items() if k != 'lr'})}",
        "",
        "| design | status | " + " | ".join(runs[0]["metrics"]) + " | PET params | train s | total s | CPU s | load avg |",
        "|---|---|" + "---|" * len(runs[0]["metrics"]) + "---|---|---|---|---|",
    ]
    for r in runs:
        vals = " | ".join(f"{r['metrics'].get(k, float('nan')):.4f}" for k in runs[0]["metrics"])
        head.append(
            f"| {r['design_describe']} | {r['status']} | {vals} | {r['plan']['params']:,} | "
            f"{r['seconds']['train']} | {r['seconds']['total']} | {r['cpu_seconds']} | "
            f"{r['load_average_1min'][0]} -> {r['load_average_1min'][1]} |"
        )
    body = [report_markdown(r) for r in runs]
    rc = runs[0].get("reload_check")
    if rc:
        body.append(
            f"Reload check (S4 saved, loaded into a fresh backbone, dev re-evaluated in {rc['seconds']} s): "
            f"metrics {rc['metrics']}, identical: **{rc['identical']}**\n"
        )
    (OUT / f"{stem}.md").write_text("\n".join(head) + "\n\n" + "\n".join(body))
    print(f"wrote {OUT / stem}.md and .json")
    return 0 if all(r["status"] == "ok" for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
