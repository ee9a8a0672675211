"""``designspace search EXPERIMENT.yaml``: S3PET searches and the retrainings they imply, through the
trial store and the worker pool, like a refinement.

An experiment file names the backbone, tasks, budgets, seeds, the retraining ``regime`` (every
structure, searched or not, is retrained in it and scored on dev), the ``search`` settings
(:class:`~designspace.s3pet.config.SearchConfig`), the ``baselines`` (``random`` and the manual
``lora``, ``adapter``, ``bitfit``, ``lnfit``) and the ``anchors`` (``head``: the task head alone;
``pool``: every candidate at once). A budget is a fraction of the backbone (``1.39e-4``) or of the
candidate pool (``{pool: 0.05}``: a twentieth of the pool's parameters).

One record per search (``TrialSpec(kind="search")``, whose ``result`` holds the structure, gates,
p over steps, entropy and heat map) and one per retraining (``TrialSpec(kind="train", plan=...)``),
in ``<output>/trials.sqlite``. Searches run first, then every retraining; a rerun runs only what
is missing. The tables (``README.md``, ``summary.json``) and heat maps (``structures/``) are
written from the store at the end of each phase. Loading a file needs no torch.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DesignSpaceError, check_choice, check_float, check_int, check_keys, invalid, with_source
from ..experiment import Runnable, check_tasks, load_role_map
from ..regime import Regime
from ..trial import Status, TrialSpec
from .config import SearchConfig
from .structure import MANUAL

ANCHORS = ("head", "pool")
BASELINES = ("random", *MANUAL)
#: Fields that say how to run, not what: changing them under an existing store is fine.
HOW_FIELDS = ("name", "backend", "n_jobs", "threads", "address", "retries", "output", "source", "data_dir")


def check_budget_entry(b, source: str | None = None) -> dict:
    """A budget as ``{"backbone": f}`` or ``{"pool": f}``: a number is a fraction of the backbone."""
    if isinstance(b, dict):
        check_keys(b, ("backbone", "pool"), "budgets.", source)
        if len(b) != 1:
            raise invalid("budgets", b, "one of {backbone: fraction} or {pool: fraction}", source)
        (kind, value), = b.items()
    else:
        kind, value = "backbone", b
    check_float(value, f"budgets.{kind}", 0.0, 1.0, open_low=True, open_high=kind == "backbone", source=source)
    return {kind: float(value)}


@dataclass(frozen=True)
class Budget:
    """One budget resolved on a backbone and a pool."""

    fraction: float  # of the backbone: what every plan and spec carries
    params: int
    pool_params: int
    given: dict

    @property
    def pool_share(self) -> float:
        return self.params / self.pool_params

    @property
    def label(self) -> str:
        return f"{self.params:,}"

    def describe(self) -> str:
        return (f"{self.params:,} parameters = {self.fraction:.3g} of the backbone = 1/{1 / self.pool_share:.3g} "
                f"of the pool ({self.pool_share:.1%})")


def resolve_budget(entry: dict, n_params: int, pool: int) -> Budget:
    (kind, value), = entry.items()
    params = int(value * n_params) if kind == "backbone" else round(value * pool)
    # Half a parameter up: int(fraction * n_params) gives back exactly ``params``.
    fraction = value if kind == "backbone" else (params + 0.5) / n_params
    return Budget(fraction, int(fraction * n_params), pool, dict(entry))


@dataclass(frozen=True)
class SearchExperiment(Runnable):
    """Everything an S3PET comparison needs (see the module docstring)."""

    name: str
    backbone: str = "minilm-l6"
    role_map: dict | None = None
    tasks: tuple[str, ...] = ("sst2",)
    data_dir: str | None = None
    budgets: tuple = ({"pool": 0.2}, {"pool": 0.02}, {"backbone": 1.39e-4}, {"backbone": 3.48e-5})
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    regime: Regime = field(default_factory=Regime)
    search: SearchConfig = field(default_factory=SearchConfig)
    baselines: tuple[str, ...] = BASELINES
    anchors: tuple[str, ...] = ANCHORS
    backend: str = "loky"
    n_jobs: int | None = None
    threads: int | None = None
    address: str | None = None
    retries: int = 1
    output: str | None = None
    source: str | None = None

    def __post_init__(self):
        src = self.source
        object.__setattr__(self, "tasks", check_tasks(self.tasks, src))
        if not self.budgets:
            raise invalid("budgets", [], "at least one budget", src)
        object.__setattr__(self, "budgets", tuple(check_budget_entry(b, src) for b in self.budgets))
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise invalid("seeds", list(self.seeds), "a list of distinct integers >= 0", src)
        for s in self.seeds:
            check_int(s, "seeds", 0, source=src)
        object.__setattr__(self, "seeds", tuple(self.seeds))
        for b in self.baselines:
            check_choice(b, "baselines", BASELINES, src)
        for a in self.anchors:
            check_choice(a, "anchors", ANCHORS, src)
        object.__setattr__(self, "baselines", tuple(self.baselines))
        object.__setattr__(self, "anchors", tuple(self.anchors))
        self.check_engine(src)

    def to_dict(self) -> dict:
        return {**self.plain(("tasks", "budgets", "seeds", "baselines", "anchors")), "search": self.search.to_dict()}

    def identity(self) -> dict:
        return {k: v for k, v in self.to_dict().items() if k not in HOW_FIELDS}

    @classmethod
    def from_dict(cls, d: dict, source: str | None = None) -> SearchExperiment:
        check_keys(d, [f.name for f in dataclasses.fields(cls) if f.name != "source"], "", source)
        kw = dict(d)
        kw.setdefault("name", Path(source).stem if source else "s3pet")
        try:
            kw["regime"] = Regime.from_dict(kw.get("regime"), source)
            kw["search"] = SearchConfig.from_dict(kw.get("search"), source)
        except DesignSpaceError as e:
            raise with_source(e, source) from None
        if kw.get("role_map") is not None:
            kw["role_map"] = load_role_map(kw["role_map"], source)
        for k in ("tasks", "budgets", "seeds", "baselines", "anchors"):
            if k in kw:
                kw[k] = tuple([kw[k]] if isinstance(kw[k], (str, int, float, dict)) else kw[k])
        return cls(**kw, source=source)


class SearchRunner:
    """Runs (or resumes) an S3PET experiment; constructors store, ``run`` acts."""

    def __init__(self, exp: SearchExperiment, progress: bool = True, log=None):
        self.exp = exp
        self.progress = progress
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.info = None
        self.candidates: list = []
        self.budgets: list[Budget] = []
        self.ids: dict = {"backbone": "", "data": {}}

    # --- before any work ----------------------------------------------------------------------
    def prepare(self) -> None:
        """Everything that can fail on bad input: data files, backbone, budgets against the pool."""
        from ..backbones import backbone_info
        from ..backbones.offline import backbone_fingerprint
        from ..tasks import data_fingerprint
        from .structure import candidate_specs, pool_params

        e = self.exp
        self.ids["data"] = {t: data_fingerprint(t, e.data_dir) for t in e.tasks}
        self.info = backbone_info(e.backbone, role_map=e.role_map)
        self.ids["backbone"] = backbone_fingerprint(e.backbone, e.role_map)
        self.candidates = candidate_specs(self.info, e.search.space, e.search.sizes)
        pool = pool_params(self.candidates)
        self.budgets = [resolve_budget(b, self.info.n_params, pool) for b in e.budgets]
        smallest = min(c.params for c in self.candidates)
        for b in self.budgets:
            if b.params < smallest:
                raise DesignSpaceError(f"{e.source or e.name}: budget {b.given} is {b.params:,} parameters, below the "
                                       f"smallest candidate ({smallest:,}) on {e.backbone}")

    # --- trials ----------------------------------------------------------------------------------
    def _spec(self, task: str, seed: int, budget: float, label: str, **kw) -> TrialSpec:
        e = self.exp
        return TrialSpec(task=task, budget=budget, seed=seed, data_seed=seed, regime=e.regime, backbone=e.backbone,
                         backbone_id=self.ids["backbone"], data_id=self.ids["data"][task], data_dir=e.data_dir,
                         role_map=e.role_map, label=label, **kw)

    def search_spec(self, task: str, budget: Budget, seed: int) -> TrialSpec:
        return self._spec(task, seed, budget.fraction, "s3pet search", kind="search", search=self.exp.search.to_dict())

    def train_spec(self, task: str, plan, seed: int, method: str) -> TrialSpec:
        return self._spec(task, seed, plan.budget, method, plan=plan.to_dict())

    def search_cells(self) -> list[dict]:
        return [{"task": t, "budget": b, "seed": s, "method": "s3pet search", "spec": self.search_spec(t, b, s)}
                for t in self.exp.tasks for b in self.budgets for s in self.exp.seeds]

    def retrain_cells(self, searches: dict) -> list[dict]:
        """Every retraining: the searched structure of each finished search, the baselines at each
        budget, the anchors per task and seed. ``searches``: search spec key -> record."""
        from ..plan import Plan
        from .structure import empty_plan, manual_structure, random_structure, structure_plan

        e, info = self.exp, self.info
        cells = []
        pool_budget = resolve_budget({"pool": 1.0}, info.n_params, self.budgets[0].pool_params)
        for task in e.tasks:
            for seed in e.seeds:
                for anchor in e.anchors:
                    plan = (empty_plan(info, pool_budget.fraction, {"origin": "head only"}) if anchor == "head" else
                            structure_plan(info, self.candidates, pool_budget.fraction, {"origin": "whole pool"}))
                    cells.append({"task": task, "budget": None, "seed": seed, "method": anchor,
                                  "spec": self.train_spec(task, plan, seed, anchor)})
            for budget in self.budgets:
                for seed in e.seeds:
                    rec = searches.get(self.search_spec(task, budget, seed).key)
                    if rec is not None and rec.status is Status.OK:
                        plan = Plan.from_dict(rec.result["plan"])
                        cells.append({"task": task, "budget": budget, "seed": seed, "method": "s3pet",
                                      "spec": self.train_spec(task, plan, seed, "s3pet")})
                    for method in e.baselines:
                        if method == "random":
                            plan = random_structure(info, budget.fraction, seed, e.search.space, e.search.sizes,
                                                    e.search.options)
                        else:
                            plan = manual_structure(info, method, budget.fraction, e.search.options)
                        cells.append({"task": task, "budget": budget, "seed": seed, "method": method,
                                      "spec": None if plan is None else self.train_spec(task, plan, seed, method)})
        return cells

    def _evaluate(self, store, specs: list[TrialSpec], label: str):
        from ..pool import evaluate

        e = self.exp
        return evaluate(specs, store, backend=e.backend, n_jobs=e.n_jobs, threads=e.threads, retries=e.retries,
                        address=e.address, progress=self.progress, label=label)

    def _check_identity(self, store) -> None:
        stored = store.note("s3pet_experiment")
        mine = json.loads(json.dumps(self.exp.identity(), default=str))
        if stored is None:
            store.set_note("s3pet_experiment", mine)
            return
        for k in sorted(set(mine) | set(stored)):
            if mine.get(k) != stored.get(k):
                raise DesignSpaceError(
                    f"{self.exp.source or self.exp.name}: {k} differs from the experiment recorded in "
                    f"{self.exp.store_path} ({stored.get(k)!r} there, {mine.get(k)!r} now); its trials answer another "
                    f"question. Pass another --output, or move {self.exp.out_dir} away"
                )

    # --- the run ------------------------------------------------------------------------------------
    def run(self) -> dict:
        from ..store import TrialStore
        from .report import collect, write_outputs

        e = self.exp
        t0 = time.perf_counter()
        self.prepare()
        command = " ".join(sys.argv) if sys.argv and sys.argv[0] else f"run_search_experiment({e.source!r})"
        store = TrialStore(e.store_path)
        with store.driver_lock():
            self._check_identity(store)
            e.out_dir.mkdir(parents=True, exist_ok=True)
            (e.out_dir / "experiment.json").write_text(json.dumps(e.to_dict(), indent=1, default=str) + "\n")
            for b in self.budgets:
                self.log(f"budget {b.given}: {b.describe()}")
            searches = self.search_cells()
            self.log(f"{len(searches)} searches ({len(e.tasks)} tasks x {len(self.budgets)} budgets x "
                     f"{len(e.seeds)} seeds)")
            self._evaluate(store, [c["spec"] for c in searches], "searches")
            found = {r.key: r for r in store.records([c["spec"].key for c in searches])}
            retrain = self.retrain_cells(found)
            specs = [c["spec"] for c in retrain if c["spec"] is not None]
            write_outputs(e, self.budgets, self.candidates, collect(store, searches, retrain), command, time.perf_counter() - t0)
            self.log(f"{len({s.key for s in specs})} retrainings (identical structures train once)")
            self._evaluate(store, specs, "retrainings")
            summary = write_outputs(e, self.budgets, self.candidates, collect(store, searches, retrain), command,
                                    time.perf_counter() - t0)
        store.close()
        self.log(f"tables: {e.out_dir / 'README.md'} ({time.perf_counter() - t0:.0f} s this run)")
        return summary


def run_search_experiment(path: str | Path, data_dir: str | None = None, output: str | None = None,
                          role_map: dict | None = None, progress: bool = True) -> dict:
    """Run (or resume) the S3PET experiment file at ``path``; returns the summary (as ``summary.json``).

    ``data_dir``, ``output`` and ``role_map`` override the file's (the CLI's --data-dir, --output and
    --role-map)."""
    exp = SearchExperiment.load(path, data_dir=data_dir, output=output, role_map=role_map)
    return SearchRunner(exp, progress=progress).run()
