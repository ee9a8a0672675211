"""Figures of a refinement: ``<name>_data(...)`` computes a figure as a plain object (``analysis.data``,
no matplotlib), ``render_<name>`` draws it (``analysis.render``); ``plot_results`` draws every figure of
a results folder and links them from its ``report.md``.

======================  ===========================  ============================
figure                  data                         renderer
======================  ===========================  ============================
effects per stage       ``effects_data``             ``render_effects``
blocks per stage        ``block_profile_data``       ``render_block_profile``
EDF per stage           ``edf_data``                 ``render_edf``
layer map (final)       ``layer_map_data``           ``render_layer_map``
strategies per group    ``strategy_heatmap_data``    ``render_strategy_heatmap``
score vs parameters     ``score_params_data``        ``render_score_params``
S3PET gates             ``gate_heatmap_data``        ``render_gate_heatmap``
======================  ===========================  ============================
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from designspace.errors import DesignSpaceError
from designspace.experiment import Experiment
from designspace.plan import Plan, compile_plan
from designspace.report import write_report
from designspace.space import Design
from designspace.store import TrialStore

from .data import (
    GATE_KEYS,
    Results,
    block_profile_data,
    edf_data,
    effects_data,
    gate_heatmap_data,
    layer_map_data,
    score_params_data,
    search_gate_heatmaps,
    strategy_heatmap_data,
)
from .render import (
    render_block_profile,
    render_edf,
    render_effects,
    render_gate_heatmap,
    render_layer_map,
    render_score_params,
    render_strategy_heatmap,
)

__all__ = ["plot_results", "load_experiment", "find_gate_files"]


class _Figures:
    """Files written so far, the report section each belongs to (a stage, 'final' or 'more'), and notes."""

    def __init__(self, root: Path, formats: Sequence[str]):
        self.root, self.formats = root, tuple(formats)
        self.shown = "png" if "png" in self.formats else self.formats[0]
        self.files: dict[str, list[Path]] = {}  # figure name -> its files
        self.sections: dict[str, list[str]] = {}  # report section -> figure names
        self.notes: list[str] = []  # figures not drawn, and why

    def add(self, section: str, name: str, files: list[Path]) -> None:
        self.files[name] = files
        self.sections.setdefault(section, []).append(name)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"designspace plot: {text}", file=sys.stderr)

    def link(self, name: str) -> str:
        path = next(p for p in self.files[name] if p.name.endswith("." + self.shown))
        return path.relative_to(self.root).as_posix()

    def linked(self, sections: Sequence[str] | None = None) -> dict[str, list[str]]:
        return {s: [self.link(n) for n in names] for s, names in self.sections.items()
                if sections is None or s in sections}

    def paths(self) -> list[Path]:
        return [p for files in self.files.values() for p in files]

    def report(self, text: str) -> str:
        """``text``, then every figure it does not show, the notes, and links to the files of every format."""
        out = [text.rstrip(), ""]
        missing = [n for names in self.sections.values() for n in names if f"]({self.link(n)})" not in text]
        if missing or self.notes:
            out += ["## More figures", ""]
            out += [line for n in missing for line in (f"![{n}]({self.link(n)})", "")]
            out += [f"_Not drawn: {n}_" for n in self.notes] + ([""] if self.notes else [])
        if self.files:
            out += ["## Figure files", ""]
            out += [f"- {name}: " + " · ".join(f"[{p.suffix[1:]}]({p.relative_to(self.root).as_posix()})"
                                                for p in files) for name, files in self.files.items()]
            out.append("")
        return "\n".join(out)


def find_gate_files(folder: str | Path) -> list[Path]:
    """Every ``*.heatmap.json`` a search saved under ``folder`` (other JSON is left alone)."""
    out = []
    for path in sorted(Path(folder).rglob("*.heatmap.json")):
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(d, dict) and GATE_KEYS <= set(d):
            out.append(path)
    return out


def load_experiment(root: str | Path, store: TrialStore) -> Experiment | None:
    """The experiment of ``store`` (None when it records none, e.g. a store of S3PET searches only).

    ``experiment.json`` when it matches the store's recorded identity, else rebuilt from that identity;
    either way its output is ``root``, wherever the folder was moved.
    """
    root = Path(root)
    note = store.note("experiment")
    if note is None:
        return None
    path = root / "experiment.json"
    if path.exists():
        try:
            e = Experiment.load(path, output=str(root))
            if e.changed_field(note) is None:
                return e
        except DesignSpaceError:
            pass  # an edited or older file: the store's identity is what its trials answer to
    try:
        return Experiment.from_dict({**note, "name": root.name, "output": str(root)})
    except DesignSpaceError as err:
        raise DesignSpaceError(f"{store.path}: the recorded experiment cannot be rebuilt ({err})") from None


class _Backbone:
    """The experiment's backbone layers (meta device), loaded once on first need; None if it cannot be."""

    def __init__(self, experiment: Experiment, override, figs: _Figures):
        self.e, self.override, self.figs = experiment, override, figs
        self._info, self._tried = None, False

    def info(self):
        if self._tried:
            return self._info
        self._tried = True
        if self.override is not None and not isinstance(self.override, str):
            self._info = self.override  # layers given by the caller
            return self._info
        name = self.override or self.e.backbone
        try:
            from designspace.backbones import backbone_info

            self._info = backbone_info(name, role_map=self.e.role_map)
        except (DesignSpaceError, OSError, ImportError, ValueError) as err:
            why = str(err).splitlines()[0] if str(err) else type(err).__name__
            self.figs.note(f"layer map and parameter counts: backbone {name} could not be loaded ({why})")
        return self._info

    def plan(self, design: Design) -> Plan | None:
        info = self.info()
        if info is None:
            return None
        try:
            return compile_plan(design, info, self.e.budget, self.e.options)
        except DesignSpaceError:
            return None  # a design that does not fit the budget: no plan, no count

    def count(self, design: Design) -> int:
        plan = self.plan(design)
        return plan.params if plan else 0


def _gate_stem(path: Path, root: Path) -> str:
    rel = path.relative_to(root).as_posix().removesuffix(".heatmap.json")
    return "gates_" + re.sub(r"[^A-Za-z0-9._-]+", "_", rel)


def _stage_figures(results: Results, figs: _Figures, out: Path) -> dict:
    """Effects, blocks and EDF of every judged stage; returns the stages' cells (for score vs params)."""
    fmts, cells_by_stage = figs.formats, {}
    for state in results.states:
        effects = effects_data(state) if state.status != "skipped" else None
        if effects is None:
            continue
        name, order = state.name, [c.choice for c in effects.choices]
        cells = cells_by_stage[name] = results.cells(state)
        figs.add(name, f"effects_{name}", render_effects(effects, out / f"effects_{name}", fmts))
        if cells:
            profile = block_profile_data(state, cells, order)
            figs.add(name, f"blocks_{name}", render_block_profile(profile, out / f"blocks_{name}", fmts))
        edf = edf_data(state, cells, order)
        if edf is not None:
            figs.add(name, f"edf_{name}", render_edf(edf, out / f"edf_{name}", fmts))
    return cells_by_stage


def plot_results(results_dir: str | Path, formats: Sequence[str] = ("png", "svg"), backbone=None
                 ) -> list[Path]:
    """Write every figure of ``results_dir`` into ``results_dir/figures/`` and link them from ``report.md``.

    Reads ``trials.sqlite`` read-only (never creates it) and every S3PET ``*.heatmap.json`` under the
    folder; a folder of S3PET searches only gets its gate figures. ``backbone`` (a name or loaded
    layers) overrides the experiment's for the layer map and for counting parameters a store lacks.
    """
    root = Path(results_dir)
    formats = tuple(f.strip().lstrip(".") for f in formats if f.strip())
    if not formats:
        raise DesignSpaceError("formats: give at least one, e.g. png,svg")
    figs, out = _Figures(root, formats), root / "figures"
    for path in find_gate_files(root):
        stem = _gate_stem(path, root)
        try:
            data = gate_heatmap_data(json.loads(path.read_text()), f"S3PET gate probabilities ({stem})")
        except DesignSpaceError as err:
            raise DesignSpaceError(f"{path}: {err}") from None
        figs.add("more", stem, render_gate_heatmap(data, out / stem, formats))
    store_path = root / "trials.sqlite"
    if not store_path.exists():
        if figs.files:
            return figs.paths()
        raise DesignSpaceError(f"{root}: no trials.sqlite and no S3PET *.heatmap.json; pass a results folder")
    with TrialStore(store_path, create=False, readonly=True) as store:
        records = store.records()
        for name, data in search_gate_heatmaps(records).items():
            figs.add("more", name, render_gate_heatmap(data, out / name, formats))
        try:
            experiment = load_experiment(root, store)
        except DesignSpaceError:
            if not figs.files:
                raise
            experiment = None  # the gates are what this folder holds; say why the rest is missing
            figs.note(f"stage figures: {store_path} holds an experiment that cannot be rebuilt")
        if experiment is None:
            if figs.files:
                return figs.paths()
            raise DesignSpaceError(f"{store_path}: holds no experiment and no S3PET search: nothing to plot")
        results = Results.read(store, experiment, records)
    bb = _Backbone(experiment, backbone, figs)
    cells_by_stage = _stage_figures(results, figs, out)
    final = Design.from_dict(results.final["design"]) if results.final else None
    if final is not None:
        plan = bb.plan(final)
        if plan is not None:
            figs.add("final", "layer_map", render_layer_map(layer_map_data(plan), out / "layer_map", formats))
        heat = strategy_heatmap_data(final, plan, pool=experiment.space.strategy_pool)
        figs.add("final", "strategies", render_strategy_heatmap(heat, out / "strategies", formats))
    needs_count = any(not c.params for cells in cells_by_stage.values() for c in cells)
    points = score_params_data(cells_by_stage, bb.count if needs_count and bb.info() else None, final)
    if points.points:
        figs.add("more", "score_vs_params", render_score_params(points, out / "score_vs_params", formats))
    report = write_report(experiment, figures=figs.linked([s.name for s in results.states] + ["final"]))
    report.write_text(figs.report(report.read_text()))
    return figs.paths()
