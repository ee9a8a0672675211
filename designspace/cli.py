"""``designspace`` command line: refine, status, report, plot, sample, show, train, search, apply, retry, export."""

from __future__ import annotations

import argparse
import json
import sys

from .errors import DesignSpaceError


def _experiment(args):
    from .experiment import Experiment

    return Experiment.load(
        args.experiment, data_dir=getattr(args, "data_dir", None), backend=getattr(args, "backend", None),
        n_jobs=getattr(args, "jobs", None), output=getattr(args, "output", None),
    )


def _role_map(args) -> dict | None:
    if not getattr(args, "role_map", None):
        return None
    from .backbones.roles import RoleMap

    return RoleMap.load(args.role_map).to_dict()


def _budget(args, default=None):
    from .plan import DEFAULT_BUDGET, check_budget

    if args.budget is None:
        return DEFAULT_BUDGET if default is None else default
    return check_budget(args.budget, "--budget")


def cmd_refine(args) -> int:
    from .refine import Refiner
    from .report import write_report

    exp = _experiment(args)
    design = Refiner(exp).run()
    path = write_report(exp)
    print(f"{design.id}\t{design.describe()}\nreport: {path}\ndesign: {exp.out_dir / 'design.yaml'}")
    return 0


def cmd_status(args) -> int:
    from .report import status

    print(status(_experiment(args)))
    return 0


def cmd_report(args) -> int:
    from .report import write_report

    path = write_report(_experiment(args))
    print(path.read_text())
    print(f"(written to {path})", file=sys.stderr)
    return 0


def cmd_sample(args) -> int:
    from .files import load_yaml
    from .space import DesignSpace

    space = DesignSpace()
    if args.space:
        data = load_yaml(args.space)
        space = DesignSpace.from_dict(data.get("space", data), source=args.space)
    for d in space.sample(args.n, seed=args.seed):
        print(json.dumps({"id": d.id, **d.to_dict()}) if args.json else f"{d.id}  {d.describe()}")
    return 0


def cmd_show(args) -> int:
    from .backbones import backbone_info
    from .files import load_design_file
    from .plan import compile_plan

    design, found_at = load_design_file(args.design)
    budget = _budget(args, found_at)
    plan = compile_plan(design, backbone_info(args.backbone, role_map=_role_map(args)), budget)
    print(f"design {design.id}: {design.describe()}")
    print(plan.table())
    if args.save:
        plan.save(args.save)
        print(f"plan written to {args.save}", file=sys.stderr)
    return 0


def cmd_train(args) -> int:
    from .backbones import load_backbone
    from .backbones.offline import check_backbone_name
    from .files import load_design_file
    from .regime import Regime
    from .train import train_design

    design, found_at = load_design_file(args.design)
    budget = _budget(args, found_at)
    regime = Regime(n_train=args.n_train, n_dev=args.n_dev, epochs=args.epochs)
    check_backbone_name(args.backbone)
    bb = load_backbone(args.backbone, role_map=_role_map(args))
    res = train_design(design, bb, args.task, regime, seed=args.seed, budget=budget, data_dir=args.data_dir)
    out = res.to_dict()
    out.pop("traceback", None)
    out.pop("predictions", None)
    print(json.dumps(out, indent=1, default=str))
    return 0 if res.ok else 1


def cmd_plot(args) -> int:
    from .analysis.figures import plot_results

    for path in plot_results(args.results, formats=tuple(args.formats.split(","))):
        print(path)
    return 0


def cmd_search(args) -> int:
    from .s3pet import run_search_experiment

    run_search_experiment(args.experiment, data_dir=args.data_dir, output=args.output, role_map=_role_map(args))
    return 0


def cmd_apply(args) -> int:
    from .apply import main_apply

    return main_apply(args)


def cmd_retry(args) -> int:
    from pathlib import Path

    from .store import TrialStore

    path = Path(args.store)
    if path.is_dir():
        path = path / "trials.sqlite"
    if not path.is_file():
        raise DesignSpaceError(f"{path}: no trial store there; pass a trials.sqlite or the results folder holding it")
    # Never beside a running driver (it would train a reopened trial twice, or miss it).
    with TrialStore(path, create=False) as store, store.driver_lock("retry once it has ended"):
        n = store.retry(args.status, args.label)
    which = f" of label {args.label!r}" if args.label else ""
    print(f"{n} {args.status} trial(s){which} reopened in {path}; rerun the command that made the store to train them")
    return 0


def cmd_export(args) -> int:
    from .export import export_peft

    print(export_peft(args.saved, args.out))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="designspace", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def exp_cmd(name, fn, help_):
        s = sub.add_parser(name, help=help_)
        s.add_argument("experiment", help="experiment YAML file (see experiments/)")
        s.add_argument("--data-dir", help="GLUE folder (default: $DESIGNSPACE_GLUE_DIR or ../shared/data/glue)")
        s.add_argument("--output", help="results folder (default: results/<experiment name>)")
        s.set_defaults(fn=fn)
        return s

    s = exp_cmd("refine", cmd_refine, "run or resume every refinement stage")
    s.add_argument("--backend", choices=["loky", "sequential", "dask", "ray"])
    s.add_argument("--jobs", type=int, help="worker processes")
    exp_cmd("status", cmd_status, "stage, trials done and failed, ETA")
    exp_cmd("report", cmd_report, "write report.md with every decision, its interval and what it means")
    s = exp_cmd("search", cmd_search, "S3PET sparse structure search")
    s.add_argument("--role-map", help="YAML/JSON role map for a family without a built-in one")

    s = sub.add_parser("sample", help="draw designs from a space")
    s.add_argument("-n", type=int, default=5)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--space", help="YAML with a space: mapping (default: the full space)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_sample)

    presets = "preset (s4, all-lora, all-adapter, all-prefix, all-bitfit, unipelt, mam)"
    s = sub.add_parser("show", help="a design's plan, layer by layer")
    s.add_argument("design", help=f"design YAML/JSON file or {presets}")
    s.add_argument("--backbone", default="minilm-l6")
    s.add_argument("--budget", type=float, help="fraction of the backbone (default: the design file's, else 0.005)")
    s.add_argument("--role-map", help="YAML/JSON role map for a family without a built-in one")
    s.add_argument("--save", help="write the plan JSON here")
    s.set_defaults(fn=cmd_show)

    s = sub.add_parser("train", help="train one design briefly and print its metrics")
    s.add_argument("design", help=f"design YAML/JSON file or {presets}")
    s.add_argument("--backbone", default="minilm-l6")
    s.add_argument("--task", default="sst2")
    s.add_argument("--budget", type=float, help="fraction of the backbone (default: the design file's, else 0.005)")
    s.add_argument("--n-train", type=int, default=2000)
    s.add_argument("--n-dev", type=int)
    s.add_argument("--epochs", type=float, default=1.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--data-dir")
    s.add_argument("--role-map", help="YAML/JSON role map for a family without a built-in one")
    s.set_defaults(fn=cmd_train)

    from .apply import add_apply_arguments

    s = sub.add_parser("apply", help="recompile a design for another backbone, train and evaluate")
    add_apply_arguments(s)
    s.set_defaults(fn=cmd_apply)

    s = sub.add_parser("plot", help="write every figure of a results folder and link them from report.md")
    s.add_argument("results", help="results folder of an experiment (with trials.sqlite)")
    s.add_argument("--formats", default="png,svg")
    s.set_defaults(fn=cmd_plot)

    s = sub.add_parser("retry", help="reopen failed, infeasible or diverged trials of a store (after a fix)")
    s.add_argument("store", help="trials.sqlite, or the results folder holding it")
    s.add_argument("--status", required=True, choices=["failed", "infeasible", "diverged"])
    s.add_argument("--label", help="only trials of this spec label (e.g. 'full fine-tuning')")
    s.set_defaults(fn=cmd_retry)

    s = sub.add_parser("export", help="export a saved LoRA-only design to an HF peft adapter folder")
    s.add_argument("saved", help="folder written by apply --out / io.save_trained")
    s.add_argument("out")
    s.set_defaults(fn=cmd_export)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except DesignSpaceError as e:
        print(f"designspace: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a read-only folder...: what and where, not a traceback
        where = f" ({e.filename})" if e.filename else ""
        print(f"designspace: error: {e.strerror or e}{where}; finished trials are in the store", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("designspace: stopped; finished trials are in the store, rerun the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
