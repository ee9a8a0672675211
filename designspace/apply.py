"""Apply a design found on one backbone to another: recompile, train briefly, evaluate, optionally save.

A design names patterns and strategy sets, never layer counts or widths, so it transfers to a
backbone of another depth, width or family by compiling it again (``plan.compile``). When the
design comes from a plan or a saved model, that plan's options (LoRA roles and scale, ...) carry over.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import DesignSpaceError
from .files import load_design_file
from .plan import DEFAULT_BUDGET, Plan, compile_plan
from .presets import PRESETS
from .regime import Regime
from .space import Design

if TYPE_CHECKING:
    from .backbones import Backbone


def resolve_design(design_or_path: Design | str | Path) -> tuple[Design, dict | None, float | None]:
    """(design, source plan or None, the budget the source names or None) from a Design, a preset name,
    a design/plan file or a saved folder."""
    if isinstance(design_or_path, Design):
        return design_or_path, None, None
    if isinstance(design_or_path, str) and design_or_path in PRESETS:
        return PRESETS[design_or_path], None, None
    p = Path(design_or_path)
    if p.is_dir():
        if not (p / "plan.json").is_file():
            raise DesignSpaceError(f"{p}: a folder must hold plan.json (a model saved by designspace.io.save_trained)")
        p = p / "plan.json"
    source = None
    if p.suffix == ".json" and p.is_file():
        data = json.loads(p.read_text())
        if data.get("kind") == "plan":
            source = data
    design, budget = load_design_file(p)
    return design, source, budget


def plan_summary(plan: Plan) -> dict:
    """What a person wants to see of a plan: totals and, per strategy, modules, parameters and sizes."""
    by: dict[str, dict] = {}
    for m in plan.modules:
        s = by.setdefault(m.strategy, {"modules": 0, "params": 0, "layers": [], "sizes": []})
        s["modules"] += 1
        s["params"] += m.params
        s["layers"].append(m.layer)
        s["sizes"].append(m.size)
    return {
        "backbone": plan.backbone,
        "n_layers": plan.n_layers,
        "groups": dict(Counter(f"G{g}" for g in plan.groups)),
        "budget": plan.budget,
        "budget_params": plan.budget_params,
        "params": plan.params,
        "fraction": plan.fraction,
        "modules": len(plan.modules),
        "by_strategy": by,
        "summary": plan.summary(),
        "table": plan.table(),
    }


def apply_design(
    design_or_path: Design | str | Path,
    backbone_name: str | Backbone,
    task: str,
    regime: Regime | None = None,
    seed: int = 0,
    budget: float | None = None,
    data_dir=None,
    out_dir: str | Path | None = None,
    options: dict | None = None,
    progress=None,
    role_map: dict | None = None,
) -> dict:
    """Compile a design for ``backbone_name`` (a name for ``load_backbone`` or a loaded Backbone),
    train and evaluate it on ``task``, save it to ``out_dir`` if given (:func:`designspace.io.save_trained`).

    ``budget`` defaults to the one its file names (a discovered design's), else 0.5 %; ``options`` default to the source plan's (if any). Returns a
    JSON-ready dict: design, source, plan summary, status, metrics, score and seconds. A failed or
    diverged trial is returned with its status and error, not raised; the backbone is left as it was.
    """
    from .backbones import load_backbone
    from .train import train_design

    t0 = time.perf_counter()
    design, source, found_at = resolve_design(design_or_path)
    if options is None:
        options = {k: v for k, v in (source.get("options") or {}).items() if k != "origin"} if source else {}
    budget = budget if budget is not None else found_at if found_at is not None else DEFAULT_BUDGET
    backbone = load_backbone(backbone_name, role_map=role_map) if isinstance(backbone_name, str) else backbone_name
    seconds_load = time.perf_counter() - t0
    plan = compile_plan(design, backbone, budget, options)
    regime = regime or Regime()
    result, model = train_design(
        plan, backbone, task, regime, seed=seed, data_dir=data_dir, keep_model=True, progress=progress
    )
    if model is None:  # infeasible: nothing was built
        raise DesignSpaceError(result.error or "the design could not be built")
    saved = None
    try:
        if out_dir is not None and result.status == "ok":
            from .io import save_trained

            extra = {"regime": regime.to_dict(), "seed": seed, "source_backbone": source and source.get("backbone")}
            saved = str(save_trained(model, plan, out_dir, task, metrics=result.metrics, extra=extra))
    finally:
        model.pet.detach()  # the caller may apply another design to the same backbone
    return {
        "design": design.to_dict(),
        "design_id": design.id,
        "design_describe": design.describe(),
        "source_backbone": source.get("backbone") if source else None,
        "backbone": backbone.name,
        "family": backbone.family,
        "task": result.spec.task,
        "seed": seed,
        "regime": regime.to_dict(),
        "plan": plan_summary(plan),
        "status": str(result.status),
        "error": result.error,
        "metrics": result.metrics,
        "score": result.score,
        "steps": result.steps,
        "n_train": result.n_train,
        "n_dev": result.n_eval,
        "trainable_params": result.trainable_params,
        "head_params": result.head_params,
        "final_loss": result.final_loss,
        "seconds": {
            "load": round(seconds_load, 2),
            "train": round(result.seconds_train, 2),
            "eval": round(result.seconds_eval, 2),
            "total": round(time.perf_counter() - t0, 2),
        },
        "saved_to": saved,
        "versions": result.versions,
    }


def report_markdown(result: dict, command: str | None = None) -> str:
    """One applied design as a short markdown section (used by the CLI and the experiment scripts)."""
    p, s = result["plan"], result["seconds"]
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items()) or "-"
    lines = [
        f"## {result['design_describe']} on {result['backbone']} / {result['task']}",
        "",
        f"- design `{result['design_id']}`" + (f", found on {result['source_backbone']}" if result["source_backbone"] else ""),
        f"- status **{result['status']}**" + (f": {result['error']}" if result["error"] else ""),
        f"- dev metrics: {metrics} (n_dev {result['n_dev']}; trained {result['steps']} steps on {result['n_train']} examples)",
        f"- PET params {p['params']:,} ({p['fraction']:.4%} of the backbone) + head {result['head_params']:,}",
        f"- seconds: load {s['load']}, train {s['train']}, eval {s['eval']}, total {s['total']}",
    ]
    if command:
        lines.append(f"- command: `{command}`")
    lines += ["", "```", p["table"], "```", ""]
    return "\n".join(lines)


def add_apply_arguments(parser) -> None:
    """The arguments of ``designspace apply DESIGN --backbone B --task T`` on an argparse parser."""
    parser.add_argument("design", help="preset name, design/plan YAML or JSON, or a saved model folder")
    parser.add_argument("--backbone", required=True, help="minilm-l6, smollm2-135m, a local folder or a hub id")
    parser.add_argument("--task", required=True)
    parser.add_argument("--budget", type=float, default=None,
                        help="fraction of backbone params (default: the budget the design file names, else 0.005)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-dev", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=None, help="save the trained model (and apply.json, apply.md) here")
    parser.add_argument("--role-map", default=None, help="YAML/JSON role map for a family without a built-in one")


def main_apply(args) -> int:
    """Run ``designspace apply`` from parsed :func:`add_apply_arguments`; prints the report, 0 if ok."""
    from .backbones.offline import check_backbone_name
    from .backbones.roles import RoleMap
    from .plan import check_budget

    check_backbone_name(args.backbone)
    if args.budget is not None:
        check_budget(args.budget, "--budget")
    role_map = RoleMap.load(args.role_map).to_dict() if args.role_map else None
    regime = Regime(
        n_train=args.n_train, n_dev=args.n_dev, max_length=args.max_length, batch_size=args.batch_size, epochs=args.epochs
    )
    result = apply_design(
        args.design, args.backbone, args.task, regime, seed=args.seed, budget=args.budget,
        data_dir=args.data_dir, out_dir=args.out, role_map=role_map,
    )
    report = report_markdown(result)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "apply.json").write_text(json.dumps(result, indent=1) + "\n")
        (out / "apply.md").write_text(report)
    print(report)
    return 0 if result["status"] == "ok" else 1


__all__ = ["apply_design", "resolve_design", "plan_summary", "report_markdown", "add_apply_arguments", "main_apply"]
