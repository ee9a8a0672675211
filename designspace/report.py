"""What a refinement found, for people: ``status`` (a few lines while it runs) and ``report.md``
(every decision with its interval and what the interval means, the joint model's view, the cost)."""

from __future__ import annotations

from pathlib import Path

from .decision import paired_sd
from .errors import DesignSpaceError
from .experiment import Experiment
from .stage import StageState, round_specs, stage_name, stage_table
from .store import TrialStore, describe_sessions, describe_wall
from .trial import Status, TrialSpec

INTERVALS = (
    "How to read the intervals. Each choice's interval bounds the true difference between that choice and "
    "the best of the other choices of its stage (in points); all intervals of a stage hold together with the "
    "stated confidence, over every round of the stage (the confidence is spent across the planned rounds). "
    "'Shown worse' means the whole interval is below zero. A tie means every surviving choice is within the "
    "stated margin of the best of the others; tied choices all stay in the space."
)


def _fmt(x, nd=2, sign=True):
    if x is None:
        return "-"
    return f"{x:+.{nd}f}" if sign else f"{x:.{nd}f}"


def spec_maker(e: Experiment, store: TrialStore):
    """Rebuild a stage's specs exactly as the refiner made them (ids from the stored records)."""
    ids: dict[str, tuple[str, str]] = {}
    for r in store.records():
        ids.setdefault(r.spec.task, (r.spec.backbone_id, r.spec.data_id))

    def make(design, task, seed, label=""):
        backbone_id, data_id = ids.get(task, ("", ""))
        return e.spec(design, task, seed, eval_split="select", label=label, backbone_id=backbone_id, data_id=data_id)

    return make


def stage_keys(e: Experiment, store: TrialStore, state: StageState) -> list[str]:
    make = spec_maker(e, store)
    return [s.key for r in range(len(state.rounds)) for s in round_specs(state, r, make, e.tasks, e.seeds_per_design)]


def status(experiment: Experiment) -> str:
    """Stage, trials done, not ok and lost, and an ETA, for a running or finished refinement (no torch)."""
    e = experiment
    path = e.store_path
    if not Path(path).exists():
        return f"{e.name}: not started ({path} does not exist)"
    store = TrialStore(path, create=False, readonly=True)
    from .refine import load_states

    states = {s.name: s for s in load_states(store)}
    statuses = store.statuses()
    records = [r for r in store.records() if r.status is not Status.LOST]
    secs = [r.seconds_train + r.seconds_eval for r in records if r.ok]
    mean_s = sum(secs) / len(secs) if secs else None
    lines = [f"{e.name}: {path}"]
    left = 0
    for i, component in enumerate(e.stages):
        name = stage_name(i, component)
        state = states.get(name)
        if state is None:
            lines.append(f"  {name:<18} pending")
            continue
        if state.status == "skipped":
            lines.append(f"  {name:<18} skipped ({state.note})")
            continue
        keys = list(dict.fromkeys(stage_keys(e, store, state)))
        got = [statuses[k] for k in keys if k in statuses]
        done = sum(s.final for s in got)
        not_ok = sum(s.final and s is not Status.OK for s in got)
        lost = sum(s is Status.LOST for s in got)
        v = state.verdict()
        what = (f"{state.status}: {', '.join(state.kept)}" if state.decided
                else f"running, round {len(state.rounds)} of at most {e.max_rounds}")
        if v and not state.decided:
            what += f", {len(v.survivors)} left"
        lines.append(f"  {name:<18} {what[:60]:<60} trials {done}/{len(keys)} (not ok {not_ok}, lost {lost})")
        left += 0 if state.decided else len(keys) - done
    if mean_s and left:
        lines.append(f"  this round: about {left * mean_s / 60 / max(1, e.n_jobs or 2):.1f} min left "
                     f"({left} trials x {mean_s:.1f} s over the workers); later rounds are planned as they come")
    final = store.note("final_design")
    if final:
        from .space import Design

        lines.append(f"  final design: {Design.from_dict(final['design']).describe()} ({final['chosen_by']})")
    return "\n".join(lines)


def _cost(records) -> str:
    cpu = sum(r.seconds_train + r.seconds_eval for r in records) / 60
    return (f"{len(records)} trials ({sum(r.ok for r in records)} ok), {cpu:.1f} CPU-minutes of training and "
            f"scoring, {describe_wall(records, 'minutes')}")


def _stage_section(state: StageState, store: TrialStore, e: Experiment, figures: list[str]) -> list[str]:
    out = [f"## Stage {state.name}: {state.status}", ""]
    if state.status == "skipped":
        return out + [f"Skipped: {state.note}.", ""]
    blocks = [len(r.blocks) for r in state.rounds]
    out.append(f"{len(state.classes)} choices; {len(state.rounds)} round(s) of {', '.join(map(str, blocks))} blocks "
               f"(base designs), {e.seeds_per_design} seed(s) per design, tasks {', '.join(e.tasks)}.")
    out += [f"- round {i + 1}: {why}" for i, why in enumerate(state.sizing)]
    merged = [c.label for c in state.classes if len(c.choices) > 1]
    if merged:
        out.append(f"- merged (identical plans on this backbone): {', '.join(merged)}")
    v = state.verdict()
    if v is None:
        return out + ["", "_No round judged yet._", ""]
    out += ["", f"**{v.meaning}**", "", v.best_meaning, "",
            f"Paired noise (residual sd of the two-way model): {_fmt(v.resid_sd, sign=False)} points, "
            f"{v.df} degrees of freedom; critical value {v.critical_source}.", "", *_noise_by_task(state, store, e),
            "| choice | trials | mean | effect | interval vs best of others | shown worse at round |",
            "|---|---:|---:|---:|---|---:|"]
    for c in sorted(v.choices, key=lambda c: -(c.effect if c.effect is not None else -1e9)):
        interval = f"[{_fmt(c.lower)}, {_fmt(c.upper)}]" if c.lower is not None else "-"
        out.append(f"| {c.choice} | {c.n} | {_fmt(c.mean, sign=False)} | {_fmt(c.effect)} | {interval} | "
                   f"{c.eliminated_round or ''} |")
    keys = stage_keys(e, store, state)
    bad = [r for r in store.records(keys) if not r.ok]
    if bad:
        out.append("")
        for status in sorted({str(r.status) for r in bad}):  # the first error of each kind of failure
            group = [r for r in bad if str(r.status) == status]
            first = next((r.error for r in group if r.error), "")
            out.append(f"_{len(group)} trial(s) {status}, left out of the table; first error: {first}_")
    empty = [c.choice for c in v.choices if not c.n]
    if empty:
        out += ["", f"_No trial finished ok for: {', '.join(empty)} (no score, no interval)._"]
    if state.note:
        out += ["", f"_{state.note}_"]
    out += [f"\n![{state.name}]({f})" for f in figures]
    return out + [""]


def _noise_by_task(state: StageState, store: TrialStore, e: Experiment) -> list[str]:
    """Where a stage averages several tasks, each task's own paired noise: a task whose scores swing
    between designs and seeds far more than the others' dominates the average (and the blocks needed)."""
    if len(e.tasks) < 2:
        return []
    make = spec_maker(e, store)
    records = {r.key: r for r in store.records(stage_keys(e, store, state))}
    parts = []
    for task in e.tasks:
        try:
            table, _ = stage_table(state, len(state.rounds) - 1, records, make, [task], e.seeds_per_design)
        except DesignSpaceError:
            return []  # a round still running: no per-task view yet
        sd, df = paired_sd(table)
        parts.append(f"{task} {_fmt(sd, sign=False)} ({df} df)")
    return [f"Paired noise of each task alone (same model, points): {'; '.join(parts)}.", ""]


def render(experiment: Experiment, store: TrialStore, figures: dict[str, list[str]] | None = None) -> str:
    from .refine import load_states

    e = experiment
    r = e.regime
    states = load_states(store)
    records = [x for x in store.records() if x.status is not Status.LOST]
    split = (f"a selection split of {e.selection} examples carved from each task's training file (never trained on); "
             "the GLUE dev sets were not read" if e.selection else "the GLUE dev sets")
    out = [
        f"# Refinement report: {e.name}", "",
        f"Backbone `{e.backbone}`, tasks {', '.join(e.tasks)}, budget {e.budget:.3%} of the backbone's parameters.",
        f"Regime: {r.n_train} training examples, {r.epochs} epoch(s), batch {r.batch_size}, max length "
        f"{r.max_length}; regime id `{r.id}`. Decisions read {split}.",
        f"Cost: {_cost(records)}; {describe_sessions(store.note('sessions', []), [r.started_at for r in records])}.", "",
        "Score of a design in a block: the mean over tasks of each task's main metric, in points, averaged over "
        "its seeds. In a block every choice shares the base design, the seed and the data order (common random "
        "numbers): choices are compared by within-block differences (two-way model: block + choice).", "",
        INTERVALS, "",
    ]
    for state in states:
        out += _stage_section(state, store, e, (figures or {}).get(state.name, []))
    out += _joint_section(store, states, e)
    final = store.note("final_design")
    if final:
        from .space import Design

        design = Design.from_dict(final["design"])
        out += ["## Discovered design", "", f"`{design.id}`: {design.describe()} at {e.budget:.3%} "
                f"(chosen by: {final['chosen_by']}; saved as `design.yaml`).", ""]
        for fig in (figures or {}).get("final", []):
            out += [f"![final]({fig})", ""]
    else:
        decided = sum(s.decided for s in states)
        out += [f"_{decided} of {len(e.stages)} stages decided so far._", ""]
    return "\n".join(out)


def _joint_section(store: TrialStore, states: list[StageState], e: Experiment) -> list[str]:
    from .joint_view import joint_report

    return joint_report(store, states, e)


def write_report(experiment: Experiment, figures: dict[str, list[str]] | None = None) -> Path:
    """report.md, and trials.csv beside it: every trial of the store, one row each (spec, outcome, metrics)."""
    with TrialStore(experiment.store_path, create=False, readonly=True) as store:
        text = render(experiment, store, figures)
        store.to_dataframe().to_csv(experiment.out_dir / "trials.csv", index=False)
    path = experiment.out_dir / "report.md"
    path.write_text(text)
    return path


__all__ = ["status", "render", "write_report", "TrialSpec"]
