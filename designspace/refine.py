"""Greedy refinement (Chen et al., 2023), stage by stage, with the evidence for every decision.

A stage samples designs balanced over one component's choices, evaluates them through the pool
and the store (so it resumes), scores each design, compares the choices and restricts the space.

Score of a design: the mean over the experiment's tasks of each task's main metric, in points
(accuracy, F1, Matthews correlation or Pearson x 100). No further normalisation: every design of a
stage sees the same tasks, so the mean is comparable within a stage, which is all a decision uses.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from .experiment import Experiment
from .pool import TrialSpec, evaluate
from .space import Design, DesignSpace, _fmt_choice, save_yaml
from .stats import Decision, compare, designs_needed, separated
from .store import TrialStore


def stage_name(index: int, component: str) -> str:
    return f"{index + 1}-{component}"


def design_scores(rows: list[dict], seed: int, tasks) -> dict[str, float]:
    """Design id -> mean main score (points) over tasks, for trials of ``seed`` that finished ok."""
    per: dict[str, dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r["seed"] == seed and r["status"] == "ok" and r.get("score") is not None:
            per[r["design_id"]][r["task"]] = 100.0 * r["score"]
    return {d: float(np.mean(list(s.values()))) for d, s in per.items() if len(s) == len(tasks)}


def replicate_noise(rows: list[dict], tasks, prior: float | None = None, min_designs: int = 3) -> float | None:
    """Pooled seed-to-seed std of a design's score over the replicated designs (points).

    With fewer than ``min_designs`` replicated designs the estimate has too few degrees of freedom
    to trust a small value, so the larger of it and ``prior`` is used.
    """
    by: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["status"] == "ok" and r.get("score") is not None:
            by[r["design_id"]][r["seed"]].append(100.0 * r["score"])
    variances = []
    for seeds in by.values():
        vals = [np.mean(v) for v in seeds.values() if len(v) == len(tasks)]
        if len(vals) >= 2:
            variances.append(np.var(vals, ddof=1))
    measured = float(math.sqrt(np.mean(variances))) if variances else None
    if prior is not None and len(variances) < min_designs:
        return max(measured or 0.0, prior)
    return measured


class Refiner:
    """Runs (or resumes) the stages of an :class:`Experiment`; constructors store, ``run`` acts."""

    def __init__(self, experiment: Experiment, store: TrialStore | None = None, log=None):
        self.exp = experiment
        self.store = store or TrialStore(experiment.store_path)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))

    # --- one stage ------------------------------------------------------------------------
    def _specs(self, stage: str, designs: list[Design], seeds) -> list[TrialSpec]:
        e = self.exp
        return [
            TrialSpec(stage, d, t, s, e.data_seed, e.regime, e.backbone, e.data_dir)
            for d in designs
            for s in seeds
            for t in e.tasks
        ]

    def _evaluate(self, specs: list[TrialSpec]) -> list[dict]:
        e = self.exp
        return evaluate(
            specs, self.store, experiment=e.name, backend=e.backend, n_jobs=e.n_jobs, threads=e.threads,
            retries=e.retries, address=e.address, progress=True,
        )

    def noise_estimate(self) -> float:
        rows = self.store.trials()
        return replicate_noise(rows, self.exp.tasks) or self.exp.prior_noise_sd

    def run_stage(self, index: int, component: str, space: DesignSpace) -> tuple[Decision, DesignSpace]:
        e = self.exp
        stage = stage_name(index, component)
        choices = space.choices(component)
        if e.designs_per_choice == "auto":
            per = min(e.max_designs_per_choice, designs_needed(self.noise_estimate(), e.effect, len(choices)))
        else:
            per = int(e.designs_per_choice)
        designs = space.sample_balanced(component, per * len(choices), seed=e.seed * 1000 + index)
        # A few designs also run with other init seeds: the report states per-design noise.
        replicated = designs[: e.replicates]
        specs = self._specs(stage, designs, [e.seed]) + self._specs(stage, replicated, e.replicate_seeds)
        self.store.meta_set(f"planned:{stage}", len(specs))
        self.log(f"[{stage}] {len(choices)} choices x {per} designs x {len(e.tasks)} tasks "
                 f"(+{len(replicated)} replicated designs) = {len(specs)} trials")
        rows = self._evaluate(specs)
        decision = self._decide(component, rows, designs)
        if e.racing:
            rng = random.Random(e.seed * 7919 + index)
            while not separated(decision) and len(designs) < 10 * len(choices) * e.max_designs_per_choice:
                leaders = [c.choice for c in decision.choices[:2]]
                counts = {c.choice: c.n for c in decision.choices}
                if min(counts[c] for c in leaders) >= e.max_designs_per_choice:
                    break
                extra = []
                for label in leaders:
                    choice = next(c for c in choices if _fmt_choice(c) == label)
                    narrowed = space.restrict(component, choice)
                    for _ in range(e.racing_batch):
                        for d in narrowed.sample(20, seed=rng.randrange(1 << 30)):
                            if d.id not in {x.id for x in designs + extra}:
                                extra.append(d)
                                break
                if not extra:
                    break
                designs += extra
                self.log(f"[{stage}] racing: +{len(extra)} designs for {', '.join(leaders)}")
                rows += self._evaluate(self._specs(stage, extra, [e.seed]))
                decision = self._decide(component, rows, designs)
        best = next(c for c in choices if _fmt_choice(c) == decision.best)
        self.store.meta_set(f"decision:{stage}", decision.to_dict())
        new_space = space.restrict(component, best)
        self.store.meta_set(f"space:{stage}", new_space.to_dict())
        return decision, new_space

    def skip_untuned(self, index: int, component: str, space: DesignSpace) -> DesignSpace | None:
        """A strategy stage of a group that no remaining design tunes compares identical models:
        skip it, and pin the group's set to its first choice so design ids stay canonical."""
        if not component.startswith("strategies.G"):
            return None
        g = int(component.rsplit("G", 1)[1])
        if any(g in tg for tg in space.tuned_groups):
            return None
        stage = stage_name(index, component)
        narrowed = space.restrict(component, space.choices(component)[0])
        self.store.meta_set(f"skipped:{stage}", f"group G{g} is not tuned by any remaining design")
        self.store.meta_set(f"decision:{stage}", None)  # a decision from a run before it became moot
        self.store.meta_set(f"space:{stage}", narrowed.to_dict())
        self.log(f"[{stage}] skipped: G{g} is not tuned by any remaining design")
        return narrowed

    def _decide(self, component: str, rows: list[dict], designs: list[Design]) -> Decision:
        e = self.exp
        scores = design_scores(rows, e.seed, e.tasks)
        by_choice: dict[str, list[float]] = defaultdict(list)
        for d in {d.id: d for d in designs}.values():
            if d.id in scores:
                by_choice[_fmt_choice(d.choice(component))].append(scores[d.id])
        # Noise pooled over every replicated design so far (all stages share backbone and regime).
        noise = replicate_noise(self.store.trials(), e.tasks, prior=e.prior_noise_sd)
        if not by_choice:
            from .errors import DesignSpaceError

            errors = sorted({str(r.get("error")) for r in rows if r["status"] != "ok"})
            raise DesignSpaceError(
                f"stage {component}: no trial finished ok ({len(rows)} trials); first error: {errors[0] if errors else '-'}; "
                f"see `designspace status` and the store {self.exp.store_path}"
            )
        decision = compare(component, by_choice, noise_sd=noise)
        failed = sum(1 for r in rows if r["status"] != "ok")
        if failed:
            extra = f"{failed} trials not ok (failed, diverged or infeasible) are left out"
            decision.note = "; ".join(x for x in (decision.note, extra) if x)
        return decision

    # --- all stages -----------------------------------------------------------------------
    def check_data(self) -> None:
        """Fail before any training when a task's files are missing (one line: where it looked)."""
        from .errors import DesignSpaceError
        from .tasks import _HOW_TO_POINT, split_path

        for task in self.exp.tasks:
            for split in ("train", "dev"):
                path = split_path(task, split, self.exp.data_dir)
                if not path.is_file():
                    raise DesignSpaceError(f"GLUE file for {task} {split} not found: {path}; {_HOW_TO_POINT}")

    def run(self) -> Design:
        e = self.exp
        self.check_data()
        e.out_dir.mkdir(parents=True, exist_ok=True)
        (e.out_dir / "experiment.json").write_text(json.dumps(e.to_dict(), indent=1) + "\n")
        self.store.meta_set("experiment", e.to_dict())
        space = e.space
        t0 = time.perf_counter()
        for i, component in enumerate(e.stages):
            skipped = self.skip_untuned(i, component, space)
            if skipped:
                space = skipped
                continue
            decision, space = self.run_stage(i, component, space)
            ci = decision.margin_ci
            self.log(
                f"[{stage_name(i, component)}] best {decision.best}: margin {decision.margin:+.2f} points "
                f"(95% CI {ci[0]:+.2f}..{ci[1]:+.2f}), P(best)={decision.p_best:.2f}, confidence {decision.confidence}"
            )
        # Components that no stage refined keep their first remaining choice (documented in report).
        final = space
        for c in final.components():
            if len(final.choices(c)) > 1:
                final = final.restrict(c, final.choices(c)[0])
        design = final.only_design()
        save_yaml({"design": design.to_dict(), "id": design.id, "experiment": e.name}, e.out_dir / "design.yaml")
        self.store.meta_set("final_design", design.to_dict())
        self.log(f"discovered design {design.id}: {design.describe()} -> {e.out_dir / 'design.yaml'} "
                 f"({time.perf_counter() - t0:.0f} s this run)")
        return design


def load_decisions(store: TrialStore, experiment: Experiment) -> list[tuple[str, Decision]]:
    out = []
    for i, component in enumerate(experiment.stages):
        d = store.meta_get(f"decision:{stage_name(i, component)}")
        if d:
            out.append((stage_name(i, component), Decision.from_dict(d)))
    return out


def status(experiment: Experiment) -> str:
    """Stage, trials done and failed, and an ETA, for a running or finished refinement."""
    path = experiment.store_path
    if not Path(path).exists():
        return f"{experiment.name}: not started ({path} does not exist)"
    store = TrialStore(path, create=False)
    lines = [f"{experiment.name}: {path}"]
    rows = store.trials()
    secs = [((r.get("seconds_train") or 0) + (r.get("seconds_eval") or 0)) for r in rows if r["status"] == "ok"]
    mean_s = float(np.mean(secs)) if secs else None
    remaining_total = 0
    for i, component in enumerate(experiment.stages):
        stage = stage_name(i, component)
        planned = store.meta_get(f"planned:{stage}")
        counts = store.counts(stage)
        done = sum(counts.values())
        decided = store.meta_get(f"decision:{stage}")
        if store.meta_get(f"skipped:{stage}"):
            lines.append(f"  {stage:<18} skipped (group not tuned)")
            continue
        state = f"decided: {decided['best']} ({decided['confidence']})" if decided else (
            "running" if planned else "pending")
        failed = counts.get("failed", 0) + counts.get("diverged", 0) + counts.get("infeasible", 0)
        lines.append(f"  {stage:<18} {state:<38} trials {done}/{planned or '?'} (not ok: {failed})")
        if not decided:
            remaining_total += (planned or len(experiment.space.choices(component)) * 2 * len(experiment.tasks)) - (
                done if planned else 0)
    if mean_s and remaining_total > 0:
        lines.append(f"  ETA about {remaining_total * mean_s / 60:.1f} min ({remaining_total} trials x {mean_s:.1f} s, "
                     "later stages estimated at 2 designs per choice)")
    elif not remaining_total:
        lines.append("  all stages decided")
    return "\n".join(lines)
