"""Greedy refinement (Chen et al., 2023) with paired stages and decisions that say what they know.

Each stage compares the choices of one component on shared base designs (``stage.py``), adds
blocks in rounds, drops the choices shown worse than the best (``decision.py``) and stops when
one is left, when the survivors tie within the margin, or at its cap. The space narrows only as far
as the evidence goes: a tie or an unresolved stage keeps its survivors. The final design is the
best of what is left, by the stages' estimates (``decision: greedy``) or by one additive model over
every trial (``decision: joint``); the report gives both.

Score of a design in a block: the mean over the experiment's tasks of each task's main metric in
points (accuracy, F1, Matthews correlation or Pearson x 100) on the selection split, averaged over
its replicate seeds.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from .decision import Verdict, blocks_needed, decide
from .errors import DesignSpaceError
from .experiment import Experiment
from .files import save_yaml
from .pool import SyntheticScorer, evaluate
from .space import Design, DesignSpace
from .stage import (
    Round,
    StageState,
    base_space,
    choice_classes,
    choice_from_json,
    draw_blocks,
    not_ok_counts,
    round_specs,
    stage_name,
    stage_table,
)
from .store import TrialStore


class Refiner:
    """Runs (or resumes) the stages of an :class:`Experiment`; constructors store, ``run`` acts."""

    def __init__(self, experiment: Experiment, store: TrialStore | None = None, log=None, progress: bool = True):
        self.exp = experiment
        self.store = store or TrialStore(experiment.store_path)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.progress = progress
        self.n_layers: int | None = None
        self.backbone_id = ""
        self.data_ids: dict[str, str] = {}
        synthetic = dict((experiment.scorer or {}).get("synthetic") or {})
        self.n_layers = synthetic.pop("n_layers", None)
        self.scorer = SyntheticScorer(**synthetic) if experiment.scorer else None

    # --- trials -----------------------------------------------------------------------------------
    def make_spec(self, design: Design, task: str, seed: int, label: str = ""):
        return self.exp.spec(design, task, seed, eval_split="select", label=label, backbone_id=self.backbone_id,
                             data_id=self.data_ids.get(task, ""))

    def _evaluate(self, specs, label: str):
        e = self.exp
        return evaluate(specs, self.store, backend=e.backend, n_jobs=e.n_jobs, threads=e.threads, retries=e.retries,
                        address=e.address, progress=self.progress, scorer=self.scorer, label=label, pack=e.pack)

    def _prepare(self) -> None:
        """Everything that can fail on bad input, before any trial: output, data, backbone, space vs depth."""
        e = self.exp
        for path in (e.out_dir, *e.out_dir.parents):
            if path.exists():
                if not path.is_dir():
                    raise DesignSpaceError(f"output {e.out_dir}: {path} is a file; pass another --output (or output:)")
                if not os.access(path, os.W_OK):
                    raise DesignSpaceError(f"output {e.out_dir}: {path} is not writable; pass another --output")
                break
        e.check_data()
        if self.scorer is None:
            from .backbones.offline import backbone_fingerprint
            from .tasks import data_fingerprint

            self.n_layers = len(e.check_backbone().layers)
            self.backbone_id = backbone_fingerprint(e.backbone, e.role_map)
            self.data_ids = {t: data_fingerprint(t, e.data_dir) for t in e.tasks}
        else:
            self.backbone_id, self.data_ids = "synthetic", {t: "synthetic" for t in e.tasks}

    def _check_identity(self) -> None:
        stored = self.store.note("experiment")
        if stored is None:
            self.store.set_note("experiment", self.exp.identity())
            return
        changed = self.exp.changed_field(stored)
        if changed:
            raise DesignSpaceError(
                f"{self.exp.source or self.exp.name}: {changed} differs from the experiment recorded in "
                f"{self.exp.store_path} ({stored.get(changed)!r} there, {self.exp.identity().get(changed)!r} now); "
                "its trials answer another question. Start fresh with another output: (or --output), or move "
                f"{self.exp.out_dir} away"
            )

    # --- one stage ----------------------------------------------------------------------------------
    def _plan_round(self, state: StageState, space: DesignSpace, alive: list[str], verdict: Verdict | None) -> bool:
        """Add the next round of blocks to ``state``; False when the stage may draw no more."""
        e = self.exp
        have = sum(len(r.blocks) for r in state.rounds)
        sd = verdict.resid_sd if verdict and verdict.resid_sd else self._measured_sd()
        if e.blocks == "auto" and sd is None:
            add, why = e.pilot, f"auto: a pilot of {e.pilot} blocks (no paired noise measured yet)"
        elif e.blocks == "auto":
            need = blocks_needed(sd, e.resolution, len(alive), e.alpha, e.max_rounds, max_blocks=10 ** 6)
            add = max(2, need - have)
            why = f"auto: paired sd {sd:.2f} needs {need} blocks for a half-width of {e.resolution} points"
        else:
            add, why = int(e.blocks), f"{e.blocks} blocks per round"
        add = min(add, e.max_blocks - have)
        if add < 2:
            state.note = "; ".join(x for x in (f"stopped at max_blocks={e.max_blocks}", state.note) if x)
            return False
        bases = base_space(state.component, space)
        blocks = draw_blocks(bases, state.component, add, e.seed, state.index, len(state.rounds), have)
        state.rounds.append(Round(blocks, list(alive)))
        state.sizing.append(why + (f" (capped at max_blocks={e.max_blocks})" if have + add >= e.max_blocks else ""))
        return True

    def _measured_sd(self) -> float | None:
        """The paired noise the last judged stage measured (None before any stage was judged)."""
        for s in reversed(self.store.stages()):
            v = s["state"].get("verdicts") or []
            if v and v[-1].get("resid_sd"):
                return float(v[-1]["resid_sd"])
        return None

    def _skip(self, state: StageState, space: DesignSpace, why: str) -> tuple[StageState, DesignSpace]:
        """A stage with nothing to compare: keep the first choice so design ids stay canonical."""
        narrowed = space.restrict(state.component, space.choices(state.component)[0])
        state.status, state.note, state.space_after = "skipped", why, narrowed.to_dict()
        self.store.save_stage(state.name, state.index, state.component, state.to_dict())
        self.log(f"[{state.name}] skipped: {why}")
        return state, narrowed

    def run_stage(self, index: int, component: str, space: DesignSpace) -> tuple[StageState, DesignSpace]:
        e = self.exp
        name = stage_name(index, component)
        saved = self.store.stage(name)
        if saved is not None:
            state = StageState.from_dict(saved)
            if state.decided:
                return state, DesignSpace.from_dict(state.space_after)
        else:
            state = StageState(name, index, component, choice_classes(component, space, self.n_layers))
            if base_space(component, space) is None:
                g = component.rsplit("G", 1)[1]
                return self._skip(state, space, f"group G{g} is not tuned by any remaining design")
            if len(state.classes) < 2:
                return self._skip(state, space, "one choice left (others merged or refined away)")
            self._plan_round(state, space, state.labels, None)
            self.store.save_stage(name, index, component, state.to_dict())
            k = len(state.classes)
            self.log(f"[{name}] {k} choices x {len(state.rounds[0].blocks)} blocks x {len(e.tasks)} tasks x "
                     f"{e.seeds_per_design} seed(s) = {k * len(state.rounds[0].blocks) * len(e.tasks) * e.seeds_per_design}"
                     f" trials in round 1 ({state.sizing[0]})")
        while True:
            r = len(state.verdicts)
            self._evaluate(round_specs(state, r, self.make_spec, e.tasks, e.seeds_per_design), f"{name} round {r + 1}")
            keys = [s.key for i in range(r + 1) for s in round_specs(state, i, self.make_spec, e.tasks, e.seeds_per_design)]
            records = {rec.key: rec for rec in self.store.records(keys)}
            table, labels = stage_table(state, r, records, self.make_spec, e.tasks, e.seeds_per_design)
            if not np.isfinite(table).any():
                bad = list(records.values())
                errors = sorted({r.error for r in bad if r.error})
                raise DesignSpaceError(
                    f"stage {name}: no trial finished ok ({len(bad)} trials: {not_ok_counts(bad)}); first error: "
                    f"{errors[0] if errors else '-'}; see `designspace status` and {e.store_path}"
                )
            verdict = decide(table, alpha=e.alpha, max_rounds=e.max_rounds, round_index=r + 1, delta=e.margin,
                             choices=labels, previous=state.verdict(), component=component, seed=e.seed)
            state.verdicts.append(verdict.to_dict())
            self.log(f"[{name}] round {r + 1}: {verdict.meaning}")
            # A choice none of whose designs finished ok (all raised, diverged or did not fit) is not a
            # statistical question: it stops being trained and leaves the space, said in the report.
            broken = [lab for j, lab in enumerate(labels) if not np.isfinite(table[:, j]).any()]
            if broken:
                state.note = f"no design finished ok with: {', '.join(broken)} (dropped)"
            alive = [c for c in verdict.survivors if c not in broken]
            if verdict.status == "open" and len(alive) > 1 and r + 1 < e.max_rounds and self._plan_round(
                    state, space, alive, verdict):
                self.store.save_stage(name, index, component, state.to_dict())
                continue
            return self._finish(state, space, verdict, broken)

    def _finish(self, state: StageState, space: DesignSpace, verdict: Verdict,
                broken: list[str]) -> tuple[StageState, DesignSpace]:
        state.status = verdict.status if verdict.status != "open" else "unresolved"
        kept = [verdict.best] if state.status == "separated" else list(verdict.survivors)
        state.kept = [k for k in kept if k not in broken] or kept
        chosen = [choice_from_json(state.component, c) for cls in state.classes if cls.label in state.kept
                  for c in cls.choices]
        narrowed = space.restrict_many(state.component, chosen)
        state.space_after = narrowed.to_dict()
        self.store.save_stage(state.name, state.index, state.component, state.to_dict())
        return state, narrowed

    # --- all stages -----------------------------------------------------------------------------------
    def run(self) -> Design:
        e = self.exp
        self._prepare()
        t0 = time.perf_counter()
        with self.store.driver_lock():
            self._check_identity()
            e.out_dir.mkdir(parents=True, exist_ok=True)
            (e.out_dir / "experiment.json").write_text(json.dumps(e.to_dict(), indent=1, default=str) + "\n")
            space = e.space
            states = []
            for i, component in enumerate(e.stages):
                state, space = self.run_stage(i, component, space)
                states.append(state)
            design, how = final_design(space, states, self.store, e)
            save_yaml({"design": design.to_dict(), "id": design.id, "budget": e.budget, "backbone": e.backbone,
                       "experiment": e.name, "chosen_by": how}, e.out_dir / "design.yaml")
            self.store.set_note("final_design", {"design": design.to_dict(), "chosen_by": how})
        self.log(f"discovered design {design.id}: {design.describe()} ({how}) -> {e.out_dir / 'design.yaml'} "
                 f"({time.perf_counter() - t0:.0f} s this run)")
        return design


def greedy_design(space: DesignSpace, states: list[StageState]) -> Design:
    """The remaining space's design with every still-open component at its stage's best estimate."""
    for state in states:
        if len(space.choices(state.component)) > 1 and state.verdicts:
            best = state.verdict().best
            cls = next(c for c in state.classes if c.label == best)
            space = space.restrict(state.component, choice_from_json(state.component, cls.choices[0]))
    for c in space.components():  # components no stage refined keep their first remaining choice
        if len(space.choices(c)) > 1:
            space = space.restrict(c, space.choices(c)[0])
    return space.only_design()


def final_design(space: DesignSpace, states: list[StageState], store: TrialStore, e: Experiment) -> tuple[Design, str]:
    """(design, how it was chosen): the only design left, else the greedy or the joint model's best."""
    if space.is_single():
        return space.only_design(), "the only design left"
    if e.decision == "joint":
        from .joint_view import joint_best

        best = joint_best(store, states, space, e)
        if best is not None:
            return best, "joint model's best in the remaining space"
    return greedy_design(space, states), "greedy: each open stage's best estimate"


def load_states(store: TrialStore) -> list[StageState]:
    return [StageState.from_dict(s["state"]) for s in store.stages()]
