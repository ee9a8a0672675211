"""What each figure shows, as plain objects computed from a store, a stage, a design or a plan.

Nothing here imports matplotlib or torch: these functions are the tested half of every figure
(Optuna's ``_get_*_info()``); ``analysis.render`` draws them. Records are read through the
store's API only, and a stage's trials are found the way the refiner made them (its blocks).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from designspace.backbones.roles import ROLES
from designspace.errors import invalid
from designspace.experiment import Experiment
from designspace.patterns import group_sizes
from designspace.plan import Plan, module_label
from designspace.report import spec_maker
from designspace.space import Design
from designspace.stage import StageState, block_specs, design_score
from designspace.store import TrialStore
from designspace.strategies import registry
from designspace.trial import Status, TrialRecord

SCORE_LABEL = "design score (points, mean over tasks)"
#: An EDF of fewer designs per choice says little: the stage's EDF figure needs this many blocks.
EDF_MIN_DESIGNS = 4
#: What ``s3pet.structure.heatmap_data`` returns, searches save as ``<stem>.heatmap.json`` and records keep.
GATE_KEYS = frozenset({"rows", "layers", "p", "chosen"})


# --- labels ---------------------------------------------------------------------------------------
def short_label(choice: str, width: int = 22) -> str:
    """'{adapter,lora}' -> '{A,L}' (each strategy's own label); other labels wrapped at ``width``."""
    if choice.startswith("{") and choice.endswith("}"):
        items = [s for s in choice[1:-1].split(",") if s]
        if items and all(s in registry.names() for s in items):
            return "{" + ",".join(registry.get(s).label for s in items) + "}"
    return "\n".join(textwrap.wrap(choice, width, break_on_hyphens=False)) or choice


def strategy_legend(names) -> list[str]:
    """'L = lora (r = rank)' for every strategy in ``names``, in registry order."""
    out = []
    for name in [n for n in registry.names() if n in set(names)]:
        s = registry.get(name)
        size = f" ({s.size_symbol or s.size_name} = {s.size_name})" if s.sized else ""
        out.append(f"{s.label} = {name}{size}")
    return out


# --- a results folder -----------------------------------------------------------------------------
@dataclass
class Cell:
    """One design of a stage: choice ``choice`` trained on block ``block`` (0-based over the stage)."""

    round: int  # 1-based
    block: int
    seed: int
    choice: str
    design: Design
    score: float  # NaN when a trial failed or is missing
    params: int  # the plan's PET parameters as recorded (0: not recorded, e.g. a synthetic scorer)


@dataclass
class Results:
    """What the figures read: the experiment, its stages, its records by key and its final design."""

    experiment: Experiment
    states: list[StageState]
    records: dict[str, TrialRecord]
    final: dict | None
    make_spec: Callable

    @classmethod
    def read(cls, store: TrialStore, experiment: Experiment, records: list[TrialRecord] | None = None
             ) -> Results:
        from designspace.refine import load_states

        records = store.records() if records is None else records
        return cls(experiment, load_states(store), {r.key: r for r in records}, store.note("final_design"),
                   spec_maker(experiment, store))

    def cells(self, state: StageState) -> list[Cell]:
        """Every design of the rounds the stage has judged, scored as the decision scored it."""
        e, out, first = self.experiment, [], 0
        for r, rnd in enumerate(state.rounds[: len(state.verdicts)]):
            for i, block in enumerate(rnd.blocks):
                specs = block_specs(state, block, rnd.alive, self.make_spec, e.tasks, e.seeds_per_design)
                for label, group in specs.items():
                    recs = [self.records.get(s.key) for s in group]
                    done = [x for x in recs if x is not None and x.status is not Status.LOST]
                    score = design_score(done) if len(done) == len(recs) else float("nan")
                    counts = [x.plan_params for x in done if x.ok and x.plan_params]
                    out.append(Cell(r + 1, first + i, block.seed, label, group[0].design, score,
                                    int(np.median(counts)) if counts else 0))
            first += len(rnd.blocks)
        return out


def stage_table(cells: list[Cell], labels: list[str]) -> np.ndarray:
    """Blocks (rows) by choices (columns, ``labels`` order) of ``cells``: the table the decision judged."""
    n = 1 + max((c.block for c in cells), default=-1)
    table = np.full((n, len(labels)), np.nan)
    for c in cells:
        table[c.block, labels.index(c.choice)] = c.score
    return table


# --- 1. a stage: each choice against the best of the others ---------------------------------------
@dataclass
class ChoiceEffect:
    choice: str  # the class label the stage stored, e.g. '{adapter,lora}' or 'uniform=decreasing'
    label: str  # short form, e.g. '{A,L}'
    n: int
    mean: float | None
    effect: float | None
    diff: float | None  # choice minus the best of the others (points)
    lower: float | None  # the verdict's simultaneous interval of ``diff``
    upper: float | None
    eliminated_round: int | None
    status: str  # best | tie | open | eliminated
    meaning: str


@dataclass
class EffectsData:
    stage: str
    component: str
    status: str  # the stage's: running | separated | tie | unresolved
    best: str
    confidence: str  # '95%': over the whole stage, every interval at once
    delta: float  # the tie margin (points)
    round_index: int
    max_rounds: int
    resid_sd: float | None
    meaning: str
    choices: list[ChoiceEffect] = field(default_factory=list)  # largest diff first

    @property
    def x_label(self) -> str:
        return "difference to the best of the other choices (points)"


def effects_data(state: StageState) -> EffectsData | None:
    """Each choice's estimate and simultaneous interval from the stage's last verdict (None before one)."""
    v = state.verdict()
    if v is None:
        return None
    choices = []
    for c in v.choices:
        status = ("eliminated" if c.eliminated_round is not None else "tie" if state.status == "tie"
                  else "best" if c.choice == v.best and state.status == "separated" else "open")
        choices.append(ChoiceEffect(c.choice, short_label(c.choice), c.n, c.mean, c.effect, c.diff, c.lower,
                                    c.upper, c.eliminated_round, status, c.meaning))
    choices.sort(key=lambda c: np.inf if c.diff is None else -c.diff)  # no estimate: last
    return EffectsData(state.name, state.component, state.status, v.best, f"{1 - v.alpha:.0%}", v.delta,
                       v.round_index, v.max_rounds, v.resid_sd, v.meaning, choices)


# --- 2. a stage's blocks: the pairing ---------------------------------------------------------------
@dataclass
class BlockLine:
    round: int
    block: int
    seed: int
    scores: list[float | None]  # by choice (``BlockProfileData.choices`` order); None: not trained or failed


@dataclass
class BlockProfileData:
    stage: str
    component: str
    choices: list[str]  # the effects figure's order
    labels: list[str]
    eliminated: dict[str, int]  # choice -> round it was shown worse
    blocks: list[BlockLine]

    @property
    def y_label(self) -> str:
        return SCORE_LABEL


def block_profile_data(state: StageState, cells: list[Cell], order: list[str] | None = None
                       ) -> BlockProfileData:
    """Each block's scores across the choices, so that a reader sees the comparison is within blocks."""
    order = order or state.labels
    table = stage_table(cells, order)
    meta = {c.block: (c.round, c.seed) for c in cells}
    lines = [BlockLine(meta[b][0], b, meta[b][1], [None if np.isnan(x) else float(x) for x in row])
             for b, row in enumerate(table) if b in meta]
    v = state.verdict()
    return BlockProfileData(state.name, state.component, list(order), [short_label(c) for c in order],
                            dict(v.eliminated) if v else {}, lines)


# --- 3. a stage's EDF (the paper's figure) ---------------------------------------------------------
@dataclass
class ChoiceSeries:
    choice: str
    label: str
    n: int
    mean: float
    scores: list[float]  # sorted design scores (points)
    fractions: list[float]  # EDF: fraction of this choice's designs scoring <= scores[i]


@dataclass
class EdfData:
    stage: str
    component: str
    series: list[ChoiceSeries]  # the effects figure's order

    @property
    def x_label(self) -> str:
        return SCORE_LABEL


def edf_data(state: StageState, cells: list[Cell], order: list[str] | None = None,
             min_designs: int = EDF_MIN_DESIGNS) -> EdfData | None:
    """Per choice, the distribution of its design scores; None when no choice has ``min_designs``."""
    series = []
    for choice in order or state.labels:
        xs = sorted(c.score for c in cells if c.choice == choice and np.isfinite(c.score))
        if xs:
            series.append(ChoiceSeries(choice, short_label(choice), len(xs), float(np.mean(xs)), xs,
                                       [(i + 1) / len(xs) for i in range(len(xs))]))
    if len(series) < 2 or max(s.n for s in series) < min_designs:
        return None
    return EdfData(state.name, state.component, series)


# --- 4. score against parameters -------------------------------------------------------------------
@dataclass
class ParamPoint:
    stage: str
    design_id: str
    params: int
    score: float


@dataclass
class ScoreParamsData:
    stages: list[str]
    points: list[ParamPoint]
    source: str  # where the counts come from
    final_design_id: str | None = None

    @property
    def x_label(self) -> str:
        return f"PET parameters of the design ({self.source}, log scale)"

    @property
    def y_label(self) -> str:
        return SCORE_LABEL

    @property
    def spread(self) -> float:
        """Largest parameter count over the smallest, minus 1 (0.004: every design within 0.4 %)."""
        xs = [p.params for p in self.points if p.params > 0]
        return max(xs) / min(xs) - 1 if xs else 0.0


def score_params_data(cells_by_stage: dict[str, list[Cell]], count: Callable[[Design], int] | None = None,
                      final: Design | None = None) -> ScoreParamsData:
    """One point per scored design: its score and its plan's parameters (as recorded, else ``count``)."""
    points, compiled = [], 0
    for stage, cells in cells_by_stage.items():
        for c in cells:
            params = c.params
            if not params and count is not None:
                params, compiled = count(c.design), compiled + 1
            if params and np.isfinite(c.score):
                points.append(ParamPoint(stage, c.design.id, int(params), c.score))
    stages = [s for s in cells_by_stage if any(p.stage == s for p in points)]
    source = "plan, compiled for this figure" if compiled else "plan, as recorded"
    return ScoreParamsData(stages, points, source, final.id if final else None)


# --- 5. the final design: layer map and strategies per group ----------------------------------------
def _column(role: str) -> str:
    return "ln" if role.startswith("ln") else role


@dataclass
class LayerMapData:
    title: str
    columns: list[str]  # role columns in role-map order; the two layer norms share 'ln'
    groups: list[int]  # group of every layer (1-based)
    tuned: list[bool]
    cells: list[list[str]]  # [layer][column]: one line per module, e.g. 'L r=8'
    layer_params: list[int]
    legend: list[str]  # 'L = lora (r = rank)' for the strategies on the map

    @property
    def n_layers(self) -> int:
        return len(self.groups)

    def group_spans(self) -> list[tuple[int, int, int]]:
        """(group, first layer, last layer) for every group, in layer order."""
        spans: list[tuple[int, int, int]] = []
        for layer, g in enumerate(self.groups):
            if spans and spans[-1][0] == g:
                spans[-1] = (g, spans[-1][1], layer)
            else:
                spans.append((g, layer, layer))
        return spans


def layer_map_data(plan: Plan, title: str | None = None) -> LayerMapData:
    order = list(dict.fromkeys(_column(r) for r in ROLES))
    used = {_column(r) for m in plan.modules for r in m.roles}
    columns = [c for c in order if c in used] + sorted(used - set(order))
    cells = [[[] for _ in columns] for _ in range(plan.n_layers)]
    params = [0] * plan.n_layers
    for m in plan.modules:
        params[m.layer] += m.params
        for col in dict.fromkeys(_column(r) for r in m.roles):  # ln_attn and ln_ffn share one cell
            cells[m.layer][columns.index(col)].append(module_label(m))
    design = Design.from_dict(plan.design) if plan.design else None
    tuned = ([g in design.tuned_groups for g in plan.groups] if design
             else [bool(plan.layer_modules(i)) for i in range(plan.n_layers)])
    if title is None:
        what = design.describe() if design else "plan"
        title = (f"{what}\n{plan.backbone}: {plan.params:,} PET parameters "
                 f"({plan.fraction:.3%} of the backbone)")
    text = [["\n".join(c) for c in row] for row in cells]
    return LayerMapData(title, columns, list(plan.groups), tuned, text, params,
                        strategy_legend({m.strategy for m in plan.modules}))


@dataclass
class StrategyHeatmapData:
    title: str
    groups: list[str]  # 'G1', 'G2', ...
    group_layers: list[str]  # 'layer 0', 'layers 1-2' (empty without a plan)
    strategies: list[str]
    labels: list[str]  # each strategy's own letter
    colors: list[str]  # each strategy's own colour
    used: list[list[bool]]  # [group][strategy]
    tuned: list[bool]
    params: list[list[int]] | None = None  # [group][strategy], when a plan was given


def strategy_heatmap_data(design: Design, plan: Plan | None = None, pool=(), title: str | None = None
                          ) -> StrategyHeatmapData:
    """Which strategy each group of ``design`` uses; columns: ``pool`` and the design's, registry order."""
    wanted = set(pool) | {s for ss in design.strategies for s in ss}
    strategies = [s for s in registry.names() if s in wanted]
    groups = [f"G{g}" for g in range(1, design.n_groups + 1)]
    used = [[s in design.strategies[g] and (g + 1) in design.tuned_groups for s in strategies]
            for g in range(design.n_groups)]
    layers, params = [""] * design.n_groups, None
    if plan is not None:
        first = 0
        for g, size in enumerate(group_sizes(plan.n_layers, design.grouping, design.n_groups)):
            layers[g] = f"layer {first}" if size == 1 else f"layers {first}-{first + size - 1}"
            first += size
        params = [[0] * len(strategies) for _ in groups]
        for m in plan.modules:
            params[plan.groups[m.layer] - 1][strategies.index(m.strategy)] += m.params
    return StrategyHeatmapData(
        title or f"Strategies per group: {design.describe()}", groups, layers, strategies,
        [registry.get(s).label for s in strategies], [registry.get(s).color for s in strategies], used,
        [g in design.tuned_groups for g in range(1, design.n_groups + 1)], params)


# --- 6. S3PET gates ---------------------------------------------------------------------------------
@dataclass
class GateHeatmapData:
    title: str
    rows: list[str]  # 'kind@role'
    layers: list[str]
    p: list[list[float | None]]  # [row][layer]; None: no candidate there
    chosen: list[list[bool]]


def gate_heatmap_data(d: dict, title: str = "S3PET gate probabilities") -> GateHeatmapData:
    """From the dict ``designspace.s3pet.structure.heatmap_data`` returns (and searches save)."""
    if not isinstance(d, dict) or not GATE_KEYS <= set(d):
        raise invalid("gate heatmap", sorted(d) if isinstance(d, dict) else type(d).__name__,
                      "keys rows, layers, p and chosen (s3pet.structure.heatmap_data)")
    rows, layers = [str(r) for r in d["rows"]], [str(x) for x in d["layers"]]
    for key in ("p", "chosen"):
        if len(d[key]) != len(rows) or any(len(row) != len(layers) for row in d[key]):
            raise invalid(f"gate heatmap.{key}", f"{len(d[key])} rows",
                          f"{len(rows)} rows x {len(layers)} layers")
    p = [[None if v is None else float(v) for v in row] for row in d["p"]]
    return GateHeatmapData(title, rows, layers, p, [[bool(v) for v in row] for row in d["chosen"]])


def search_gate_heatmaps(records: list[TrialRecord]) -> dict[str, GateHeatmapData]:
    """Figure name -> gates of every finished search record of the store (``spec.kind == 'search'``)."""
    out = {}
    for r in records:
        if r.spec.kind != "search" or not (r.result or {}).get("heatmap"):
            continue
        s = r.spec
        title = (f"S3PET gate probabilities: {s.label or 'search'} on {s.task}, budget {s.budget:.3%}, "
                 f"seed {s.seed}")
        out[f"gates_{s.task}_s{s.seed}_{r.key[:8]}"] = gate_heatmap_data(r.result["heatmap"], title)
    return out


# --- paired comparisons (final comparison, transfer) -------------------------------------------------
@dataclass
class PairedRow:
    """``ref`` minus one method, per column: (mean, lower, upper) of the paired t interval, or None."""

    method: str
    cells: list[tuple[float, float, float] | None]
    adjusted_p: float | None = None  # Holm over the last column's family, where given


@dataclass
class PairedData:
    """Paired differences of one reference against several methods, one panel per column."""

    ref: str
    columns: list[str]
    rows: list[PairedRow]
    title: str
    level: float = 0.95


def paired_data(scores: dict[str, dict[str, dict[int, float]]], ref: str, others: list[str], title: str,
                level: float = 0.95) -> PairedData:
    """From ``scores[column][method] = {seed: points}``: ``ref - method`` per column, paired by seed
    (``compare.paired_difference``), and the Holm-adjusted p of the last column's family."""
    from designspace.compare import holm, paired_difference

    columns = list(scores)
    rows, last = [], []
    for m in others:
        cells = []
        for col in columns:
            d = paired_difference(scores[col].get(ref, {}), scores[col].get(m, {}), level)
            cells.append(None if d is None or d["ci"] is None else (d["mean"], *d["ci"]))
        last.append(d["p"] if d is not None else None)
        rows.append(PairedRow(m, cells))
    for row, p in zip(rows, holm(last), strict=True):
        row.adjusted_p = p
    return PairedData(ref, columns, rows, title, level)
