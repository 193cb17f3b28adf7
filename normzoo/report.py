"""Benchmark report: markdown + PNG plots + significance tables from the results store's DataFrames.

Reads the ``runs`` and ``evaluations`` frames of the Results schema (see ``normzoo.bench.store``)
and writes ``report.md`` with figures; the statistics themselves live in :mod:`normzoo.stats`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from normzoo import plots, stats
from normzoo.report_tables import (
    compare_conditions,
    markdown_table,
    rank_across_conditions,
    significance_summary,
)

logger = logging.getLogger(__name__)

TRAIN_KEYS = ("experiment", "dataset", "backbone", "train_batch_size", "train_composition")
TEST_KEYS = ("test_batch_size", "stats_mode", "shift", "severity", "test_composition")
RUN_COLUMNS = ("run_key", "norm", "norm_options", "seed", "status", "error", *TRAIN_KEYS)
EVALUATION_COLUMNS = (
    "run_key",
    "norm",
    "norm_options",
    "seed",
    "accuracy",
    *TRAIN_KEYS,
    *TEST_KEYS,
)
SETTING_KEYS = ("experiment", "dataset", "backbone", "train_composition")


@dataclass(frozen=True)
class ReportResult:
    """Where the report went and the tables it was built from."""

    path: Path
    figures: dict[str, Path] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    headline: pd.DataFrame = field(default_factory=pd.DataFrame)


def _check_columns(frame: pd.DataFrame, required: tuple[str, ...], name: str) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{name} lacks columns {missing}; it must follow the Results schema "
            f"(export it with the results store) with columns {list(required)}"
        )


def method_label(norm: str, norm_options: str | dict | None) -> str:
    """``norm``, or ``norm(key=value,...)`` with options (as the benchmark config labels it)."""
    options = norm_options
    if isinstance(options, str):
        try:
            options = json.loads(options) if options.strip() else {}
        except json.JSONDecodeError as error:
            raise ValueError(
                f"norm_options {norm_options!r} of norm {norm!r} is not JSON; the results store "
                "writes a JSON object such as '{}' or '{\"groups\": 8}'"
            ) from error
    if not options or (isinstance(options, float) and np.isnan(options)):
        return norm
    return f"{norm}(" + ",".join(f"{k}={v}" for k, v in sorted(options.items())) + ")"


def _prepare(evaluations: pd.DataFrame) -> pd.DataFrame:
    _check_columns(evaluations, EVALUATION_COLUMNS, "evaluations")
    ev = evaluations.copy()
    if "status" in ev.columns:
        ev = ev[ev["status"] == "ok"]
    labels = {
        (n, str(o)): method_label(n, o)
        for n, o in ev[["norm", "norm_options"]].drop_duplicates().itertuples(index=False)
    }
    ev["method"] = [
        labels[(n, str(o))] for n, o in zip(ev["norm"], ev["norm_options"], strict=True)
    ]
    for key in (*TRAIN_KEYS, *TEST_KEYS):
        if ev[key].isna().any():  # pandas group-bys drop NaN keys; keep those rows visible
            ev[key] = ev[key].astype(object).where(ev[key].notna(), "-")
    return ev[ev["accuracy"].notna()]


def _prefer_stats_mode(ev: pd.DataFrame, mode: str = "running") -> pd.DataFrame:
    """Rows with stats mode ``mode`` per method (the method's first mode if it lacks ``mode``)."""
    first = ev.groupby("method")["stats_mode"].transform(lambda s: sorted(s.unique())[0])
    has_mode = ev.groupby("method")["stats_mode"].transform(lambda s: bool((s == mode).any()))
    return ev[np.where(has_mode, ev["stats_mode"] == mode, ev["stats_mode"] == first)]


def _default_test_slice(ev: pd.DataFrame) -> pd.DataFrame:
    """Clean i.i.d. test batches of the largest test batch size, running statistics preferred."""
    composition = (
        "iid" if (ev["test_composition"] == "iid").any() else ev["test_composition"].mode()[0]
    )
    ev = ev[(ev["shift"] == "clean") & (ev["test_composition"] == composition)]
    ev = ev[ev["test_batch_size"] == ev["test_batch_size"].max()]
    return _prefer_stats_mode(ev)


def _summarize(ev: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean and 95% Student-t CI over runs (seeds) of per-run mean accuracy, per ``keys``."""
    per_run = ev.groupby([*keys, "run_key"], dropna=False)["accuracy"].mean().reset_index()
    grouped = per_run.groupby(keys, dropna=False)["accuracy"]
    out = grouped.agg(mean="mean", sd="std", n="count").reset_index()
    half = stats.t_half_width(out["sd"].to_numpy(), out["n"].to_numpy())
    out["low"], out["high"] = out["mean"] - half, out["mean"] + half
    return out


def _varying(ev: pd.DataFrame, keys: tuple[str, ...]) -> list[str]:
    return [k for k in keys if ev[k].nunique(dropna=False) > 1]


def _headline_conditions(ev: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(column name, rows) for the key test conditions the data has."""
    conditions = []
    clean = _default_test_slice(ev)
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
        conditions.append((f"clean, test bs {test_sizes[0]}", _prefer_stats_mode(small)))
        # the test-time choice matters most for small test batches: one column per other mode
        for mode in sorted(set(small["stats_mode"]) - {"running"}):
            conditions.append(
                (f"clean, test bs {test_sizes[0]}, {mode} stats", _prefer_stats_mode(small, mode))
            )
    shifted = at_largest[at_largest["shift"] != "clean"]
    shifted = shifted[shifted["test_batch_size"] == shifted["test_batch_size"].max()]
    shifted = shifted[shifted["test_composition"] == "iid"]
    if not shifted.empty:
        severity = shifted["severity"].max()
        worst = shifted[shifted["severity"] == severity]
        name = f"mean over corruptions (n={worst['shift'].nunique()}), severity {severity}"
        conditions.append((name, _prefer_stats_mode(worst)))
        if "batch" in set(worst["stats_mode"]):
            conditions.append((f"{name}, batch stats", _prefer_stats_mode(worst, "batch")))
    for composition in sorted(set(ev["test_composition"]) - {"iid"}):
        rows = at_largest[
            (at_largest["shift"] == "clean") & (at_largest["test_composition"] == composition)
        ]
        rows = rows[rows["test_batch_size"] == rows["test_batch_size"].max()]
        conditions.append((f"{composition} test batches", _prefer_stats_mode(rows)))
        if "batch" in set(rows["stats_mode"]):
            conditions.append(
                (f"{composition} test batches, batch stats", _prefer_stats_mode(rows, "batch"))
            )
    return [(name, rows) for name, rows in conditions if not rows.empty]


def headline_table(evaluations: pd.DataFrame) -> pd.DataFrame:
    """Norms x key conditions, cells ``mean ± 95% CI half-width`` of accuracy over seeds.

    Unless a column names it: largest train batch size, clean i.i.d. test batches of the
    largest test batch size, running statistics.
    """
    ev = _prepare(evaluations)
    if ev.empty:
        return pd.DataFrame()
    index = [*_varying(ev, SETTING_KEYS), "method"]
    columns = {}
    for name, rows in _headline_conditions(ev):
        summary = _summarize(rows, index).set_index(index)
        half = (summary["high"] - summary["mean"]).fillna(float("nan"))
        columns[name] = [
            f"{m:.3f} ± {h:.3f}" if np.isfinite(h) else f"{m:.3f}"
            for m, h in zip(summary["mean"], half, strict=True)
        ]
        columns[name] = pd.Series(columns[name], index=summary.index)
    table = pd.DataFrame(columns)
    seeds = ev.groupby(index)["seed"].nunique().rename("seeds")
    return table.join(seeds).fillna("–")


def _curve_frame(summary: pd.DataFrame, panel: list[str], line: str, x: str) -> pd.DataFrame:
    frame = summary.copy()
    frame["panel"] = frame[panel].astype(str).agg(", ".join, axis=1) if panel else ""
    return frame.rename(columns={line: "line", x: "x"})[list(plots.CURVE_COLUMNS)]


def _figures(ev: pd.DataFrame, out_dir: Path) -> dict[str, Path]:
    figures: dict[str, Path] = {}
    setting = _varying(ev, SETTING_KEYS)
    if ev["train_batch_size"].nunique() > 1:
        summary = _summarize(_default_test_slice(ev), [*setting, "method", "train_batch_size"])
        figures["accuracy_vs_train_batch_size"] = plots.plot_curves(
            _curve_frame(summary, setting, "method", "train_batch_size"),
            out_dir / "accuracy_vs_train_batch_size.png",
            "train batch size",
            "Clean accuracy vs train batch size (largest test batch, running statistics)",
            log2_x=True,
        )
    clean = ev[(ev["shift"] == "clean") & (ev["test_composition"] == "iid")]
    modes_per_method = clean.groupby("method")["stats_mode"].nunique()
    dependent = modes_per_method[modes_per_method > 1].index
    if clean["test_batch_size"].nunique() > 1 and len(dependent):
        rows = clean[clean["method"].isin(dependent)]
        keys = [*setting, "method", "train_batch_size", "stats_mode", "test_batch_size"]
        summary = _summarize(rows, keys)
        summary["train_batch_size"] = "train bs " + summary["train_batch_size"].astype(str)
        figures["accuracy_vs_test_batch_size"] = plots.plot_curves(
            _curve_frame(
                summary, [*setting, "method", "train_batch_size"], "stats_mode", "test_batch_size"
            ),
            out_dir / "accuracy_vs_test_batch_size.png",
            "test batch size",
            "Clean accuracy vs test batch size per test-time statistics mode",
            log2_x=True,
        )
    shifted = ev[(ev["shift"] != "clean") & (ev["test_composition"] == "iid")]
    if not shifted.empty and shifted["severity"].nunique() > 1:
        rows = ev[ev["train_batch_size"] == ev["train_batch_size"].max()]
        rows = rows[rows["test_batch_size"] == rows["test_batch_size"].max()]
        rows = _prefer_stats_mode(rows[rows["test_composition"] == "iid"])
        corrupted = rows[rows["shift"] != "clean"]
        clean_rows = rows[rows["shift"] == "clean"]
        # Severity 0 of every corruption is the clean accuracy, so each curve starts there.
        pieces = [corrupted] + [clean_rows.assign(shift=s) for s in corrupted["shift"].unique()]
        summary = _summarize(pd.concat(pieces), [*setting, "shift", "method", "severity"])
        figures["accuracy_vs_severity"] = plots.plot_curves(
            _curve_frame(summary, [*setting, "shift"], "method", "severity"),
            out_dir / "accuracy_vs_severity.png",
            "severity",
            "Accuracy vs corruption severity (largest train and test batch, running statistics)",
        )
    return figures


def _failed_runs(runs: pd.DataFrame) -> pd.DataFrame:
    failed = runs[runs["status"] != "ok"].copy()
    failed["method"] = [
        method_label(n, o) for n, o in zip(failed["norm"], failed["norm_options"], strict=True)
    ]
    keys = [*_varying(runs, SETTING_KEYS), "train_batch_size"]
    return failed[["method", *keys, "seed", "status", "error"]].sort_values(["method", "seed"])


def build_report(
    runs: pd.DataFrame,
    evaluations: pd.DataFrame,
    out_dir: Path,
    reference: str = "batch",
    alpha: float = 0.05,
    title: str = "normzoo benchmark report",
    command: str | None = None,
) -> ReportResult:
    """Write ``report.md``, PNG figures and CSV tables into ``out_dir`` (see module docstring)."""
    _check_columns(runs, RUN_COLUMNS, "runs")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha={alpha} is outside (0, 1); use e.g. 0.05")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ev = _prepare(evaluations)
    failed = _failed_runs(runs)
    tables: dict[str, pd.DataFrame] = {"failed_runs": failed}
    figures: dict[str, Path] = {}
    headline = headline_table(evaluations)
    lines = [f"# {title}", ""]
    if command:
        lines += [f"Produced by: `{command}`", ""]
    counts = runs["status"].value_counts()
    lines += [
        "## Runs",
        "",
        f"{len(runs)} training runs: {counts.get('ok', 0)} ok, {counts.get('failed', 0)} failed, "
        f"{counts.get('diverged', 0)} diverged. Failed and diverged runs are excluded from "
        "every statistic below; their seeds are missing from the pairs they belong to.",
        "",
    ]
    if not failed.empty:
        lines += ["### Failed and diverged runs", "", markdown_table(failed), ""]
    if ev.empty:
        lines += ["No finished evaluations: nothing to compare.", ""]
    else:
        seeds = ev.groupby("method")["seed"].nunique()
        lines += [
            f"Norms: {', '.join(sorted(ev['method'].unique()))}. Seeds per norm: "
            + ", ".join(f"{m} {n}" for m, n in seeds.items())
            + f". {ev[list(TEST_KEYS)].drop_duplicates().shape[0]} test conditions.",
            "",
        ]
        lines += _method_section(alpha, reference)
        tables["headline"] = headline
        lines += [
            "## Headline",
            "",
            "Accuracy, mean ± 95% Student-t CI half-width over seeds. Clean i.i.d. test batches "
            "of the largest test batch size with running statistics (a norm without a "
            "`running` mode uses its only mode) unless the column says otherwise; columns "
            "without a train batch size use the largest one.",
            "",
            markdown_table(headline.reset_index()),
            "",
        ]
        figures.update(_figures(ev, out_dir))
        if figures:
            lines += ["## Plots", ""] + [f"![{k}]({p.name})\n" for k, p in figures.items()]
        lines += _significance_sections(ev, out_dir, reference, alpha, tables, figures)
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    for name, table in tables.items():
        table.to_csv(out_dir / f"{name}.csv", index=name == "headline")
    logger.info("report written to %s", path)
    return ReportResult(path=path, figures=figures, tables=tables, headline=headline)


def _method_section(alpha: float, reference: str) -> list[str]:
    return [
        "## How differences are decided",
        "",
        f"- Pairs are seeds: the same seed trained with two norms (reference: `{reference}`); "
        "stats-mode comparisons pair evaluations of the same trained run. n = pairs.",
        f"- Primary test: two-sided {stats.PRIMARY_TEST}; Holm correction within each family "
        f"(the comparisons of one train x test condition); alpha = {alpha}. A difference is "
        f"called significant only if its Holm-adjusted p < {alpha}.",
        "- Mean difference with a 95% percentile-bootstrap CI (2000 resamples, fixed seed); "
        "effect size Cohen's d_z; probability of improvement P(A > B) with ties 1/2.",
        f"- Robustness check: exact {stats.ROBUSTNESS_TEST} (Holm-adjusted) when it can reach "
        f"alpha (>= 6 non-zero pairs at 0.05; normal approximation when |differences| tie); "
        "otherwise reported as `underpowered`, never as `not significant`.",
        f"- Fewer than {stats.MIN_SEEDS} finished seeds: `insufficient data`, no claim.",
        "",
    ]


def _significance_sections(
    ev: pd.DataFrame,
    out_dir: Path,
    reference: str,
    alpha: float,
    tables: dict[str, pd.DataFrame],
    figures: dict[str, Path],
) -> list[str]:
    lines: list[str] = []
    train_keys, test_keys = list(TRAIN_KEYS), list(TEST_KEYS)
    key_rows = _default_test_slice(ev)
    key_conditions = key_rows[[*train_keys, *test_keys]].drop_duplicates()
    if reference in set(ev["method"]):
        versus = compare_conditions(
            ev, [*train_keys, *test_keys], "method", "seed", reference, alpha
        )
        tables["significance_vs_reference"] = versus
        key = versus.merge(key_conditions, on=[*train_keys, *test_keys])
        lines += [
            f"## Each norm vs `{reference}`",
            "",
            f"Test conditions: {versus[test_keys].drop_duplicates().shape[0]}, train "
            f"conditions: {versus[train_keys].drop_duplicates().shape[0]} (full table: "
            "`significance_vs_reference.csv`):",
            "",
            markdown_table(significance_summary(versus)),
            "",
            "At the headline clean condition:",
            "",
            markdown_table(_display(key, _train_columns(key))),
            "",
        ]
    else:
        lines += [f"Reference norm `{reference}` is not in the data; no vs-reference tables.", ""]
    pairs = compare_conditions(key_rows, [*train_keys, *test_keys], "method", "seed", None, alpha)
    if not pairs.empty:
        tables["significance_all_pairs"] = pairs
        lines += [
            "## All pairs at the headline clean condition",
            "",
            markdown_table(_display(pairs, _train_columns(pairs))),
            "",
        ]
    group_keys = [*train_keys, "method", *[k for k in test_keys if k != "stats_mode"]]
    modes = compare_conditions(ev, group_keys, "stats_mode", "run_key", "running", alpha)
    if not modes.empty:
        varies = modes.groupby("method")["mean_difference"].transform(lambda d: (d != 0).any())
        constant = sorted(set(modes.loc[~varies, "method"]))
        modes = modes[varies]
        tables["significance_stats_modes"] = modes
        lines += ["## Test-time statistics modes vs `running` (same trained runs)", ""]
        if constant:
            lines += [
                f"Accuracy identical under every mode (no batch statistics): "
                f"{', '.join(constant)}.",
                "",
            ]
        if not modes.empty:
            summary = significance_summary(modes, by=["method", "a"])
            lines += [
                markdown_table(summary.rename(columns={"a": "stats mode"})),
                "",
                "Full table: `significance_stats_modes.csv`.",
                "",
            ]
    block_keys = [*train_keys, *[k for k in test_keys if k != "stats_mode"]]
    ranked = rank_across_conditions(_prefer_stats_mode(ev), block_keys, alpha)
    if ranked is None:
        lines += [
            "Rank test across conditions skipped: it needs at least 3 norms and 2 "
            "conditions where every norm was evaluated.",
            "",
        ]
    else:
        result, used, dropped = ranked
        figures["critical_difference"] = plots.plot_critical_difference(
            result, out_dir / "critical_difference.png", "Norms ranked across conditions"
        )
        lines += [
            "## Ranks across conditions (Friedman + Nemenyi, Demšar 2006)",
            "",
            f"Blocks: {used} (train condition, test condition) pairs with every norm present, "
            "each norm with running statistics (or its only mode) "
            f"({dropped} incomplete blocks left out); per block, norms are ranked by mean "
            f"accuracy over seeds (1 = best, ties averaged). {result.test}: "
            f"chi2 = {result.chi2:.2f}, F = {result.f_statistic:.2f}, "
            f"p {plots.format_p(result.pvalue)} "
            f"-> {result.verdict}; Nemenyi CD = {result.critical_difference:.2f} at alpha = "
            f"{alpha}. Blocks share trained models and are not independent data sets, so read "
            "this p-value as descriptive.",
            "",
            markdown_table(
                pd.DataFrame(
                    {"norm": result.names, "average rank": result.average_ranks}
                ).sort_values("average rank")
            ),
            "",
            "![critical_difference](critical_difference.png)",
            "",
        ]
    return lines


def _train_columns(table: pd.DataFrame) -> list[str]:
    """Train-condition columns that tell the rows apart (always the train batch size)."""
    varying = _varying(table, TRAIN_KEYS)
    return varying if "train_batch_size" in varying else ["train_batch_size", *varying]


def _display(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Compact columns of a comparison table for markdown."""
    shown = table[[*keys, "a", "b", "n"]].copy()
    shown["mean diff [95% CI]"] = [
        f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]" if np.isfinite(lo) else f"{d:+.4f} [n/a]"
        for d, lo, hi in zip(
            table["mean_difference"], table["ci_low"], table["ci_high"], strict=True
        )
    ]
    shown["p (t)"] = table["pvalue"].map("{:.3g}".format)
    shown["p Holm"] = table["p_adjusted"].map("{:.3g}".format)
    shown["d_z"] = table["cohens_dz"].map("{:.2f}".format)
    shown["P(a>b)"] = table["probability_of_improvement"].map("{:.2f}".format)
    shown["Wilcoxon"] = table["wilcoxon_verdict"]
    shown["verdict"] = table["verdict"]
    return shown
