"""Matplotlib figures for reports: accuracy curves with CI bands and critical-difference diagrams.

Figures are written with the Agg backend (no display needed) and closed after saving.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from normzoo.stats import RankTestResult, nemenyi_cliques  # noqa: E402

CURVE_COLUMNS = ("panel", "line", "x", "mean", "low", "high")


def format_p(p: float) -> str:
    """``= 0.0123`` style text for a p-value, ``< 0.0001`` below that (never a bare 0)."""
    return "< 0.0001" if p < 1e-4 else f"= {p:.3g}"


def plot_curves(
    curves: pd.DataFrame,
    path: Path,
    xlabel: str,
    title: str,
    ylabel: str = "accuracy (mean ± 95% CI over seeds)",
    log2_x: bool = False,
) -> Path:
    """One panel per ``panel``, one line per ``line``, a shaded band from ``low`` to ``high``."""
    missing = [c for c in CURVE_COLUMNS if c not in curves.columns]
    if missing:
        raise ValueError(f"curves lack columns {missing}; expected {list(CURVE_COLUMNS)}")
    panels = list(dict.fromkeys(curves["panel"]))
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    width, height = 4.2 * columns + 1.9, 3.2 * rows + 0.7
    fig, axes = plt.subplots(rows, columns, figsize=(width, height), squeeze=False, sharey=True)
    # A fixed layout: constrained layout costs seconds per figure on busy machines.
    fig.subplots_adjust(
        left=0.75 / width,
        right=1 - 1.9 / width,
        bottom=0.55 / height,
        top=1 - 0.65 / height,
        wspace=0.12,
        hspace=0.45,
    )
    lines = sorted(curves["line"].unique(), key=str)
    colors = {line: plt.cm.tab10(i % 10) for i, line in enumerate(lines)}
    for ax, panel in zip(axes.flat, panels, strict=False):
        data = curves[curves["panel"] == panel]
        for line in lines:
            d = data[data["line"] == line].sort_values("x")
            if d.empty:
                continue
            ax.plot(d["x"], d["mean"], marker="o", ms=3, color=colors[line], label=str(line))
            ax.fill_between(d["x"], d["low"], d["high"], color=colors[line], alpha=0.18, lw=0)
        if log2_x:
            ax.set_xscale("log", base=2)
            ticks = sorted(data["x"].unique())
            ax.set_xticks(ticks, [str(int(t)) for t in ticks])
        if str(panel):
            ax.set_title(str(panel), fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=9)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_critical_difference(result: RankTestResult, path: Path, title: str = "") -> Path:
    """Critical-difference diagram (Demšar 2006, Fig. 1): average ranks, CD bar, cliques joined."""
    k = result.k
    order = np.argsort(result.average_ranks, kind="stable")
    names = [result.names[i] for i in order]
    ranks = [result.average_ranks[i] for i in order]
    cliques = nemenyi_cliques(result) if result.verdict == "significant" else [tuple(names)]
    half = math.ceil(k / 2)
    depth = 0.45 * max(half, k - half) + 0.3
    height = 1.5 + 0.9 * depth
    fig, ax = plt.subplots(figsize=(9.0, height))
    ax.set_xlim(k + 2.0, -1.0)  # rank 1 (best) on the right, as in Demšar's figures
    ax.set_ylim(-depth, 1.65)
    ax.axis("off")
    ax.hlines(0, 1, k, color="black", lw=1)
    for r in range(1, k + 1):
        ax.vlines(r, 0, 0.12, color="black", lw=1)
        ax.text(r, 0.22, str(r), ha="center", va="bottom", fontsize=9)
    cd = result.critical_difference
    ax.hlines(1.2, 1, 1 + cd, color="black", lw=2)
    ax.text(1 + cd / 2, 1.3, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=9)
    for i, (name, rank) in enumerate(zip(names, ranks, strict=True)):
        best_side = i < half
        level = -(i + 1) * 0.45 if best_side else -(k - i) * 0.45
        x_text = 0.6 if best_side else k + 0.4
        ax.plot([rank, rank, x_text], [0, level, level], color="black", lw=0.8)
        ax.text(
            x_text,
            level,
            f" {name} ({rank:.2f}) " if best_side else f" ({rank:.2f}) {name} ",
            ha="left" if best_side else "right",
            va="center",
            fontsize=9,
        )
    for j, clique in enumerate(cliques):
        clique_ranks = [ranks[names.index(name)] for name in clique]
        y = -0.2 - 0.18 * j
        ax.hlines(y, min(clique_ranks) - 0.03, max(clique_ranks) + 0.03, color="red", lw=3)
    subtitle = (
        f"{result.test}: p {format_p(result.pvalue)}, N = {result.n} blocks; "
        f"{result.correction} CD at alpha = {result.alpha} ({result.verdict})"
    )
    ax.set_title(f"{title}\n{subtitle}" if title else subtitle, fontsize=9)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.03, top=1 - 0.55 / height)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
