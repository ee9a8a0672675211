"""What each figure shows, as plain objects computed from the store, a decision, a design or a plan.

Nothing here imports matplotlib: these functions are the tested half of every figure (Optuna's
``_get_*_info()``); ``analysis.render`` draws them.
"""

from __future__ import annotations

import json
import textwrap
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from designspace.errors import DesignSpaceError, invalid
from designspace.experiment import Experiment
from designspace.plan import ModuleSpec, Plan, _size_label
from designspace.refine import design_scores
from designspace.space import SHORT, Design, _fmt_choice, group_sizes
from designspace.stats import Decision, compare, edf
from designspace.store import TrialStore
from designspace.strategies import registry

SCORE_LABEL = "dev score (points, mean over tasks)"
STRATEGIES = ("adapter", "prefix", "bitfit", "lora")
# Layer-map columns: prefix attaches to the attention block as a whole, the two layer norms share one.
ROLE_COLUMNS = ("attn", "attn_q", "attn_k", "attn_v", "attn_o", "ffn_in", "ffn_out", "ln")
COLUMN_TITLES = {"attn": "attn\n(prefix)", "ln": "ln"}


# --- labels ---------------------------------------------------------------------------------------
def short_label(choice: str, width: int = 22) -> str:
    """'{adapter,bitfit,prefix}' -> '{A,B,P}'; other labels wrapped at ``width`` characters."""
    if choice.startswith("{") and choice.endswith("}"):
        items = [s for s in choice[1:-1].split(",") if s]
        if items and all(s in SHORT for s in items):
            return "{" + ",".join(SHORT[s] for s in items) + "}"
    return "\n".join(textwrap.wrap(choice, width, break_on_hyphens=False)) or choice


def component_of(stage: str) -> str:
    """'4-strategies.G1' -> 'strategies.G1' (stage names are ``<index>-<component>``)."""
    head, _, rest = stage.partition("-")
    if not head.isdigit() or not rest:
        raise invalid("stage", stage, "a stage name like '1-grouping' or '4-strategies.G1'")
    return rest


# --- 1. one stage: EDF and CI per choice ---------------------------------------------------------
@dataclass
class ChoiceSeries:
    choice: str  # as stored in the decision, e.g. '{adapter,lora}'
    label: str  # short form for legends and axes, e.g. '{A,L}'
    n: int
    mean: float
    ci: tuple[float, float]
    scores: list[float]  # sorted design scores (points)
    fractions: list[float]  # EDF: fraction of designs scoring <= scores[i]
    p_vs_best: float | None


@dataclass
class StageData:
    stage: str
    component: str
    best: str
    confidence: str
    margin: float
    margin_ci: tuple[float, float]
    p_best: float
    provisional: bool  # no stored decision yet: computed from the trials finished so far
    choices: list[ChoiceSeries] = field(default_factory=list)  # best mean first
    noise_sd: float | None = None  # per-design seed noise used for one-design choices

    @property
    def x_label(self) -> str:
        return SCORE_LABEL


def stage_data(stage: str, decision: Decision, provisional: bool = False) -> StageData:
    """EDF and CI of every choice of one stage, best mean first (the order of ``decision.choices``)."""
    series = []
    for c in sorted(decision.choices, key=lambda c: -c.mean):
        x, y = edf(c.scores)
        series.append(ChoiceSeries(c.choice, short_label(c.choice), c.n, c.mean, tuple(c.ci), x, y, c.p_vs_best))
    return StageData(
        stage=stage, component=component_of(stage), best=decision.best, confidence=decision.confidence,
        margin=decision.margin, margin_ci=tuple(decision.margin_ci), p_best=decision.p_best,
        provisional=provisional, choices=series, noise_sd=decision.noise_sd,
    )


def stage_decision(store: TrialStore, experiment: Experiment, stage: str) -> tuple[Decision, bool] | None:
    """The stored decision of ``stage``, or (for a stage still running) one made from its finished trials.

    Returns ``(decision, provisional)``, or None when no design of the stage has a score yet.
    """
    stored = store.meta_get(f"decision:{stage}")
    if stored:
        return Decision.from_dict(stored), False
    rows = store.trials(stage)
    scores = design_scores(rows, experiment.seed, experiment.tasks)
    designs = {r["design_id"]: r["design"] for r in rows if r.get("design")}
    component = component_of(stage)
    by_choice: dict[str, list[float]] = defaultdict(list)
    for design_id, score in scores.items():
        if design_id in designs:
            by_choice[_fmt_choice(Design.from_dict(designs[design_id]).choice(component))].append(score)
    if not by_choice:
        return None
    return compare(component, by_choice), True


# --- 2. layer map of a plan -----------------------------------------------------------------------
@dataclass
class LayerMapData:
    title: str
    columns: list[str]  # role columns, ROLE_COLUMNS order (plus any unknown role at the end)
    groups: list[int]  # group of every layer (1-based)
    tuned: list[bool]  # layer belongs to a tuned group
    cells: list[list[str]]  # [layer][column]: one line per strategy, e.g. 'L r=8'
    layer_params: list[int]

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


def _column(role: str) -> str:
    return "ln" if role.startswith("ln") else role


def module_label(m: ModuleSpec) -> str:
    """'L r=8', 'A b=12', 'P len=5', 'B' (fixed-cost strategies have no size)."""
    short = SHORT.get(m.strategy, m.strategy)
    if not registry.get(m.strategy).sized:
        return short
    return f"{short} {_size_label(m) or registry.get(m.strategy).size_name + '='}{m.size}"


def layer_map_data(plan: Plan, title: str | None = None) -> LayerMapData:
    columns = list(ROLE_COLUMNS)
    for m in plan.modules:
        for r in m.roles:
            if _column(r) not in columns:
                columns.append(_column(r))
    cells = [[[] for _ in columns] for _ in range(plan.n_layers)]
    params = [0] * plan.n_layers
    for m in plan.modules:
        params[m.layer] += m.params
        label = module_label(m)
        for col in dict.fromkeys(_column(r) for r in m.roles):  # ln_attn and ln_ffn share one cell
            cells[m.layer][columns.index(col)].append(label)
    if plan.design:
        tuned_groups = set(Design.from_dict(plan.design).tuned_groups)
        tuned = [g in tuned_groups for g in plan.groups]
    else:
        tuned = [bool(plan.layer_modules(i)) for i in range(plan.n_layers)]
    if title is None:
        what = Design.from_dict(plan.design).describe() if plan.design else "plan"
        title = f"{what}\n{plan.backbone}: {plan.params:,} PET parameters ({plan.fraction:.3%} of the backbone)"
    return LayerMapData(
        title=title, columns=columns, groups=list(plan.groups), tuned=tuned,
        cells=[["\n".join(c) for c in row] for row in cells], layer_params=params,
    )


# --- 3. strategies per group of a design ---------------------------------------------------------
@dataclass
class StrategyHeatmapData:
    title: str
    groups: list[str]  # 'G1', 'G2', ...
    group_layers: list[str]  # 'layer 0', 'layers 1-2' (empty without a layer count)
    strategies: list[str]
    used: list[list[bool]]  # [group][strategy]
    tuned: list[bool]
    params: list[list[int]] | None = None  # [group][strategy] parameters, when a plan was given


def strategy_heatmap_data(design: Design, plan: Plan | None = None, title: str | None = None) -> StrategyHeatmapData:
    strategies = list(STRATEGIES) + sorted({s for ss in design.strategies for s in ss} - set(STRATEGIES))
    groups = [f"G{g}" for g in range(1, design.n_groups + 1)]
    used = [[s in design.strategies[g] and (g + 1) in design.tuned_groups for s in strategies]
            for g in range(design.n_groups)]
    layers = [""] * design.n_groups
    params = None
    if plan is not None:
        first = 0
        for g, size in enumerate(group_sizes(plan.n_layers, design.grouping, design.n_groups)):
            layers[g] = f"layer {first}" if size == 1 else f"layers {first}-{first + size - 1}"
            first += size
        params = [[0] * len(strategies) for _ in groups]
        for m in plan.modules:
            params[plan.groups[m.layer] - 1][strategies.index(m.strategy)] += m.params
    return StrategyHeatmapData(
        title=title or f"Strategies per group: {design.describe()}", groups=groups, group_layers=layers,
        strategies=strategies, used=used, tuned=[g in design.tuned_groups for g in range(1, design.n_groups + 1)],
        params=params,
    )


# --- 4. score against parameters ----------------------------------------------------------------
@dataclass
class ParamPoint:
    stage: str
    design_id: str
    params: int
    score: float  # points, mean over tasks


@dataclass
class ScoreParamsData:
    stages: list[str]
    points: list[ParamPoint]
    x_label: str
    final_design_id: str | None = None

    @property
    def y_label(self) -> str:
        return SCORE_LABEL

    @property
    def spread(self) -> float:
        """Largest parameter count over the smallest, minus 1 (0.004: every design within 0.4 %)."""
        xs = [p.params for p in self.points if p.params > 0]
        return max(xs) / min(xs) - 1 if xs else 0.0


def score_params_data(store: TrialStore, experiment: Experiment) -> ScoreParamsData:
    """One point per (stage, design): its score and its PET parameter count (plan, else as counted)."""
    points, stages = [], []
    use_plan = True
    for stage in store.stages():
        rows = store.trials(stage, status="ok")
        scores = design_scores(rows, experiment.seed, experiment.tasks)
        counts: dict[str, list[int]] = defaultdict(list)
        for r in rows:
            n = r.get("plan_params") or r.get("trainable_params")
            use_plan = use_plan and r.get("plan_params") is not None
            if n and r["design_id"] in scores:
                counts[r["design_id"]].append(int(n))
        stage_points = [ParamPoint(stage, d, int(np.median(counts[d])), s) for d, s in scores.items() if counts[d]]
        if stage_points:
            stages.append(stage)
            points += stage_points
    final = store.meta_get("final_design")
    return ScoreParamsData(
        stages=stages, points=points,
        x_label=("PET parameters of the design (plan, log scale)" if use_plan
                 else "trainable parameters (counted on the model, log scale)"),
        final_design_id=Design.from_dict(final).id if final else None,
    )


# --- 5. S3PET gates -------------------------------------------------------------------------------
@dataclass
class GateHeatmapData:
    title: str
    types: list[str]  # module types (rows)
    layers: list[str]  # layers (columns)
    p: list[list[float]]  # [type][layer] gate probability


def gate_heatmap_data(d: dict, title: str = "S3PET gate probabilities") -> GateHeatmapData:
    """From ``{"types": [...], "layers": [...], "p": [[...]]}``; ``p`` may be types x layers or layers x types."""
    for key in ("types", "layers", "p"):
        if key not in d:
            raise invalid(f"gate heatmap.{key}", None, "keys types, layers and p ([type][layer] probabilities)")
    types, layers = [str(t) for t in d["types"]], [str(x) for x in d["layers"]]
    p = np.asarray(d["p"], dtype=float)
    if p.shape == (len(layers), len(types)) and p.shape != (len(types), len(layers)):
        p = p.T
    if p.shape != (len(types), len(layers)):
        raise invalid("gate heatmap.p", f"shape {p.shape}", f"{len(types)} types x {len(layers)} layers")
    return GateHeatmapData(title=d.get("title") or title, types=types, layers=layers, p=p.tolist())


def find_gate_files(folder: str | Path) -> list[Path]:
    """JSON files under ``folder`` that hold a gate heatmap (named gates.json or *gate*heatmap*.json)."""
    folder = Path(folder)
    found = sorted({*folder.rglob("gates.json"), *folder.rglob("*gate*heatmap*.json")})
    out = []
    for path in found:
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(d, dict) and {"types", "layers", "p"} <= set(d):
            out.append(path)
    return out


def load_gate_heatmap(path: str | Path) -> GateHeatmapData:
    path = Path(path)
    try:
        return gate_heatmap_data(json.loads(path.read_text()), title=f"S3PET gate probabilities ({path.parent.name})")
    except DesignSpaceError as e:
        raise DesignSpaceError(f"{path}: {e}") from None
