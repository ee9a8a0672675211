"""The refinement report: every decision with its CI, its rank test and the per-design noise."""

from __future__ import annotations

from pathlib import Path

from .experiment import Experiment
from .refine import load_decisions, stage_name
from .space import Design
from .store import TrialStore


def _fmt(x, nd=2):
    return "-" if x is None else f"{x:.{nd}f}"


def render(experiment: Experiment, store: TrialStore, figures: dict[str, list[str]] | None = None) -> str:
    e = experiment
    decisions = load_decisions(store, e)
    rows = store.trials()
    ok = [r for r in rows if r["status"] == "ok"]
    secs = sum((r.get("seconds_train") or 0) + (r.get("seconds_eval") or 0) for r in ok)
    out = [
        f"# Refinement report: {e.name}",
        "",
        f"Backbone `{e.backbone}`, tasks {', '.join(e.tasks)}, budget {e.budget:.3%} of the backbone's parameters.",
        f"Regime: {e.regime.n_train} training examples, {e.regime.epochs} epoch(s), batch {e.regime.batch_size}, "
        f"dev examples {e.regime.n_dev or 'all'}, max length {e.regime.max_length}; regime id `{e.regime.id}`.",
        f"Trials: {len(rows)} ({len(ok)} ok), {secs / 60:.1f} min of training and evaluation in total.",
        "",
        "Score of a design: mean over tasks of the task's main metric, in points. Within a stage every design "
        "sees the same training subset and batch order (paired comparisons); CIs are 95 % percentile bootstrap "
        "intervals of the mean over designs; p is a two-sided Mann-Whitney U test of each choice against the best; "
        "P(best) is the share of bootstrap resamples in which the best choice keeps the highest mean; noise is the "
        "seed-to-seed standard deviation of one design's score (replicated designs).",
        "",
    ]
    decided = dict(decisions)
    for i, component in enumerate(e.stages):
        stage = stage_name(i, component)
        reason = store.meta_get(f"skipped:{stage}")
        if reason:
            out += [f"## Stage {stage}", "", f"Skipped: {reason}.", ""]
        if stage not in decided:
            continue
        d = decided[stage]
        out += [
            f"## Stage {stage}",
            "",
            f"**Decision: {d.best}** — margin {d.margin:+.2f} points over the runner-up "
            f"(95 % CI {d.margin_ci[0]:+.2f} to {d.margin_ci[1]:+.2f}), P(best) = {d.p_best:.2f}, "
            f"confidence **{d.confidence}**; per-design noise σ = {_fmt(d.noise_sd)} points; {d.n_trials} designs.",
            "",
            "| choice | designs | mean | 95 % CI | p vs best |",
            "|---|---:|---:|---|---:|",
        ]
        for c in d.choices:
            out.append(f"| {c.choice} | {c.n} | {c.mean:.2f} | {c.ci[0]:.2f} – {c.ci[1]:.2f} | {_fmt(c.p_vs_best, 3)} |")
        if d.note:
            out += ["", f"_{d.note}_"]
        for fig in (figures or {}).get(stage, []):
            out += ["", f"![{stage}]({fig})"]
        out.append("")
    final = store.meta_get("final_design")
    if final:
        design = Design.from_dict(final)
        out += ["## Discovered design", "", f"`{design.id}`: {design.describe()} (saved as `design.yaml`).", ""]
        for fig in (figures or {}).get("final", []):
            out += [f"![final]({fig})", ""]
    elif len(decisions) < len(e.stages):
        out += [f"_{len(decisions)} of {len(e.stages)} stages decided so far._", ""]
    return "\n".join(out)


def write_report(experiment: Experiment, figures: dict[str, list[str]] | None = None) -> Path:
    store = TrialStore(experiment.store_path, create=False)
    path = experiment.out_dir / "report.md"
    path.write_text(render(experiment, store, figures))
    return path
