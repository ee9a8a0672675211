"""One paired stage: its plan (rounds of blocks), the trials each block names, and its table.

A stage of component C draws B base designs from the current space; on each base ("block") every
choice of C still in the race is trained, the rest of the base fixed, with the block's seed(s).
The plan of each round is decided once, saved in the store *before* training, and replayed on
resume: a rerun trains nothing new and decides the same. Choices that make the same plan on this
backbone (grouping patterns with identical partitions) are merged into one class and trained once.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import DesignSpaceError
from .patterns import same_partition
from .space import Design, DesignSpace, format_choice
from .trial import Status, TrialRecord, TrialSpec

#: Statuses of a stage; 'unresolved' is an open stage that hit its cap (survivors kept).
STAGE_STATUSES = ("running", "separated", "tie", "unresolved", "skipped")


def stage_name(index: int, component: str) -> str:
    return f"{index + 1}-{component}"


def choice_from_json(component: str, value):
    """A choice as stored (JSON lists) back to its Python form (tuples for sets)."""
    if component == "tuned_groups":
        return tuple(int(g) for g in value)
    if component.startswith("strategies."):
        return tuple(value)
    return value


@dataclass
class ChoiceClass:
    """Choices of the component that give the same plan on this backbone, trained once as ``choices[0]``."""

    label: str
    choices: list

    def representative(self, component: str):
        return choice_from_json(component, self.choices[0])


@dataclass
class Block:
    base: dict  # the base design (its own choice of the component is irrelevant)
    seed: int


@dataclass
class Round:
    blocks: list[Block]
    alive: list[str]  # labels of the classes trained in this round


@dataclass
class StageState:
    """Everything a stage decided and planned, as the store keeps it (JSON)."""

    name: str
    index: int
    component: str
    classes: list[ChoiceClass] = field(default_factory=list)
    rounds: list[Round] = field(default_factory=list)
    verdicts: list[dict] = field(default_factory=list)  # decision.Verdict.to_dict() of each round
    status: str = "running"
    kept: list[str] = field(default_factory=list)  # labels kept in the space after the stage
    space_after: dict | None = None
    sizing: list[str] = field(default_factory=list)  # how each round's block count was chosen
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> StageState:
        d = dict(d)
        d["classes"] = [ChoiceClass(**c) for c in d.get("classes", [])]
        d["rounds"] = [Round([Block(**b) for b in r["blocks"]], list(r["alive"])) for r in d.get("rounds", [])]
        return cls(**d)

    @property
    def labels(self) -> list[str]:
        return [c.label for c in self.classes]

    @property
    def decided(self) -> bool:
        return self.status != "running"

    def verdict(self):
        """The last verdict as a :class:`~designspace.decision.Verdict`, or None."""
        from .decision import Verdict

        return Verdict.from_dict(self.verdicts[-1]) if self.verdicts else None

    def blocks(self) -> list[tuple[int, Block]]:
        """(round index, block) of every block so far, in order."""
        return [(r, b) for r, rnd in enumerate(self.rounds) for b in rnd.blocks]


def choice_classes(component: str, space: DesignSpace, n_layers: int | None) -> list[ChoiceClass]:
    """The stage's choices, merged where they give identical plans on an ``n_layers`` backbone."""
    choices = list(space.choices(component))
    if component == "grouping" and n_layers:
        groups = same_partition(n_layers, choices, space.n_groups)
        return [ChoiceClass("=".join(g), list(g)) for g in groups]
    return [ChoiceClass(format_choice(c), [list(c) if isinstance(c, tuple) else c]) for c in choices]


def base_space(component: str, space: DesignSpace) -> DesignSpace | None:
    """The space bases are drawn from: a strategy stage of group g needs bases that tune g (else None)."""
    if not component.startswith("strategies.G"):
        return space
    g = int(component.rsplit("G", 1)[1])
    tuned = [tg for tg in space.tuned_groups if g in tg]
    return space.restrict("tuned_groups", tuned) if tuned else None


def _stable_int(*parts) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:6], "little")


def draw_blocks(space: DesignSpace, component: str, n: int, seed: int, stage_index: int, round_index: int,
                first_block: int) -> list[Block]:
    """``n`` bases from ``space`` and a distinct seed for each block of this stage.

    Seeds differ between stages, so a stage's winner is never carried into the next stage with the
    same (selected, lucky) score: every stage measures afresh.
    """
    rng = random.Random(_stable_int("bases", seed, stage_index, round_index))
    blocks = []
    for b in range(n):
        base = space.draw(rng)
        blocks.append(Block(base.to_dict(), 100_000 * seed + 1_000 * (stage_index + 1) + first_block + b))
    return blocks


def block_specs(state: StageState, block: Block, labels: list[str], make_spec, tasks, seeds_per_design: int
                ) -> dict[str, list[TrialSpec]]:
    """Class label -> the specs of its design on ``block`` (every task, every replicate seed)."""
    base = Design.from_dict(block.base)
    out = {}
    for cls in state.classes:
        if cls.label not in labels:
            continue
        design = base.with_choice(state.component, cls.representative(state.component))
        out[cls.label] = [
            make_spec(design, task, block.seed + 7_919 * s, label=f"{state.name}/{cls.label}")
            for s in range(seeds_per_design)
            for task in tasks
        ]
    return out


def round_specs(state: StageState, r: int, make_spec, tasks, seeds_per_design: int) -> list[TrialSpec]:
    rnd = state.rounds[r]
    return [s for b in rnd.blocks
            for specs in block_specs(state, b, rnd.alive, make_spec, tasks, seeds_per_design).values()
            for s in specs]


def design_score(records: list[TrialRecord]) -> float:
    """A design's score in a block: the mean over its seeds of the mean over tasks (points); NaN if any
    trial is not ok (a failed, diverged or infeasible design has no score)."""
    if not records or any(not r.ok for r in records):
        return float("nan")
    by_seed: dict[int, list[float]] = {}
    for r in records:
        by_seed.setdefault(r.spec.seed, []).append(100.0 * r.score)
    return float(np.mean([np.mean(v) for v in by_seed.values()]))


def stage_table(state: StageState, upto: int, records: dict[str, TrialRecord], make_spec, tasks,
                seeds_per_design: int) -> tuple[np.ndarray, list[str]]:
    """Scores of every block of rounds 0..``upto`` (rows) by every class (columns); NaN where a class
    was not trained (eliminated) or did not finish ok. Lost trials stop the stage (one line)."""
    rows, lost = [], []
    for rnd in state.rounds[: upto + 1]:
        for block in rnd.blocks:
            row = [float("nan")] * len(state.classes)
            for label, specs in block_specs(state, block, rnd.alive, make_spec, tasks, seeds_per_design).items():
                recs = [records.get(s.key) for s in specs]
                missing = [s for s, r in zip(specs, recs, strict=True) if r is None or r.status is Status.LOST]
                if missing:
                    lost.append(f"{label} (block seed {block.seed}: {missing[0].task})")
                    continue
                row[state.labels.index(label)] = design_score(recs)
            rows.append(row)
    if lost:
        raise DesignSpaceError(
            f"stage {state.name}: {len(lost)} design(s) have no finished trial for an infrastructure reason "
            f"(worker died or run stopped), e.g. {lost[0]}; not deciding. Rerun the same command to retry them"
        )
    return np.array(rows, dtype=float), state.labels


def not_ok_counts(records: list[TrialRecord]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in records:
        if not r.ok:
            counts[str(r.status)] = counts.get(str(r.status), 0) + 1
    return counts
