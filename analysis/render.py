"""Matplotlib renderers of the figure data in ``analysis.data`` (Agg canvas, no pyplot state).

Every ``render_*(data, path_stem, formats)`` writes ``<path_stem>.<format>`` for each format and
returns the paths. Stage names contain dots ('4-strategies.G1'), so suffixes are appended, never
swapped with ``Path.with_suffix``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FuncFormatter, NullFormatter
from matplotlib.transforms import blended_transform_factory

from .data import (
    COLUMN_TITLES,
    GateHeatmapData,
    LayerMapData,
    ScoreParamsData,
    StageData,
    StrategyHeatmapData,
    short_label,
)

GROUP_COLORS = ("#cfe2f3", "#fce5cd", "#d9ead3", "#e6d8ee", "#fff2cc", "#d0e0e3", "#f4cccc", "#ead1dc")
UNTUNED = "#eeeeee"
STRATEGY_COLORS = {"adapter": "tab:blue", "prefix": "tab:orange", "bitfit": "tab:green", "lora": "tab:red"}


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path_stem: str | Path, formats: Sequence[str]) -> list[Path]:
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for fmt in formats:
        path = stem.parent / f"{stem.name}.{fmt}"
        fig.savefig(path, dpi=150, bbox_inches="tight")
        out.append(path)
    return out


def line_styles(n: int) -> list[tuple[object, str]]:
    """(colour, line style) for ``n`` series that stay tellable apart past 10 (tab20's dark half first)."""
    if n <= 10:
        cmap = colormaps["tab10"]
        return [(cmap(i), "-") for i in range(n)]
    if n <= 20:
        cmap = colormaps["tab20"]
        order = list(range(0, 20, 2)) + list(range(1, 20, 2))
        return [(cmap(order[i]), "-" if i < 10 else "--") for i in range(n)]
    cmap = colormaps["turbo"]
    return [(cmap(0.05 + 0.9 * i / (n - 1)), ("-", "--", ":")[i % 3]) for i in range(n)]


def _stage_subtitle(data: StageData) -> str:
    lo, hi = data.margin_ci
    state = "provisional (stage not decided yet)" if data.provisional else f"confidence {data.confidence}"
    text = (f"best {short_label(data.best)}: margin {data.margin:+.2f} points (95 % CI {lo:+.2f} to {hi:+.2f}), "
            f"P(best) = {data.p_best:.2f}, {state}")
    if max(c.n for c in data.choices) == 1:
        # A bootstrap of one value has no spread: say where the CIs come from, or that there are none.
        text += (f"\none design per choice: CIs from the measured per-design noise (σ = {data.noise_sd:.2f} points)"
                 if data.noise_sd else "\none design per choice and no noise estimate: the ranking is not tested")
    return text


# --- 1. stage figures ------------------------------------------------------------------------------
def render_edf(data: StageData, path_stem: str | Path, formats: Sequence[str] = ("png",)) -> list[Path]:
    """Empirical distribution of design scores, one step line per choice (the paper's figure)."""
    fig = _figure(9.0, 4.8)
    ax = fig.add_subplot()
    xs = [x for c in data.choices for x in c.scores]
    lo, hi = min(xs), max(xs)
    pad = 0.04 * (hi - lo) or 0.5
    for c, (color, ls) in zip(data.choices, line_styles(len(data.choices)), strict=True):
        ax.step([lo - pad, *c.scores, hi + pad], [0.0, *c.fractions, 1.0], where="post", color=color, ls=ls,
                lw=1.8, label=f"{c.label}  (n={c.n}, mean {c.mean:.1f})")
        ax.plot(c.scores, c.fractions, "o", color=color, ms=3.5)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(data.x_label)
    ax.set_ylabel("fraction of designs scoring ≤ x")
    ax.grid(alpha=0.3)
    ax.set_title(f"Stage {data.stage}: score distribution per {data.component} choice\n{_stage_subtitle(data)}",
                 fontsize=10)
    legend = ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False,
                       title=f"{data.component} (best first)", title_fontsize=8.5)
    legend.get_texts()[0].set_fontweight("bold")
    return _save(fig, path_stem, formats)


def render_ci(data: StageData, path_stem: str | Path, formats: Sequence[str] = ("png",)) -> list[Path]:
    """Design scores per choice (strip, box when n >= 4) with the mean and its 95 % bootstrap CI."""
    n = len(data.choices)
    fig = _figure(9.0, max(2.8, 0.38 * n + 1.8))
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    ys = np.arange(n)[::-1]  # best on top
    right = blended_transform_factory(ax.transAxes, ax.transData)
    for c, y, (color, _) in zip(data.choices, ys, line_styles(n), strict=True):
        if c.n >= 4:
            q1, med, q3 = np.percentile(c.scores, [25, 50, 75])
            ax.add_patch(Rectangle((q1, y - 0.25), q3 - q1, 0.5, fc="none", ec="0.55", lw=1, zorder=2))
            ax.plot([med, med], [y - 0.25, y + 0.25], color="0.55", lw=1, zorder=2)
            ax.plot([min(c.scores), q1], [y, y], color="0.7", lw=1, zorder=1)
            ax.plot([q3, max(c.scores)], [y, y], color="0.7", lw=1, zorder=1)
        # Designs just above the line and the mean just below, so the CI bar never hides a design.
        ax.scatter(c.scores, y + 0.1 + rng.uniform(-0.08, 0.08, len(c.scores)), color=color, s=22, alpha=0.9,
                   edgecolor="0.3", lw=0.3, zorder=3)
        ax.errorbar(c.mean, y - 0.14, xerr=[[c.mean - c.ci[0]], [c.ci[1] - c.mean]], fmt="D", color="black", ms=5,
                    capsize=4, lw=1.4, zorder=4)
        p = "best" if c is data.choices[0] else ("p n/a" if c.p_vs_best is None else f"p = {c.p_vs_best:.3f}")
        ax.text(1.01, y, f"n={c.n}  {p}", transform=right, va="center", fontsize=8)
    ax.set_yticks(ys, [c.label for c in data.choices], fontsize=8.5)
    ax.get_yticklabels()[0].set_fontweight("bold")
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_xlabel(data.x_label)
    ax.set_ylabel(data.component)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"Stage {data.stage}: mean score per choice with 95 % bootstrap CI\n{_stage_subtitle(data)}",
                 fontsize=10)
    handles = [
        ax.scatter([], [], color="0.4", s=20, label="one design"),
        ax.errorbar([], [], xerr=[], fmt="D", color="black", ms=5, capsize=4, label="mean, 95 % CI"),
    ]
    if any(c.n >= 4 for c in data.choices):
        handles.append(Patch(fc="none", ec="0.55", label="quartiles"))
    axes_height = fig.get_figheight() * (fig.subplotpars.top - fig.subplotpars.bottom)
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.55 / axes_height), ncol=3,
              fontsize=8, frameon=False)
    return _save(fig, path_stem, formats)


# --- 2. layer map ------------------------------------------------------------------------------------
def render_layer_map(data: LayerMapData, path_stem: str | Path, formats: Sequence[str] = ("png",)) -> list[Path]:
    """Layers (rows) x roles (columns), strategies and sizes in the cells, groups shaded and labelled."""
    n_rows, n_cols = data.n_layers, len(data.columns)
    lines = max([1] + [c.count("\n") + 1 for row in data.cells for c in row])
    row_h = 0.28 + 0.2 * lines
    fig = _figure(1.0 * n_cols + 2.6, row_h * n_rows + 1.6)
    ax = fig.add_subplot()
    for layer in range(n_rows):
        y = n_rows - 1 - layer  # layer 0 at the top
        g = data.groups[layer]
        face = GROUP_COLORS[(g - 1) % len(GROUP_COLORS)] if data.tuned[layer] else UNTUNED
        for j, text in enumerate(data.cells[layer]):
            ax.add_patch(Rectangle((j, y), 1, 1, fc=face, ec="white", lw=1.5))
            if text:
                ax.text(j + 0.5, y + 0.5, text, ha="center", va="center", fontsize=8, family="monospace")
        ax.text(n_cols + 0.1, y + 0.5, f"{data.layer_params[layer]:,}" if data.layer_params[layer] else "-",
                ha="left", va="center", fontsize=8)
    for layer in range(n_rows):
        ax.text(-0.08, n_rows - layer - 0.5, f"layer {layer}", ha="right", va="center", fontsize=8.5)
    for g, first, last in data.group_spans():
        top, bottom = n_rows - first, n_rows - 1 - last
        tuned = data.tuned[first]
        ax.plot([-0.72, -0.72], [bottom + 0.08, top - 0.08], color="0.3", lw=2, clip_on=False)
        ax.text(-0.8, (top + bottom) / 2, f"G{g}" if tuned else f"G{g}\n(not\ntuned)", ha="right", va="center",
                fontsize=9.5 if tuned else 7.5, fontweight="bold" if tuned else "normal", clip_on=False)
        if bottom > 0:
            ax.axhline(bottom, color="0.3", lw=1.2)
    ax.text(n_cols + 0.1, n_rows + 0.1, "params", ha="left", va="bottom", fontsize=8, style="italic")
    ax.set_xlim(0, n_cols)
    ax.set_ylim(0, n_rows)
    ax.set_xticks(np.arange(n_cols) + 0.5, [COLUMN_TITLES.get(c, c) for c in data.columns], fontsize=8.5)
    ax.xaxis.tick_top()
    ax.set_yticks([])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(data.title, fontsize=10, pad=28)
    ax.text(n_cols / 2, -0.12, "A = adapter (b = bottleneck), L = LoRA (r = rank), P = prefix (len = length), "
            "B = BitFit", ha="center", va="top", fontsize=8, color="0.3")
    return _save(fig, path_stem, formats)


# --- 3. strategies per group -----------------------------------------------------------------------
def render_strategy_heatmap(data: StrategyHeatmapData, path_stem: str | Path,
                            formats: Sequence[str] = ("png",)) -> list[Path]:
    n_g, n_s = len(data.groups), len(data.strategies)
    fig = _figure(1.4 * n_s + 2.2, 0.6 * n_g + 1.5)
    ax = fig.add_subplot()
    for i in range(n_g):
        y = n_g - 1 - i
        for j, s in enumerate(data.strategies):
            if not data.tuned[i]:
                fc, text = UNTUNED, ""
            elif data.used[i][j]:
                fc = STRATEGY_COLORS.get(s, "tab:purple")
                text = f"{data.params[i][j]:,}\nparams" if data.params else "used"
            else:
                fc, text = "white", ""
            ax.add_patch(Rectangle((j, y), 1, 1, fc=fc, ec="0.8", lw=1, alpha=0.75 if data.used[i][j] else 1))
            if text:
                ax.text(j + 0.5, y + 0.5, text, ha="center", va="center", fontsize=8, color="white", fontweight="bold")
        if not data.tuned[i]:
            ax.text(n_s / 2, y + 0.5, "group not tuned", ha="center", va="center", fontsize=8, color="0.4")
    ax.set_xlim(0, n_s)
    ax.set_ylim(0, n_g)
    ax.set_xticks(np.arange(n_s) + 0.5, data.strategies)
    ax.xaxis.tick_top()
    labels = [f"{g}\n{layers}" if layers else g for g, layers in zip(data.groups, data.group_layers, strict=True)]
    ax.set_yticks(np.arange(n_g) + 0.5, labels[::-1], fontsize=8.5)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(data.title, fontsize=10, pad=22)
    return _save(fig, path_stem, formats)


# --- 4. score against parameters ------------------------------------------------------------------
def render_score_params(data: ScoreParamsData, path_stem: str | Path,
                        formats: Sequence[str] = ("png",)) -> list[Path]:
    fig = _figure(8.5, 4.6)
    ax = fig.add_subplot()
    for stage, (color, _) in zip(data.stages, line_styles(len(data.stages)), strict=True):
        pts = [p for p in data.points if p.stage == stage]
        ax.scatter([p.params for p in pts], [p.score for p in pts], color=color, s=26, alpha=0.8,
                   edgecolor="white", lw=0.5, label=f"{stage} ({len(pts)} designs)")
    final = [p for p in data.points if p.design_id == data.final_design_id]
    if final:
        ax.scatter([p.params for p in final], [p.score for p in final], marker="*", s=220, fc="none", ec="black",
                   lw=1.2, label="discovered design", zorder=5)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(_count))
    ax.xaxis.set_minor_formatter(FuncFormatter(_count) if np.log10(1 + data.spread) < 1.5 else NullFormatter())
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


def _count(v: float, _pos=None) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:.4g}{unit}"
    return f"{v:.3g}"


# --- 5. S3PET gates ---------------------------------------------------------------------------------
def render_gate_heatmap(data: GateHeatmapData, path_stem: str | Path,
                        formats: Sequence[str] = ("png",)) -> list[Path]:
    n_t, n_l = len(data.types), len(data.layers)
    fig = _figure(max(5.0, 0.55 * n_l + 2.8), max(2.4, 0.42 * n_t + 1.4))
    ax = fig.add_subplot()
    p = np.asarray(data.p)
    im = ax.imshow(p, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    if p.size <= 400:
        for (i, j), v in np.ndenumerate(p):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
    ax.set_xticks(range(n_l), data.layers, fontsize=8)
    ax.set_yticks(range(n_t), data.types, fontsize=8)
    ax.set_xlabel("layer")
    ax.set_ylabel("module type")
    ax.set_title(data.title, fontsize=10)
    fig.colorbar(im, ax=ax, label="gate probability", fraction=0.05, pad=0.02)
    return _save(fig, path_stem, formats)
