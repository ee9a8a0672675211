"""Figures of a refinement: ``<name>_data(...)`` computes a figure as a plain object, ``render_<name>``
draws it (``analysis.data`` and ``analysis.render``); ``plot_results`` draws every figure of a results
folder and links them from its ``report.md``.

=====================  ===========================  ==============================
figure                 data                         renderer
=====================  ===========================  ==============================
EDF per stage          ``stage_data``               ``render_edf``
CI strip per stage     ``stage_data``               ``render_ci``
layer map of a plan    ``layer_map_data``           ``render_layer_map``
strategies per group   ``strategy_heatmap_data``    ``render_strategy_heatmap``
score vs parameters    ``score_params_data``        ``render_score_params``
S3PET gates            ``gate_heatmap_data``        ``render_gate_heatmap``
=====================  ===========================  ==============================
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from designspace.errors import DesignSpaceError
from designspace.experiment import Experiment
from designspace.plan import Plan, compile
from designspace.refine import stage_name
from designspace.report import render
from designspace.space import Design
from designspace.store import TrialStore

from .data import (
    ChoiceSeries,
    GateHeatmapData,
    LayerMapData,
    ParamPoint,
    ScoreParamsData,
    StageData,
    StrategyHeatmapData,
    find_gate_files,
    gate_heatmap_data,
    layer_map_data,
    load_gate_heatmap,
    score_params_data,
    short_label,
    stage_data,
    stage_decision,
    strategy_heatmap_data,
)
from .render import (
    render_ci,
    render_edf,
    render_gate_heatmap,
    render_layer_map,
    render_score_params,
    render_strategy_heatmap,
)

if TYPE_CHECKING:
    from designspace.backbones import Backbone

__all__ = [
    "ChoiceSeries", "GateHeatmapData", "LayerMapData", "ParamPoint", "ScoreParamsData", "StageData",
    "StrategyHeatmapData", "find_gate_files", "gate_heatmap_data", "layer_map_data", "load_gate_heatmap",
    "score_params_data", "short_label", "stage_data", "stage_decision", "strategy_heatmap_data", "render_ci",
    "render_edf", "render_gate_heatmap", "render_layer_map", "render_score_params", "render_strategy_heatmap",
    "plot_results",
]


def _final_plan(design: Design, experiment: Experiment, backbone: str | Backbone | None) -> Plan | None:
    """The discovered design compiled on the experiment's backbone (layer names only, meta device)."""
    try:
        if backbone is None or isinstance(backbone, str):
            from designspace.backbones import backbone_info

            backbone = backbone_info(backbone or experiment.backbone)
        return compile(design, backbone)
    except (DesignSpaceError, OSError, ImportError, ValueError) as e:
        print(f"designspace plot: no layer map ({experiment.backbone}: {e})", file=sys.stderr)
        return None


def _gate_stem(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    return "gates_" + re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(rel.parts))


class _Figures:
    """Files written so far, and the report section each belongs to (a stage, 'final' or 'more')."""

    def __init__(self, root: Path, formats: Sequence[str]):
        self.root, self.formats = root, tuple(formats)
        self.shown = "png" if "png" in self.formats else self.formats[0]
        self.files: dict[str, list[Path]] = {}  # figure name -> its files
        self.sections: dict[str, list[str]] = {}  # report section -> figure names

    def add(self, section: str, name: str, files: list[Path]) -> None:
        self.files[name] = files
        self.sections.setdefault(section, []).append(name)

    def link(self, name: str, fmt: str | None = None) -> str:
        path = next(p for p in self.files[name] if p.name.endswith("." + (fmt or self.shown)))
        return path.relative_to(self.root).as_posix()

    def report(self, text: str) -> str:
        """``text`` plus every figure it does not show yet, and links to every file of every format."""
        out = [text.rstrip(), ""]
        for section, names in self.sections.items():
            missing = [n for n in names if f"]({self.link(n)})" not in text]
            if not missing:
                continue
            title = "More figures" if section == "more" else f"Stage {section} (running: from the trials so far)"
            out += [f"## {title}", ""]
            for name in missing:
                out += [f"![{name}]({self.link(name)})", ""]
        if self.files:
            out += ["## Figure files", ""]
            out += [f"- {name}: " + " · ".join(f"[{p.suffix[1:]}]({p.relative_to(self.root).as_posix()})"
                                                for p in files) for name, files in self.files.items()]
            out.append("")
        return "\n".join(out)


def plot_results(results_dir: str | Path, formats: Sequence[str] = ("png", "svg"),
                 backbone: str | Backbone | None = None) -> list[Path]:
    """Write every figure of ``results_dir`` into ``results_dir/figures/`` and link them from ``report.md``.

    Reads ``trials.sqlite`` (never creates it) and any S3PET gate heatmap JSON under the folder. A folder
    with gate heatmaps but no store (an S3PET run) gets its gate figures only. ``backbone`` (a name or a
    loaded backbone) overrides the experiment's for the layer map.
    """
    root = Path(results_dir)
    formats = tuple(f.strip().lstrip(".") for f in formats if f.strip())
    if not formats:
        raise DesignSpaceError("formats: give at least one, e.g. png,svg")
    figs = _Figures(root, formats)
    out_dir = root / "figures"
    for path in find_gate_files(root):
        stem = _gate_stem(path, root)
        figs.add("more", stem, render_gate_heatmap(load_gate_heatmap(path), out_dir / stem, formats))
    store_path = root / "trials.sqlite"
    if not store_path.exists():
        if figs.files:
            return [p for files in figs.files.values() for p in files]
        raise DesignSpaceError(f"{root}: no trials.sqlite and no gate heatmap JSON; pass an experiment's results folder")
    with TrialStore(store_path, create=False) as store:
        exp = store.meta_get("experiment")
        if not exp:
            raise DesignSpaceError(f"{store_path}: holds no 'experiment' entry; was it written by designspace refine?")
        experiment = Experiment.from_dict(exp)
        for i, component in enumerate(experiment.stages):
            stage = stage_name(i, component)
            if store.meta_get(f"skipped:{stage}"):
                continue  # its trials (if any) are from an earlier run, before the stage became moot
            found = stage_decision(store, experiment, stage)
            if found is None:
                continue
            data = stage_data(stage, *found)
            figs.add(stage, f"edf_{stage}", render_edf(data, out_dir / f"edf_{stage}", formats))
            figs.add(stage, f"ci_{stage}", render_ci(data, out_dir / f"ci_{stage}", formats))
        final = store.meta_get("final_design")
        if final:
            design = Design.from_dict(final)
            plan = _final_plan(design, experiment, backbone)
            if plan is not None:
                figs.add("final", "layer_map", render_layer_map(layer_map_data(plan), out_dir / "layer_map", formats))
            heat = strategy_heatmap_data(design, plan)
            figs.add("final", "strategies", render_strategy_heatmap(heat, out_dir / "strategies", formats))
        points = score_params_data(store, experiment)
        if points.points:
            figs.add("more", "score_vs_params", render_score_params(points, out_dir / "score_vs_params", formats))
        linked = {s: [figs.link(n) for n in names] for s, names in figs.sections.items() if s != "more"}
        text = render(experiment, store, figures=linked)
    (root / "report.md").write_text(figs.report(text))
    return [p for files in figs.files.values() for p in files]
