"""The joint additive model (``joint.py``) over a refinement's trials: its rows, its best design, its
report section. Each block of each stage is one block of the model; a design's score in a block is
the same number the stage's table holds."""

from __future__ import annotations

import math

from .experiment import Experiment
from .space import Design, DesignSpace
from .stage import StageState, block_specs, design_score
from .store import TrialStore


def joint_rows(store: TrialStore, states: list[StageState], e: Experiment) -> list[dict]:
    """One row per (block, design) of every stage: score, block id and the design's components."""
    from .report import spec_maker

    make = spec_maker(e, store)
    wanted: list[tuple[str, Design, list]] = []
    for state in states:
        for rnd in state.rounds:
            for block in rnd.blocks:
                base = Design.from_dict(block.base)
                for label, specs in block_specs(state, block, rnd.alive, make, e.tasks, e.seeds_per_design).items():
                    cls = next(c for c in state.classes if c.label == label)
                    design = base.with_choice(state.component, cls.representative(state.component))
                    wanted.append((f"{state.name}/{block.seed}", design, specs))
    records = {r.key: r for r in store.records([s.key for _, _, specs in wanted for s in specs])}
    rows = []
    for block, design, specs in wanted:
        score = design_score([records.get(s.key) for s in specs if s.key in records])
        if len(specs) and all(s.key in records for s in specs) and math.isfinite(score):
            rows.append({"score": score, "block": block, **design.to_dict()})
    return rows


def fit(store: TrialStore, states: list[StageState], e: Experiment):
    """The joint fit over every trial of the experiment, or None when there is too little to fit."""
    from .errors import DesignSpaceError
    from .joint import fit_joint

    rows = joint_rows(store, states, e)
    if len({r["block"] for r in rows}) < 2:
        return None
    try:
        return fit_joint(rows)
    except DesignSpaceError:
        return None


def joint_best(store: TrialStore, states: list[StageState], space: DesignSpace, e: Experiment) -> Design | None:
    """The joint model's best design in the remaining space (None if nothing there is estimable)."""
    from .errors import DesignSpaceError

    model = fit(store, states, e)
    if model is None:
        return None
    try:
        return Design.from_dict(model.best_design(space).design)
    except DesignSpaceError:
        return None


def joint_report(store: TrialStore, states: list[StageState], e: Experiment) -> list[str]:
    """The report's section: every estimable effect with its interval, the additivity test, and where
    the greedy stages and the joint model disagree."""
    model = fit(store, states, e)
    if model is None:
        return []
    out = ["## One model over all trials", "",
           f"An additive model of the score (block fixed effects + grouping + allocation + tuned groups + each tuned "
           f"group's strategy set) fitted by least squares on {model.n_trials} design scores in {model.n_blocks} "
           f"blocks; residual sd {model.resid_sd:.2f} points ({model.df_resid} df). Effects are relative to each "
           "component's reference choice; intervals are per comparison (95 %), not simultaneous.", "",
           "| component | choice | designs | effect | 95 % interval | |", "|---|---|---:|---:|---|---|"]
    for eff in model.effects:
        if eff.reference:
            what = "reference"
        elif not eff.estimable:
            what = "not estimable (never compared inside a block)"
        else:
            what = ""
        est = "0" if eff.reference else (f"{eff.estimate:+.2f}" if eff.estimable else "-")
        ci = f"[{eff.lower:+.2f}, {eff.upper:+.2f}]" if eff.estimable and not eff.reference else "-"
        out.append(f"| {eff.component} | {eff.choice} | {eff.n} | {est} | {ci} | {what} |")
    out += ["", f"Additivity: {model.additivity.meaning}", ""]
    greedy = {s.component: s.verdict().best for s in states if s.verdicts}
    disagree = []
    for comp, best in greedy.items():
        est = [x for x in model.effects if x.component == comp and x.estimable]
        if est:
            top = max(est, key=lambda x: 0.0 if x.reference else x.estimate)
            labels = best.split("=")
            if top.choice not in labels:
                disagree.append(f"{comp}: stages say {best}, the joint model {top.choice}")
    out += ["Where the greedy stages and the joint model disagree: " + ("; ".join(disagree) if disagree else "nowhere")
            + ".", ""]
    return out
