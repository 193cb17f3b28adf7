"""Tables: the headline (accuracy per norm and key condition), verdict summaries, markdown."""

from __future__ import annotations

import numpy as np
import pandas as pd

from normzoo import stats
from normzoo.report.select import (
    SETTING_KEYS,
    TRAIN_KEYS,
    default_test_slice,
    natural_key,
    prefer_stats_mode,
    summarize,
    varying,
)


def headline_conditions(ev: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(column name, rows) for the key test conditions the data has."""
    conditions = []
    clean = default_test_slice(ev)
    train_sizes = sorted(ev["train_batch_size"].unique())
    largest = train_sizes[-1]
    for size in train_sizes:
        conditions.append((f"clean, train bs {size}", clean[clean["train_batch_size"] == size]))
    at_largest = ev[ev["train_batch_size"] == largest]
    test_sizes = sorted(ev["test_batch_size"].unique())
    if len(test_sizes) > 1:
        small = at_largest[
            (at_largest["shift"] == "clean") & (at_largest["test_batch_size"] == test_sizes[0])
        ]
        small = small[small["test_composition"] == "iid"]
        conditions.append((f"clean, test bs {test_sizes[0]}", prefer_stats_mode(small)))
        # the test-time choice matters most for small test batches: one column per other mode
        for mode in sorted(set(small["stats_mode"]) - {"running"}):
            conditions.append(
                (f"clean, test bs {test_sizes[0]}, {mode} stats", prefer_stats_mode(small, mode))
            )
    shifted = at_largest[at_largest["shift"] != "clean"]
    shifted = shifted[shifted["test_batch_size"] == shifted["test_batch_size"].max()]
    shifted = shifted[shifted["test_composition"] == "iid"]
    if not shifted.empty:
        severity = shifted["severity"].max()
        worst = shifted[shifted["severity"] == severity]
        name = f"mean over corruptions (n={worst['shift'].nunique()}), severity {severity}"
        conditions.append((name, prefer_stats_mode(worst)))
        if "batch" in set(worst["stats_mode"]):
            conditions.append((f"{name}, batch stats", prefer_stats_mode(worst, "batch")))
    for composition in sorted(set(ev["test_composition"]) - {"iid"}):
        rows = at_largest[
            (at_largest["shift"] == "clean") & (at_largest["test_composition"] == composition)
        ]
        rows = rows[rows["test_batch_size"] == rows["test_batch_size"].max()]
        conditions.append((f"{composition} test batches", prefer_stats_mode(rows)))
        if "batch" in set(rows["stats_mode"]):
            conditions.append(
                (f"{composition} test batches, batch stats", prefer_stats_mode(rows, "batch"))
            )
    return [(name, rows) for name, rows in conditions if not rows.empty]


def headline(ev: pd.DataFrame) -> pd.DataFrame:
    """Norms x key conditions, cells ``mean ± 95% Student-t CI half-width`` over seeds."""
    if ev.empty:
        return pd.DataFrame()
    index = [*varying(ev, SETTING_KEYS), "method"]
    columns = {}
    for name, rows in headline_conditions(ev):
        summary = summarize(rows, index).set_index(index)
        half = summary["high"] - summary["mean"]
        cells = [
            f"{m:.3f} ± {h:.3f}" if np.isfinite(h) else f"{m:.3f} (n = 1, no CI)"
            for m, h in zip(summary["mean"], half, strict=True)
        ]
        columns[name] = pd.Series(cells, index=summary.index)
    table = pd.DataFrame(columns)
    seeds = ev.groupby(index)["seed"].nunique().rename("seeds")
    return table.join(seeds).fillna("–")


def verdict_summary(table: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Counts of verdicts per ``by``."""
    significant = table["verdict"] == stats.SIGNIFICANT
    flags = pd.DataFrame(
        {
            **{k: table[k] for k in by},
            "comparisons": 1,
            "a significantly better": significant & (table["mean_difference"] > 0),
            "a significantly worse": significant & (table["mean_difference"] < 0),
            "not significant": table["verdict"] == stats.NOT_SIGNIFICANT,
            "degenerate / insufficient": table["verdict"].isin(
                [stats.DEGENERATE, stats.INSUFFICIENT]
            ),
            "not tested (untrained)": table["verdict"] == stats.NOT_TESTED,
            "mean difference (avg)": table["mean_difference"],
        }
    )
    aggregations = {c: "sum" for c in flags.columns if c not in by}
    aggregations["mean difference (avg)"] = "mean"
    out = flags.groupby(by).agg(aggregations).reset_index()
    n_range = table.groupby(by)["n"].agg(
        lambda n: str(n.min()) if n.min() == n.max() else f"{n.min()}-{n.max()}"
    )
    return out.assign(**{"n (pairs)": n_range.to_numpy()})


def condition_columns(table: pd.DataFrame, keys: tuple[str, ...]) -> list[str]:
    """Condition columns that tell the rows apart (always the train batch size)."""
    shown = varying(table, keys)
    if "train_batch_size" not in shown and "train_batch_size" in table.columns:
        shown = ["train_batch_size", *shown]
    return [k for k in shown if k in table.columns]


def _format_p(p: float) -> str:
    return "–" if not np.isfinite(p) else ("< 0.0001" if p < 1e-4 else f"{p:.3g}")


def display(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Compact columns of a comparison table for markdown."""
    shown = table[[*keys, "a", "b", "n"]].copy()
    shown["mean diff [CI]"] = [
        f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}] ({level:.1%})"
        if np.isfinite(lo)
        else (f"{d:+.4f} [n/a]" if np.isfinite(d) else "n/a (no pair)")
        for d, lo, hi, level in zip(
            table["mean_difference"],
            table["ci_low"],
            table["ci_high"],
            table["ci_level"],
            strict=True,
        )
    ]
    shown["p (t)"] = table["pvalue"].map(_format_p)
    shown["p Holm"] = table["p_adjusted"].map(_format_p)
    shown["p sign-flip (Holm)"] = table["permutation_p_adjusted"].map(_format_p)
    shown["d_z"] = table["cohens_dz"].map(lambda v: "–" if not np.isfinite(v) else f"{v:.2f}")
    shown["seeds a > b"] = table["sign_proportion"].map(
        lambda v: "–" if not np.isfinite(v) else f"{v:.2f}"
    )
    if "mde" in table.columns:
        shown["MDE (80%)"] = table["mde"].map(lambda v: "–" if not np.isfinite(v) else f"{v:.3f}")
    if "seeds_collapsed" in table.columns and table["seeds_collapsed"].any():
        shown["seeds left out (collapsed)"] = table["seeds_collapsed"]
    shown["Wilcoxon"] = table["wilcoxon_verdict"]
    if (table["equivalence"] != "").any():
        shown["TOST"] = table["equivalence"]
    shown["verdict"] = table["verdict"]
    return shown


def train_keys(table: pd.DataFrame) -> list[str]:
    return condition_columns(table, TRAIN_KEYS)


def _cell(value: object) -> str:
    if isinstance(value, float | np.floating):
        return "–" if np.isnan(value) else f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame) -> str:
    """GitHub-flavoured markdown table of a DataFrame (no index)."""
    if frame.empty:
        return "(none)"
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = [
        "| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)
    ]
    return "\n".join([header, rule, *body])


def collapse_display(collapse: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Compact columns of the collapse comparisons for markdown."""
    shown = collapse[[k for k in keys if k in collapse.columns] + ["a", "b"]].copy()
    shown["collapsed a (seeds)"] = [
        f"{n} ({s})" if s else n
        for n, s in zip(collapse["collapsed_a"], collapse["collapsed_seeds_a"], strict=True)
    ]
    shown["collapsed b (seeds)"] = [
        f"{n} ({s})" if s else n
        for n, s in zip(collapse["collapsed_b"], collapse["collapsed_seeds_b"], strict=True)
    ]
    shown["p Fisher"] = collapse["collapse_pvalue"].map(_format_p)
    shown["p Holm"] = collapse["collapse_p_adjusted"].map(_format_p)
    shown["detectable rate vs 0% (80%)"] = collapse["collapse_detectable_rate"].map(
        lambda v: "none at this n" if not np.isfinite(v) else f"{v:.0%}"
    )
    shown["power 0% vs 50%"] = collapse["collapse_power_0_vs_50"].map("{:.0%}".format)
    shown["verdict"] = collapse["collapse_verdict"]
    return shown


def tuning_curves(tuning: pd.DataFrame) -> pd.DataFrame:
    """Validation accuracy vs learning rate (`plots.CURVE_COLUMNS`): one panel per train
    condition, one line per norm; the band is ± one SD over the tuning seeds (none with one)."""
    compositions = tuning["train_composition"].nunique() > 1
    sd = tuning["val_accuracy_sd"].fillna(0.0)
    return pd.DataFrame(
        {
            "panel": [
                f"train bs {b}" + (f", {c}" if compositions else "")
                for b, c in zip(
                    tuning["train_batch_size"], tuning["train_composition"], strict=True
                )
            ],
            "line": tuning["norm"],
            "x": tuning["lr"],
            "mean": tuning["val_accuracy"],
            "low": tuning["val_accuracy"] - sd,
            "high": tuning["val_accuracy"] + sd,
        }
    )


def tuning_pivot(tuning: pd.DataFrame) -> pd.DataFrame:
    """One row per (norm, train batch size, composition), one column per learning rate tried:
    ``validation (training) accuracy``, the selected rate in bold; blank where not tried."""
    frame = tuning.assign(
        cell=[
            f"{val:.3f} ({train:.3f})" if train == train else f"{val:.3f}"
            for val, train in zip(tuning["val_accuracy"], tuning["train_accuracy"], strict=True)
        ]
    )
    frame["cell"] = [
        f"**{c}**" if s else c for c, s in zip(frame["cell"], frame["selected"], strict=True)
    ]
    frame["lr"] = [f"lr {lr:g}" for lr in frame["lr"]]
    keys = ["norm", "train_batch_size", "train_composition"]
    table = frame.pivot(index=keys, columns="lr", values="cell").fillna("")
    order = sorted(table.columns, key=lambda c: float(c.split()[1]))
    return table[order].reset_index()


def calibration(ev: pd.DataFrame) -> pd.DataFrame:
    """Accuracy, NLL and expected calibration error per norm, stats mode and test condition.

    Mean over seeds on i.i.d. test batches at the largest train batch size; one row per
    (method, test batch size, stats mode, shift, severity). Empty when no evaluation recorded
    an ECE (stores older than the calibration columns).
    """
    if ev.empty or "ece" not in ev or pd.to_numeric(ev["ece"], errors="coerce").isna().all():
        return pd.DataFrame()
    rows = ev[ev["train_batch_size"] == ev["train_batch_size"].max()]
    if (rows["test_composition"] == "iid").any():
        rows = rows[rows["test_composition"] == "iid"]
    keys = ["method", "test_batch_size", "stats_mode", "shift", "severity"]
    rows = rows.assign(
        nll=pd.to_numeric(rows["loss"], errors="coerce"),
        ece=pd.to_numeric(rows["ece"], errors="coerce"),
    )
    table = (
        rows.groupby(keys, dropna=False)
        .agg(
            seeds=("seed", "nunique"),
            accuracy=("accuracy", "mean"),
            nll=("nll", "mean"),
            ece=("ece", "mean"),
        )
        .reset_index()
    )
    order = sorted(range(len(table)), key=lambda i: tuple(natural_key(table[k][i]) for k in keys))
    return table.iloc[order].reset_index(drop=True)
