"""Experiment files: one YAML names the backbone, tasks, data, budget, regime, space, stages, the
statistics of each stage and the engine. Loading one needs no torch; ``check_backbone`` (before any
work) does."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import (
    DesignSpaceError,
    check_choice,
    check_float,
    check_int,
    check_keys,
    invalid,
    with_source,
)
from .files import load_yaml
from .plan import DEFAULT_BUDGET, check_budget, check_options
from .pool.engines import BACKENDS
from .regime import Regime
from .space import DesignSpace
from .trial import TrialSpec

DECISIONS = ("greedy", "joint")
#: Fields that say how to run, not what: changing them under an existing store is fine. (``decision``
#: only picks the final design among finished results: no trial depends on it.)
HOW_FIELDS = ("name", "pack", "backend", "n_jobs", "threads", "address", "retries", "output", "source", "decision")


def check_tasks(tasks, source: str | None) -> tuple[str, ...]:
    """The tasks' canonical names, once each; an unknown or missing task is one line naming the file."""
    from .tasks import get_task

    if not tasks:
        raise invalid("tasks", [], "at least one GLUE task", source)
    try:
        return tuple(dict.fromkeys(get_task(t).name for t in tasks))
    except DesignSpaceError as e:
        raise with_source(e, source) from None


def load_role_map(value, source: str | None) -> dict:
    """A role map given in a file: a path (relative to the file) or inline, checked, as a dict."""
    from .backbones.roles import RoleMap

    if isinstance(value, str):
        path = Path(value)
        if source and not path.is_absolute():
            path = Path(source).parent / path
        return RoleMap.load(path).to_dict()
    return RoleMap.from_dict(value, source).to_dict()


class Runnable:
    """What every experiment file shares (refinement and S3PET): where results go, how the engine is set."""

    @property
    def out_dir(self) -> Path:
        return Path(self.output or f"results/{self.name}")

    @property
    def store_path(self) -> Path:
        return self.out_dir / "trials.sqlite"

    def check_engine(self, source: str | None) -> None:
        check_choice(self.backend, "backend", BACKENDS, source)
        check_int(self.n_jobs, "n_jobs", 1, none=True, source=source)
        check_int(self.threads, "threads", 1, none=True, source=source)
        check_int(self.retries, "retries", 0, source=source)

    @classmethod
    def load(cls, path: str | Path, **overrides):
        """The file at ``path``; ``overrides`` that are not None replace its fields (command-line options)."""
        exp = cls.from_dict(load_yaml(path), source=str(path))
        overrides = {k: v for k, v in overrides.items() if v is not None}
        return replace(exp, **overrides) if overrides else exp

    def plain(self, lists: tuple[str, ...]) -> dict:
        """Every field but ``source`` as plain JSON: tuples in ``lists`` as lists, the regime as a dict."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "source"}
        d["regime"] = self.regime.to_dict()
        for k in lists:
            d[k] = list(d[k])
        return d


@dataclass(frozen=True)
class Experiment(Runnable):
    """Everything a refinement needs.

    Paired stages: each round of a stage trains every remaining choice of its component on ``blocks``
    base designs (``auto``: as many as the measured paired noise needs for an interval half-width of
    ``resolution`` points; a ``pilot`` round first, until some stage has measured it), each design with
    ``seeds_per_design`` seeds averaged. A stage stops when one
    choice is left, when the survivors are within ``margin`` points of each other (a tie), or after
    ``max_rounds`` rounds. ``alpha`` is the chance, over the whole stage, of any wrong "worse than the
    best" claim. Decisions read a ``selection`` split carved from the training file; GLUE dev is only
    read for final reports. The final design is the best of what is left by one additive model over
    every trial (``decision: joint``, the default) or by each open stage's best estimate (``greedy``).
    """

    name: str
    backbone: str = "minilm-l6"
    role_map: dict | None = None
    tasks: tuple[str, ...] = ("sst2",)
    data_dir: str | None = None
    budget: float = DEFAULT_BUDGET
    options: dict = field(default_factory=dict)
    regime: Regime = field(default_factory=Regime)
    selection: int = 1000
    space: DesignSpace = field(default_factory=DesignSpace)
    stages: tuple[str, ...] = ()
    blocks: int | str = 4
    pilot: int = 4  # blocks of the first auto round, before any paired noise is measured
    resolution: float = 1.0
    max_rounds: int = 3
    max_blocks: int = 32
    seeds_per_design: int = 1
    alpha: float = 0.05
    margin: float = 0.5
    decision: str = "joint"
    seed: int = 0
    data_seed: int = 0
    pack: int = 1  # up to this many designs trained in one pass over the backbone (speed only)
    backend: str = "loky"
    n_jobs: int | None = None
    threads: int | None = None
    address: str | None = None
    retries: int = 1
    output: str | None = None
    scorer: dict | None = None  # {synthetic: {...}}: a known truth instead of training (tests, calibration)
    source: str | None = None

    def __post_init__(self):
        src = self.source
        if not self.stages:
            object.__setattr__(self, "stages", tuple(self.space.components()))
        for s in self.stages:
            if s not in self.space.components():
                raise invalid("stages", s, self.space.components(), src)
        object.__setattr__(self, "budget", check_budget(self.budget, source=src))
        object.__setattr__(self, "options", check_options(self.options, src))
        object.__setattr__(self, "tasks", check_tasks(self.tasks, src))
        if not (self.blocks == "auto" or isinstance(self.blocks, int) and not isinstance(self.blocks, bool)
                and self.blocks >= 2):
            raise invalid("blocks", self.blocks, "an integer >= 2 or 'auto'", src)
        check_int(self.selection, "selection", 0, source=src)
        check_float(self.resolution, "resolution", 0.0, open_low=True, source=src)
        check_int(self.pilot, "pilot", 2, source=src)
        check_int(self.max_rounds, "max_rounds", 1, 20, source=src)
        check_int(self.max_blocks, "max_blocks", 2, source=src)
        check_int(self.seeds_per_design, "seeds_per_design", 1, 10, source=src)
        check_float(self.alpha, "alpha", 0.0, 0.5, open_low=True, source=src)
        check_float(self.margin, "margin", 0.0, source=src)
        check_choice(self.decision, "decision", DECISIONS, src)
        check_int(self.seed, "seed", 0, source=src)
        check_int(self.data_seed, "data_seed", 0, source=src)
        self.check_engine(src)
        check_int(self.pack, "pack", 1, 64, source=src)
        if self.scorer is not None:
            check_keys(self.scorer, ("synthetic",), "scorer.", src)

    # --- identity ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {**self.plain(("tasks", "stages")), "space": self.space.to_dict()}

    def identity(self) -> dict:
        """What the results depend on: the store remembers it, and refuses a changed experiment."""
        return {k: v for k, v in self.to_dict().items() if k not in HOW_FIELDS}

    def changed_field(self, stored: dict) -> str | None:
        """The first field whose value differs from ``stored`` (an identity saved earlier), or None."""
        mine = self.identity()
        for k in sorted(set(mine) | set(stored)):
            if mine.get(k) != stored.get(k):
                return k
        return None

    # --- trials ---------------------------------------------------------------------------------
    def spec(self, design, task: str, seed: int, eval_split: str = "select", regime: Regime | None = None,
             label: str = "", **ids) -> TrialSpec:
        """The trial of ``design`` on ``task`` with ``seed``: everything else from this experiment."""
        return TrialSpec(
            task=task, design=design, budget=self.budget, seed=seed, data_seed=self.data_seed,
            regime=regime or self.regime, backbone=self.backbone, data_dir=self.data_dir,
            eval_split=eval_split if self.selection else "dev", n_select=self.selection,
            options=self.options, role_map=self.role_map, label=label, **ids,
        )

    # --- files ------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict, source: str | None = None) -> Experiment:
        names = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
        if isinstance(d, dict) and "designs_per_choice" in d:
            raise DesignSpaceError(
                f"{source + ': ' if source else ''}designs_per_choice is gone: stages are paired now; "
                "give blocks: (base designs per round, or auto) and max_rounds:"
            )
        check_keys(d, names, "", source)
        kw = dict(d)
        kw.setdefault("name", Path(source).stem if source else "experiment")
        try:
            kw["regime"] = Regime.from_dict(kw.get("regime"))
            kw["space"] = DesignSpace.from_dict(dict(kw.get("space") or {}))
        except DesignSpaceError as e:
            raise with_source(e, source) from None
        if kw.get("role_map") is not None:
            kw["role_map"] = load_role_map(kw["role_map"], source)
        if isinstance(kw.get("tasks"), str):
            kw["tasks"] = [kw["tasks"]]
        for k in ("tasks", "stages"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw, source=source)

    # --- checks before any work ---------------------------------------------------------------
    def check_data(self) -> None:
        """Fail before any training when a task's files are missing (one line: where it looked)."""
        if self.scorer:
            return
        from .tasks import data_fingerprint

        for task in self.tasks:
            data_fingerprint(task, self.data_dir)

    def check_backbone(self):
        """Load the backbone's layer map (no weights) and check that every grouping pattern of the space
        fits its depth: a 2-layer backbone with 4 groups fails here, not after trials ran."""
        from .backbones import backbone_info

        info = backbone_info(self.backbone, role_map=self.role_map)
        n = len(info.layers)
        if n < self.space.n_groups:
            raise DesignSpaceError(
                f"{self.source or self.name}: backbone {self.backbone} has {n} layers, fewer than the space's "
                f"n_groups={self.space.n_groups}; use a space with n_groups <= {n}"
            )
        return info
