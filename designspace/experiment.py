"""Experiment files: one YAML names the backbone, tasks, data, budget, regime, stages and engine."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .errors import DesignSpaceError, invalid
from .space import DesignSpace, load_yaml
from .train import Regime

DEFAULT_STAGES = (
    "grouping",
    "allocation",
    "tuned_groups",
    "strategies.G1",
    "strategies.G2",
    "strategies.G3",
    "strategies.G4",
)


@dataclass(frozen=True)
class Experiment:
    """Everything a refinement needs. ``designs_per_choice`` may be ``auto``: sized from the noise."""

    name: str
    backbone: str = "minilm-l6"
    tasks: tuple[str, ...] = ("sst2",)
    data_dir: str | None = None
    budget: float = 0.005
    regime: Regime = field(default_factory=Regime)
    space: DesignSpace = field(default_factory=DesignSpace)
    stages: tuple[str, ...] = DEFAULT_STAGES
    designs_per_choice: int | str = 2
    #: for ``auto``: the smallest score difference (points) worth detecting, the cap, and a prior noise
    effect: float = 1.0
    max_designs_per_choice: int = 8
    prior_noise_sd: float = 2.3
    replicates: int = 2  # designs per stage also run with extra seeds, to measure per-design noise
    replicate_seeds: tuple[int, ...] = (1,)
    seed: int = 0  # init seed of every design; with data_seed fixed, comparisons are paired
    data_seed: int = 0
    racing: bool = False
    racing_batch: int = 1
    backend: str = "loky"
    n_jobs: int | None = None
    threads: int | None = None
    address: str | None = None
    retries: int = 1
    output: str | None = None
    source: str | None = None

    @property
    def out_dir(self) -> Path:
        return Path(self.output or f"results/{self.name}")

    @property
    def store_path(self) -> Path:
        return self.out_dir / "trials.sqlite"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["regime"] = self.regime.to_dict()
        d["space"] = self.space.to_dict()
        d.pop("source")
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str | None = None) -> Experiment:
        known = set(cls.__dataclass_fields__) - {"source"}
        for k in d:
            if k not in known:
                raise invalid(k, d[k], "experiment fields " + ", ".join(sorted(known)), source)
        kw = dict(d)
        if "name" not in kw:
            kw["name"] = Path(source).stem if source else "experiment"
        try:
            kw["regime"] = Regime.from_dict(kw.get("regime"))
            space = dict(kw.get("space") or {})
            space.setdefault("budget", kw.get("budget", 0.005))
            kw["space"] = DesignSpace.from_dict(space)
        except DesignSpaceError as e:
            raise DesignSpaceError(f"{source}: {e}" if source else str(e)) from None
        if isinstance(kw.get("tasks"), str):
            kw["tasks"] = [kw["tasks"]]
        for k in ("tasks", "stages", "replicate_seeds"):
            if k in kw:
                kw[k] = tuple(kw[k])
        from .tasks import get_task

        for t in kw.get("tasks", ()):
            try:
                get_task(t)
            except DesignSpaceError as e:
                raise DesignSpaceError(f"{source}: tasks: {e}" if source else str(e)) from None
        for s in kw.get("stages", DEFAULT_STAGES):
            if s not in kw["space"].components():
                raise invalid("stages", s, kw["space"].components(), source)
        dpc = kw.get("designs_per_choice", 2)
        if not (dpc == "auto" or (isinstance(dpc, int) and dpc >= 1)):
            raise invalid("designs_per_choice", dpc, "a positive integer or 'auto'", source)
        if kw.get("backend", "loky") not in ("loky", "sequential", "dask", "ray"):
            raise invalid("backend", kw["backend"], ["loky", "sequential", "dask", "ray"], source)
        return cls(**kw, source=source)

    @classmethod
    def load(cls, path: str | Path, **overrides) -> Experiment:
        data = load_yaml(path)
        exp = cls.from_dict(data, source=str(path))
        overrides = {k: v for k, v in overrides.items() if v is not None}
        return replace(exp, **overrides) if overrides else exp
