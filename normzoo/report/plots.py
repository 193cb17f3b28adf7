"""Matplotlib figures: accuracy curves with CI bands and critical-difference diagrams.

Figures are built as ``matplotlib.figure.Figure`` with an Agg canvas, so no backend is chosen
for the process and no display is needed; nothing is kept open after saving.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from normzoo.report.select import natural_key
from normzoo.stats import SIGNIFICANT, RankTestResult, nemenyi_cliques

CURVE_COLUMNS = ("panel", "line", "x", "mean", "low", "high")
# Identical curves (e.g. running and mix statistics of a batch-independent norm) must stay
# visible: each line gets its own marker and dash pattern, and later lines are drawn thinner.
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_DASHES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (3, 2)))


def format_p(p: float) -> str:
    """``= 0.0123`` style text for a p-value, ``< 0.0001`` below that (never a bare 0)."""
    if not np.isfinite(p):
        return "n/a"
    return "< 0.0001" if p < 1e-4 else f"= {p:.3g}"


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def _legend_label(label: str, width: int = 26) -> str:
    """A legend entry wrapped after commas of its options so the legend fits beside the axes."""
    return textwrap.fill(label.replace(",", ", "), width, break_long_words=True).replace(", ", ",")


def plot_curves(
    curves: pd.DataFrame,
    path: Path,
    xlabel: str,
    title: str,
    ylabel: str = "accuracy (mean ± 95% CI over seeds)",
    log2_x: bool = False,
    bounds: tuple[float, float] | None = (0.0, 1.0),
) -> Path:
    """One panel per ``panel``, one line per ``line``, a band from ``low`` to ``high``.

    Bands are clipped to ``bounds`` (accuracy lies in [0, 1]); panels and x values are
    ordered numerically.
    """
    missing = [c for c in CURVE_COLUMNS if c not in curves.columns]
    if missing:
        raise ValueError(f"curves lack columns {missing}; expected {list(CURVE_COLUMNS)}")
    panels = sorted(dict.fromkeys(curves["panel"]), key=natural_key)
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    title = textwrap.fill(title, 95)
    title_height = 0.3 * (title.count("\n") + 1) + 0.35
    lines = sorted(curves["line"].unique(), key=natural_key)
    names = {line: _legend_label(str(line)) for line in lines}
    longest = max((len(row) for name in names.values() for row in name.splitlines()), default=8)
    legend_width = max(1.9, 0.075 * longest + 0.75)  # inches, at the legend's 9 pt font
    width, height = 4.2 * columns + legend_width, 3.3 * rows + 0.6 + title_height
    figure = _figure(width, height)
    axes = figure.subplots(rows, columns, squeeze=False, sharey=True)
    # A fixed layout: constrained layout costs seconds per figure on busy machines.
    figure.subplots_adjust(
        left=0.75 / width,
        right=1 - legend_width / width,
        bottom=0.55 / height,
        top=1 - (title_height + 0.3) / height,
        wspace=0.12,
        hspace=0.55,
    )
    palette = colormaps["tab10"]
    for ax, panel in zip(axes.flat, panels, strict=False):
        data = curves[curves["panel"] == panel]
        for i, line in enumerate(lines):
            d = data[data["line"] == line].sort_values("x")
            if d.empty:
                continue
            low, high = d["low"].to_numpy(float), d["high"].to_numpy(float)
            if bounds is not None:
                low, high = np.clip(low, *bounds), np.clip(high, *bounds)
            color = palette(i % 10)
            ax.plot(
                d["x"],
                d["mean"],
                color=color,
                label=names[line],
                marker=_MARKERS[i % len(_MARKERS)],
                ms=6 - 0.6 * (i % 4),
                mfc="none",
                linestyle=_DASHES[i % len(_DASHES)],
                lw=2.2 - 0.3 * (i % 4),
            )
            ax.fill_between(d["x"], low, high, color=color, alpha=0.15, lw=0)
        if log2_x:
            ax.set_xscale("log", base=2)
            ticks = sorted(data["x"].unique())
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        if str(panel):
            ax.set_title(textwrap.fill(str(panel), 45), fontsize=9)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=9)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="center right", fontsize=9, frameon=False)
    figure.suptitle(title, fontsize=11, y=1 - 0.15 / height, va="top")
    figure.savefig(path, dpi=100)
    return path


def plot_critical_difference(result: RankTestResult, path: Path, title: str = "") -> Path:
    """Critical-difference diagram (Demšar 2006, Fig. 1): average ranks, CD bar, cliques joined.

    Cliques (methods not significantly different) are drawn only when the rank test supports
    a verdict; descriptive ranks get no bars and no verdict in the title.
    """
    k = result.k
    order = np.argsort(result.average_ranks, kind="stable")
    names = [result.names[i] for i in order]
    ranks = [result.average_ranks[i] for i in order]
    supported = result.verdict == SIGNIFICANT and result.posthoc
    cliques = nemenyi_cliques(result) if supported else []
    half = math.ceil(k / 2)
    depth = 0.45 * max(half, k - half) + 0.3
    height = 1.9 + 0.9 * depth
    texts = [
        f" {name} ({rank:.2f}) " if i < half else f" ({rank:.2f}) {name} "
        for i, (name, rank) in enumerate(zip(names, ranks, strict=True))
    ]
    # Physical sizes (inches): a fixed width per rank, and margins that fit the longest label
    # on each side (9 pt text is about 0.075 in per character), so no label is cut off.
    per_rank, per_char = 0.75, 0.075
    right_in = per_char * max(len(t) for t in texts[:half]) + 0.15  # best half, on the right
    left_in = per_char * max((len(t) for t in texts[half:]), default=0) + 0.15
    width = per_rank * (k - 1 + 0.8) + left_in + right_in
    figure = _figure(max(width, 6.0), height)
    ax = figure.subplots()
    # rank 1 (best) on the right, as in Demšar's figures
    ax.set_xlim(k + 0.4 + left_in / per_rank, 0.6 - right_in / per_rank)
    ax.set_ylim(-depth, 1.65)
    ax.axis("off")
    ax.hlines(0, 1, k, color="black", lw=1)
    for r in range(1, k + 1):
        ax.vlines(r, 0, 0.12, color="black", lw=1)
        ax.text(r, 0.22, str(r), ha="center", va="bottom", fontsize=9)
    cd = result.critical_difference
    ax.hlines(1.2, 1, 1 + cd, color="black", lw=2)
    ax.text(1 + cd / 2, 1.3, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=9)
    for i, (text, rank) in enumerate(zip(texts, ranks, strict=True)):
        best_side = i < half
        level = -(i + 1) * 0.45 if best_side else -(k - i) * 0.45
        x_text = 0.6 if best_side else k + 0.4
        ax.plot([rank, rank, x_text], [0, level, level], color="black", lw=0.8)
        ax.text(
            x_text,
            level,
            text,
            ha="left" if best_side else "right",
            va="center",
            fontsize=9,
        )
    for j, clique in enumerate(cliques):
        clique_ranks = [ranks[names.index(name)] for name in clique]
        y = -0.2 - 0.18 * j
        ax.hlines(y, min(clique_ranks) - 0.03, max(clique_ranks) + 0.03, color="red", lw=3)
    if result.independent_blocks:
        subtitle = (
            f"{result.test}: p {format_p(result.pvalue)}, N = {result.n} blocks; "
            f"{result.correction} CD at alpha = {result.alpha}"
            + ("; red bars join norms within CD" if cliques else "")
        )
    else:
        subtitle = (
            f"average ranks over N = {result.n} blocks that share trained models "
            "(descriptive: no test)"
        )
    ax.set_title(f"{title}\n{subtitle}" if title else subtitle, fontsize=9)
    figure.subplots_adjust(left=0.0, right=1.0, bottom=0.03, top=1 - 0.7 / height)
    figure.savefig(path, dpi=100)
    return path
