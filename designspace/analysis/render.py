"""Matplotlib renderers of the figure data in ``analysis.data`` (Agg canvas, no pyplot state).

Every ``render_*(data, path_stem, formats)`` writes ``<path_stem>.<format>`` for each format and
returns the paths. Stage names contain dots ('4-strategies.G1'), so suffixes are appended, never
swapped with ``Path.with_suffix``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FuncFormatter, NullFormatter
from matplotlib.transforms import blended_transform_factory

from .data import (
    BlockProfileData,
    EdfData,
    EffectsData,
    GateHeatmapData,
    LayerMapData,
    PairedData,
    ScoreParamsData,
    StrategyHeatmapData,
)

GROUP_COLORS = ("#cfe2f3", "#fce5cd", "#d9ead3", "#e6d8ee", "#fff2cc", "#d0e0e3", "#f4cccc", "#ead1dc")
UNTUNED = "#eeeeee"
#: How each status of a choice is drawn in the effects figure: (colour, marker, legend text).
STATUS_STYLE = {
    "best": ("tab:green", "D", "best: every other choice shown worse"),
    "tie": ("tab:orange", "o", "tie: within the margin of the best of the others"),
    "open": ("tab:blue", "o", "still in the race (not separated)"),
    "eliminated": ("0.55", "X", "shown worse than the best (round it fell)"),
}
Formats = Sequence[str]


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path_stem: str | Path, formats: Formats) -> list[Path]:
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for fmt in formats:
        path = stem.parent / f"{stem.name}.{fmt}"
        # Same data, same bytes: no date in SVG metadata, element ids salted by the file's name.
        with matplotlib.rc_context({"svg.hashsalt": stem.name}):
            fig.savefig(path, dpi=150, bbox_inches="tight", metadata={"Date": None} if fmt in ("svg", "pdf") else None)
        out.append(path)
    return out


def line_styles(n: int) -> list[tuple[object, str]]:
    """(colour, line style) for ``n`` series that stay tellable apart past 10 (tab20's dark half first)."""
    if n <= 10:
        return [(colormaps["tab10"](i), "-") for i in range(n)]
    if n <= 20:
        order = list(range(0, 20, 2)) + list(range(1, 20, 2))
        return [(colormaps["tab20"](order[i]), "-" if i < 10 else "--") for i in range(n)]
    return [(colormaps["turbo"](0.05 + 0.9 * i / (n - 1)), ("-", "--", ":")[i % 3]) for i in range(n)]


def _wrap(text: str, width: int = 110) -> str:
    return "\n".join(textwrap.wrap(text, width))


# --- 1. a stage: effects and simultaneous intervals --------------------------------------------------
def render_effects(data: EffectsData, path_stem: str | Path, formats: Formats = ("png",)) -> list[Path]:
    """Each choice's difference to the best of the others with its simultaneous interval."""
    n = len(data.choices)
    fig = _figure(9.0, max(2.8, 0.38 * n + 2.2))
    ax = fig.add_subplot()
    ys = np.arange(n)[::-1]  # largest difference on top
    right = blended_transform_factory(ax.transAxes, ax.transData)
    if data.delta > 0:
        ax.axvspan(-data.delta, 0, color="tab:orange", alpha=0.12, lw=0)
    ax.axvline(0, color="0.3", lw=1)
    for c, y in zip(data.choices, ys, strict=True):
        color, marker, _ = STATUS_STYLE[c.status]
        if c.lower is not None:
            ax.plot([c.lower, c.upper], [y, y], color=color, lw=2.2, solid_capstyle="butt")
            ax.plot([c.lower, c.upper], [y, y], "|", color=color, ms=9)
        if c.diff is not None:
            ax.plot(c.diff, y, marker, color=color, ms=7, mec="black", mew=0.6, zorder=3)
        effect = "effect n/a" if c.effect is None else f"effect {c.effect:+.2f}"
        out = f", out at round {c.eliminated_round}" if c.eliminated_round else ""
        ax.text(1.01, y, f"n={c.n}, {effect}{out}", transform=right, va="center", fontsize=8,
                color="0.35" if c.eliminated_round else "black")
    ax.set_yticks(ys, [c.label for c in data.choices], fontsize=8.5)
    for tick, c in zip(ax.get_yticklabels(), data.choices, strict=True):
        tick.set_fontweight("bold" if c.choice == data.best else "normal")
        tick.set_color("0.45" if c.eliminated_round else "black")
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_xlabel(data.x_label)
    ax.set_ylabel(data.component)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"Stage {data.stage} ({data.status}, round {data.round_index}/{data.max_rounds}): "
                 f"{data.confidence} simultaneous intervals\n{_wrap(data.meaning)}",
                 fontsize=9.5)
    shown = dict.fromkeys(c.status for c in data.choices)
    handles = [Line2D([], [], color=STATUS_STYLE[s][0], marker=STATUS_STYLE[s][1], lw=2.2, mec="black",
                      label=STATUS_STYLE[s][2]) for s in shown]
    if data.delta > 0:
        handles.append(Patch(color="tab:orange", alpha=0.12, label=f"tie margin ({data.delta:g} points)"))
    axes_height = fig.get_figheight() * (fig.subplotpars.top - fig.subplotpars.bottom)
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.5 / axes_height), ncol=2,
              fontsize=8, frameon=False)
    return _save(fig, path_stem, formats)


# --- 2. a stage's blocks ----------------------------------------------------------------------------
def render_block_profile(data: BlockProfileData, path_stem: str | Path, formats: Formats = ("png",)
                         ) -> list[Path]:
    """One line per block across the choices: parallel lines mean the choice effect is consistent."""
    k = len(data.choices)
    fig = _figure(max(6.0, 0.55 * k + 3.5), 4.8)
    ax = fig.add_subplot()
    rounds = sorted({b.round for b in data.blocks})
    colors = dict(zip(rounds, (c for c, _ in line_styles(len(rounds))), strict=True))
    xs = np.arange(k)
    for b in data.blocks:
        y = np.array([np.nan if s is None else s for s in b.scores])  # NaN breaks the line: no cell there
        ax.plot(xs, y, "-o", color=colors[b.round], lw=1, ms=3.5, alpha=0.75)
    labels = [f"{lab}\n(out r{data.eliminated[c]})" if c in data.eliminated else lab
              for c, lab in zip(data.choices, data.labels, strict=True)]
    ax.set_xticks(xs, labels, fontsize=8, rotation=45 if k > 8 else 0, ha="right" if k > 8 else "center")
    for tick, c in zip(ax.get_xticklabels(), data.choices, strict=True):
        tick.set_color("0.45" if c in data.eliminated else "black")
    ax.set_ylabel(data.y_label)
    ax.set_xlabel(f"{data.component} (order of the effects figure)")
    ax.grid(alpha=0.3)
    ax.set_title(f"Stage {data.stage}: each block (one base design, one seed) across the choices\n"
                 "choices are compared within blocks; the spread between blocks cancels", fontsize=9.5)
    counts = {r: sum(b.round == r for b in data.blocks) for r in rounds}
    handles = [Line2D([], [], color=colors[r], marker="o", label=f"round {r} ({counts[r]} blocks)")
               for r in rounds]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _save(fig, path_stem, formats)


# --- 3. a stage's EDF -------------------------------------------------------------------------------
def render_edf(data: EdfData, path_stem: str | Path, formats: Formats = ("png",)) -> list[Path]:
    """Empirical distribution of design scores, one step line per choice (the paper's figure)."""
    fig = _figure(9.0, 4.8)
    ax = fig.add_subplot()
    xs = [x for s in data.series for x in s.scores]
    lo, hi = min(xs), max(xs)
    pad = 0.04 * (hi - lo) or 0.5
    for s, (color, ls) in zip(data.series, line_styles(len(data.series)), strict=True):
        ax.step([lo - pad, *s.scores, hi + pad], [0.0, *s.fractions, 1.0], where="post", color=color, ls=ls,
                lw=1.8, label=f"{s.label}  (n={s.n}, mean {s.mean:.1f})")
        ax.plot(s.scores, s.fractions, "o", color=color, ms=3.5)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(data.x_label)
    ax.set_ylabel("fraction of designs scoring ≤ x")
    ax.grid(alpha=0.3)
    ax.set_title(f"Stage {data.stage}: score distribution per {data.component} choice\n"
                 "raw design scores: the spread between bases is in them (decisions use paired differences)",
                 fontsize=9.5)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False,
              title=f"{data.component} (effects order)", title_fontsize=8.5)
    return _save(fig, path_stem, formats)


# --- 4. layer map ------------------------------------------------------------------------------------
def render_layer_map(data: LayerMapData, path_stem: str | Path, formats: Formats = ("png",)) -> list[Path]:
    """Layers (rows) x roles (columns), strategies and sizes in the cells, groups shaded and labelled."""
    n_rows, n_cols = data.n_layers, max(1, len(data.columns))
    lines = max([1] + [c.count("\n") + 1 for row in data.cells for c in row])
    fig = _figure(1.0 * n_cols + 2.6, (0.28 + 0.2 * lines) * n_rows + 1.6)
    ax = fig.add_subplot()
    for layer in range(n_rows):
        y = n_rows - 1 - layer  # layer 0 at the top
        face = GROUP_COLORS[(data.groups[layer] - 1) % len(GROUP_COLORS)] if data.tuned[layer] else UNTUNED
        for j in range(n_cols):
            ax.add_patch(Rectangle((j, y), 1, 1, fc=face, ec="white", lw=1.5))
            text = data.cells[layer][j] if data.columns else ""
            if text:
                ax.text(j + 0.5, y + 0.5, text, ha="center", va="center", fontsize=8, family="monospace")
        ax.text(n_cols + 0.1, y + 0.5, f"{data.layer_params[layer]:,}" if data.layer_params[layer] else "-",
                ha="left", va="center", fontsize=8)
        ax.text(-0.08, y + 0.5, f"layer {layer}", ha="right", va="center", fontsize=8.5)
    for g, first, last in data.group_spans():
        top, bottom = n_rows - first, n_rows - 1 - last
        tuned = data.tuned[first]
        ax.plot([-0.72, -0.72], [bottom + 0.08, top - 0.08], color="0.3", lw=2, clip_on=False)
        ax.text(-0.8, (top + bottom) / 2, f"G{g}" if tuned else f"G{g}\n(not\ntuned)", ha="right",
                va="center", fontsize=9.5 if tuned else 7.5, fontweight="bold" if tuned else "normal",
                clip_on=False)
        if bottom > 0:
            ax.axhline(bottom, color="0.3", lw=1.2)
    ax.text(n_cols + 0.1, n_rows + 0.1, "params", ha="left", va="bottom", fontsize=8, style="italic")
    ax.set_xlim(0, n_cols)
    ax.set_ylim(0, n_rows)
    ax.set_xticks(np.arange(len(data.columns)) + 0.5, data.columns, fontsize=8.5)
    ax.xaxis.tick_top()
    ax.set_yticks([])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(data.title, fontsize=10, pad=28)
    ax.text(n_cols / 2, -0.12, _wrap(", ".join(data.legend), 100), ha="center", va="top", fontsize=8,
            color="0.3")
    return _save(fig, path_stem, formats)


# --- 5. strategies per group -----------------------------------------------------------------------
def render_strategy_heatmap(data: StrategyHeatmapData, path_stem: str | Path, formats: Formats = ("png",)
                            ) -> list[Path]:
    n_g, n_s = len(data.groups), len(data.strategies)
    fig = _figure(1.4 * n_s + 2.2, 0.6 * n_g + 1.5)
    ax = fig.add_subplot()
    for i in range(n_g):
        y = n_g - 1 - i
        for j in range(n_s):
            used = data.used[i][j]
            fc = UNTUNED if not data.tuned[i] else data.colors[j] if used else "white"
            ax.add_patch(Rectangle((j, y), 1, 1, fc=fc, ec="0.8", lw=1, alpha=0.8 if used else 1))
            if used:
                text = f"{data.params[i][j]:,}\nparams" if data.params else "used"
                ax.text(j + 0.5, y + 0.5, text, ha="center", va="center", fontsize=8, color="white",
                        fontweight="bold")
        if not data.tuned[i]:
            ax.text(n_s / 2, y + 0.5, "group not tuned", ha="center", va="center", fontsize=8, color="0.4")
    ax.set_xlim(0, n_s)
    ax.set_ylim(0, n_g)
    columns = [f"{s} ({lab})" for s, lab in zip(data.strategies, data.labels, strict=True)]
    ax.set_xticks(np.arange(n_s) + 0.5, columns)
    ax.xaxis.tick_top()
    labels = [f"{g}\n{span}" if span else g for g, span in zip(data.groups, data.group_layers, strict=True)]
    ax.set_yticks(np.arange(n_g) + 0.5, labels[::-1], fontsize=8.5)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(data.title, fontsize=10, pad=22)
    return _save(fig, path_stem, formats)


# --- 6. score against parameters ------------------------------------------------------------------
def _count(v: float, _pos=None) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:.4g}{unit}"
    return f"{v:.3g}"


def render_score_params(data: ScoreParamsData, path_stem: str | Path, formats: Formats = ("png",)
                        ) -> list[Path]:
    fig = _figure(8.5, 4.6)
    ax = fig.add_subplot()
    for stage, (color, _) in zip(data.stages, line_styles(len(data.stages)), strict=True):
        pts = [p for p in data.points if p.stage == stage]
        ax.scatter([p.params for p in pts], [p.score for p in pts], color=color, s=26, alpha=0.8,
                   edgecolor="white", lw=0.5, label=f"{stage} ({len(pts)} designs)")
    final = [p for p in data.points if p.design_id == data.final_design_id]
    if final:
        ax.scatter([p.params for p in final], [p.score for p in final], marker="*", s=220, fc="none",
                   ec="black", lw=1.2, label="discovered design", zorder=5)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(_count))
    ax.xaxis.set_minor_formatter(FuncFormatter(_count) if data.spread < 2 else NullFormatter())
    ax.set_xlabel(data.x_label)
    ax.set_ylabel(data.y_label)
    ax.grid(alpha=0.3, which="both")
    title = "Design score against parameter count, by stage"
    if data.spread < 0.05:
        title += f"\nevery design fills the same budget: counts differ by {data.spread:.1%} at most"
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False, title="stage",
              title_fontsize=8.5)
    return _save(fig, path_stem, formats)


# --- 7. S3PET gates ---------------------------------------------------------------------------------
def render_gate_heatmap(data: GateHeatmapData, path_stem: str | Path, formats: Formats = ("png",)
                        ) -> list[Path]:
    """Gate probability per candidate kind@role (rows) and layer; chosen candidates framed, blanks grey."""
    n_r, n_l = len(data.rows), len(data.layers)
    fig = _figure(max(5.0, 0.55 * n_l + 3.2), max(2.4, 0.42 * n_r + 1.4))
    ax = fig.add_subplot()
    p = np.array([[np.nan if v is None else v for v in row] for row in data.p], dtype=float).reshape(n_r, n_l)
    cmap = colormaps["viridis"].with_extremes(bad="0.92")
    im = ax.imshow(np.ma.masked_invalid(p), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    for (i, j), v in np.ndenumerate(p):
        if data.chosen[i][j]:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=1.6))
        if np.isfinite(v) and p.size <= 400:
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if v < 0.6 else "black")
    ax.set_xticks(range(n_l), data.layers, fontsize=8)
    ax.set_yticks(range(n_r), data.rows, fontsize=8)
    ax.set_xlabel("layer")
    ax.set_ylabel("candidate (kind@role)")
    ax.set_title(_wrap(data.title, 80) + "\nred frame: kept in the structure; grey: no candidate",
                 fontsize=9.5)
    fig.colorbar(im, ax=ax, label="gate probability", fraction=0.05, pad=0.02)
    return _save(fig, path_stem, formats)


# --- paired differences of a final comparison --------------------------------------------------------
def render_paired(data: PairedData, path_stem: str | Path, formats: Formats = ("png",)) -> list[Path]:
    """One panel per column: ``ref - method`` with its paired interval per method; green where the
    interval is above 0, red where below, grey where it spans 0 (no difference shown)."""
    n, k = len(data.rows), len(data.columns)
    fig = _figure(2.6 * k + 1.8, max(2.4, 0.42 * n + 1.6))
    axes = fig.subplots(1, k, sharey=True, squeeze=False)[0]
    ys = np.arange(n)[::-1]
    for j, (ax, col) in enumerate(zip(axes, data.columns, strict=True)):
        ax.axvline(0, color="0.3", lw=1)
        for row, y in zip(data.rows, ys, strict=True):
            cell = row.cells[j]
            if cell is None:
                continue
            mean, lo, hi = cell
            color = "tab:green" if lo > 0 else "tab:red" if hi < 0 else "0.5"
            ax.plot([lo, hi], [y, y], color=color, lw=2.2, solid_capstyle="butt")
            ax.plot(mean, y, "o", color=color, mec="black", mew=0.6, ms=6, zorder=3)
        ax.set_title(col, fontsize=9.5)
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel(f"{data.ref} minus method (points)", fontsize=8)
    labels = [r.method + ("" if r.adjusted_p is None else f"\n(Holm p {r.adjusted_p:.3f})") for r in data.rows]
    axes[0].set_yticks(ys, labels, fontsize=8.5)
    axes[0].set_ylim(-0.6, n - 0.4)
    fig.suptitle(f"{data.title}: {data.level:.0%} paired t intervals over seeds (each for its own comparison; "
                 "Holm p: the last column as one family)", fontsize=9.5, y=1.04)
    return _save(fig, path_stem, formats)
