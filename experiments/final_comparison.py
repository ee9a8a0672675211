"""The final comparison (issue 16): the discovered design against the paper's S4, single strategies,
UniPELT- and MAM-like mixes and full fine-tuning, at the same budget, in a regime 5x the refinement's,
over 5 seeds, scored on the GLUE dev sets that no decision read.

    python experiments/final_comparison.py                          # every method that is ready, resumable
    python experiments/final_comparison.py --check-chance          # once: does anything leave chance on RTE / CoLA?
    python experiments/final_comparison.py --cola                  # every method on CoLA too (its own table)
    python experiments/final_comparison.py --report                 # only rewrite README.md from the store

The refinement's brief regime is 1,000 examples x 1 epoch; this one is 2,500 x 2 epochs (5x the
examples seen). Seeds pair the methods: a seed fixes the training subset and order and the head's start.
The discovered design is read from results/paper_minilm/design.yaml (``--discovered``); until it exists
the other methods run and its column says so.

RTE and CoLA were at chance for LoRA on MiniLM-L6 in every regime tried; ``--check-chance`` trains
all-LoRA and full fine-tuning on both once (seed 0) and tests each score against chance (accuracy
against the majority class: exact binomial; MCC against 0: sqrt(n) * MCC is normal under
independence). Where one leaves chance, ``--cola`` adds that task in a table of its own: it is not
part of the three-task average, which stays comparable with the runs before it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from designspace.compare import holm, paired_difference, verdict
from designspace.files import load_design_file
from designspace.presets import PRESETS
from designspace.regime import Regime
from designspace.runs import Run, cell, points
from designspace.trial import TrialSpec

ROOT = Path(__file__).resolve().parents[1]
REGIME = Regime(n_train=2500, epochs=2.0, max_length=128)
BASELINES = ("s4", "all-lora", "all-adapter", "all-prefix", "all-bitfit", "unipelt", "mam")
TASKS = ("sst2", "stsb", "mrpc")
SEEDS = (0, 1, 2, 3, 4)
BUDGET = 0.005


def specs_for(methods: dict, tasks, seeds, regime: Regime = REGIME) -> list[TrialSpec]:
    out = []
    for name, design in methods.items():
        for task in tasks:
            for seed in seeds:
                kw = {"kind": "full"} if design is None else {"design": design, "budget": BUDGET}
                out.append(TrialSpec(task=task, seed=seed, data_seed=seed, regime=regime, label=name, **kw))
    return out


def scores_of(records, methods: list[str], tasks) -> tuple[dict, dict]:
    """(method, task) -> {seed: points}, and method -> {seed: mean over tasks} for seeds with every task."""
    by: dict[tuple, dict[int, float]] = {}
    for r in records:
        if (p := points(r)) is not None:
            by.setdefault((r.spec.label, r.spec.task), {})[r.spec.seed] = p
    avg = {m: {s: sum(by[(m, t)][s] for t in tasks) / len(tasks) for s in SEEDS
               if all(s in by.get((m, t), {}) for t in tasks)} for m in methods}
    return by, avg


def figures(records, methods: list[str], tasks, out: Path) -> list[str]:
    """The paired differences as forest plots (figures/); the README lines that link them."""
    from designspace.analysis.data import paired_data
    from designspace.analysis.render import render_paired

    by, avg = scores_of(records, methods, tasks)
    scores = {**{t: {m: by.get((m, t), {}) for m in methods} for t in tasks}, "average": avg}
    lines = []
    singles = [m for m in ("all-lora", "all-adapter", "all-prefix", "all-bitfit") if m in methods]
    for ref, others, stem, title in (
        ("discovered", [m for m in methods if m != "discovered"], "discovered_vs_methods",
         "The discovered design minus each method"),
        ("s4", singles, "s4_vs_single_strategies", "The paper's S4 minus each single strategy"),
    ):
        if not avg.get(ref):
            continue
        data = paired_data(scores, ref, [m for m in others if avg.get(m)], title)
        (png, *_) = render_paired(data, out / "figures" / stem, ("png", "svg"))
        lines.append(f"![{title}](figures/{png.name})")
    return lines


def _columns(tasks) -> tuple[list[str], str]:
    """The per-task columns and the name of the last one: 'average' over several tasks, or the one task."""
    return (list(tasks), "average") if len(tasks) > 1 else ([], tasks[0])


def table(records, methods: list[str], tasks) -> list[str]:
    by, avg = scores_of(records, methods, tasks)
    cols, last = _columns(tasks)
    lines = ["| method | " + "".join(f"{t} | " for t in cols) + f"{last} |", "|---" * (len(cols) + 2) + "|"]
    for m in methods:
        lines.append(f"| {m} | " + "".join(f"{cell(by.get((m, t), {}).values())} | " for t in cols)
                     + f"{cell(avg[m].values())} |")
    if avg.get("discovered"):
        lines += paired(by, avg, "discovered", [m for m in methods if m != "discovered"], tasks,
                        "the discovered design against each method")
    singles = [m for m in ("all-lora", "all-adapter", "all-prefix", "all-bitfit") if m in methods]
    if avg.get("s4") and singles:
        lines += paired(by, avg, "s4", singles, tasks,
                        "the paper's S4 against each single strategy at the same budget (its claim)")
    return lines


def paired(by: dict, avg: dict, ref: str, others: list[str], tasks, what: str) -> list[str]:
    cols, last = _columns(tasks)
    lines = ["", f"Paired difference of {what} (points; mean over seeds, 95 % t interval over the per-seed "
                 "differences, each interval for its own comparison, not corrected for the table's "
                 f"{len(others) * (len(cols) + 1)}; a seed shares data order and head start):", "",
             "| method | " + "".join(f"{t} | " for t in cols) + f"{last} |", "|---" * (len(cols) + 2) + "|"]
    averages = []
    for m in others:
        cells = [_diff(paired_difference(by.get((ref, t), {}), by.get((m, t), {})), ref) for t in cols]
        averages.append(paired_difference(avg[ref], avg[m]))
        cells.append(_diff(averages[-1], ref))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    adjusted = holm([d["p"] if d else None for d in averages])
    shown = [f"{m} {d['mean']:+.2f}, p {p:.3f} ({'shown' if p < 0.05 else 'not shown'})"
             for m, d, p in zip(others, averages, adjusted, strict=True) if p is not None]
    if shown:
        lines += ["", f"The {last} column as one family of {len(shown)} claims (Holm-adjusted p of the same paired "
                      f"t tests; a claim holds at 5 % for the whole family where p < 0.05): " + "; ".join(shown) + "."]
    return lines


def _diff(d, ref: str) -> str:
    if d is None or d["ci"] is None:
        return "-"
    return f"{d['mean']:+.2f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}] ({verdict(d, ref)})"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--discovered", default=str(ROOT / "results" / "paper_minilm" / "design.yaml"))
    p.add_argument("--output", default=str(ROOT / "results" / "final"))
    p.add_argument("--jobs", type=int)
    p.add_argument("--report", action="store_true", help="only rewrite the report from the store")
    p.add_argument("--check-chance", action="store_true", help="full fine-tuning and all-LoRA once on RTE, CoLA")
    p.add_argument("--cola", action="store_true", help="every method on CoLA too, 5 seeds (a table of its own)")
    a = p.parse_args(argv)
    run = Run(a.output, "Final comparison: the discovered design against the baselines (GLUE dev)")
    methods: dict = {}
    found = Path(a.discovered)
    if found.is_file():
        methods["discovered"] = load_design_file(found)[0]
    methods.update({name: PRESETS[name] for name in BASELINES})
    methods["full fine-tuning"] = None
    specs = specs_for(methods, TASKS, SEEDS)
    chance = specs_for({"all-lora": PRESETS["all-lora"], "full fine-tuning": None}, ("rte", "cola"), (0,))
    cola = specs_for(methods, ("cola",), SEEDS)
    if not a.report:
        run.evaluate(specs, "final comparison", a.jobs)
        if a.check_chance:
            run.evaluate(chance, "RTE/CoLA check", a.jobs)
        if a.cola:
            run.evaluate(cola, "CoLA", a.jobs)
    records = run.store.records([s.key for s in specs])
    checked = run.store.records([s.key for s in chance])
    cola_records = [r for r in run.store.records([s.key for s in cola]) if r.spec.key not in {c.key for c in chance}]
    pending = [] if "discovered" in methods else [f"_The discovered design is pending: {found} does not exist yet "
                                                   "(the refinement runs); the other methods are below._", ""]
    lines = run.header(records + checked + cola_records) + pending + [
        f"Regime: {REGIME.n_train} training examples x {REGIME.epochs:g} epochs (5x the refinement's 1,000 x 1), "
        f"max length {REGIME.max_length}, budget {BUDGET:.1%} of MiniLM-L6 for every PET method; full fine-tuning "
        "trains all 22.7 M weights (lr 5e-5, head 2e-3). Scores: GLUE dev, main metric x 100 (SST-2 accuracy, "
        "STS-B Pearson, MRPC F1), mean ± sd over seeds 0-4.", "",
        *table(records, list(methods), TASKS),
    ]
    lines += ["", *figures(records, list(methods), TASKS, Path(a.output))]
    if checked:
        lines += ["", "### RTE and CoLA: does anything leave chance?", "",
                  "Seed 0 of all-LoRA and full fine-tuning in the same regime, each score tested against chance "
                  "(one-sided p; `compare.above_majority`, `compare.mcc_above_zero`, their level checked by "
                  "simulation in tests/test_compare.py):", "", *chance_lines(checked)]
    cola_all = run.store.records([s.key for s in cola])
    if any(r.spec.seed != 0 for r in cola_all):
        lines += ["", "### CoLA (Matthews correlation x 100; not in the average above)", "",
                  *table(cola_all, list(methods), ("cola",))]
    print(run.finish(lines))


def chance_lines(records) -> list[str]:
    from designspace.compare import above_majority, mcc_above_zero
    from designspace.tasks import read_glue_split

    out, off, seen, majorities = [], set(), set(), {}
    for r in records:
        seen.add(r.spec.task)
        if not r.ok:
            out.append(f"- {r.spec.label} on {r.spec.task}: {r.status} ({r.error})")
            continue
        acc, n = r.metrics["accuracy"], r.n_eval
        if r.spec.task not in majorities:  # the rate of always answering the dev set's majority class
            labels = [row["label"] for row in read_glue_split(r.spec.task, "dev", r.spec.data_dir)]
            majorities[r.spec.task] = max(labels.count(c) for c in set(labels)) / len(labels)
        majority = majorities[r.spec.task]
        p_main = above_majority(acc, n, majority)
        text = (f"- {r.spec.label} on {r.spec.task}: accuracy {100 * acc:.1f} against the majority class's "
                f"{100 * majority:.1f} (p {p_main:.2g})")
        if "mcc" in r.metrics:  # CoLA's main metric
            p_main = mcc_above_zero(r.metrics["mcc"], n)
            text += f", MCC {r.metrics['mcc']:.3f} (p {p_main:.2g} against 0)"
        if p_main < 0.05:
            off.add(r.spec.task)
        out.append(text)
    at = sorted(seen - off)
    out += ["", f"Off chance on its main metric (p < 0.05) for at least one method: {', '.join(sorted(off)) or 'none'}"
            f"{' (its table: `--cola`, below)' if 'cola' in off else ''}; at chance for both: {', '.join(at) or 'none'}"
            f"{' (left out of the comparison)' if at else ''}."]
    return out


if __name__ == "__main__":
    main()
