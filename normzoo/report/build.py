"""The report engine: the results store's frames -> a Report -> markdown, CSVs and plots.

- :func:`compute_report` turns the ``runs`` and ``evaluations`` frames (the Results schema of
  :mod:`normzoo.bench.record.store`) into a :class:`Report`: tables, statistics, findings, curves;
- :func:`render_markdown` turns a Report into markdown text;
- :func:`write_report` draws the figures and writes ``report.md`` and CSV tables;
- :func:`build_report` does all three. No function changes its arguments.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pandas as pd

from normzoo.bench.plan.config.stats_section import StatsSection
from normzoo.bench.plan.schema import RUN_STATUSES, TEST_KEYS
from normzoo.report import plots
from normzoo.report.convergence import Convergence, convergence, gate_findings
from normzoo.report.families import (
    Member,
    collapse_table,
    distinct,
    exploratory_members,
    primary_members,
    test_members,
)
from normzoo.report.findings import collapse_findings, findings
from normzoo.report.markdown import render_markdown
from normzoo.report.model import Curves, Report, ReportResult
from normzoo.report.ranks import rank_blocks
from normzoo.report.select import (
    RUN_COLUMNS,
    SETTING_KEYS,
    check_columns,
    default_test_slice,
    failed_runs,
    prefer_stats_mode,
    prepare,
    summarize,
    varying,
)
from normzoo.report.tables import calibration, headline, tuning_curves

logger = logging.getLogger(__name__)


def headline_table(evaluations: pd.DataFrame) -> pd.DataFrame:
    """Norms x key conditions, cells ``mean ± 95% CI half-width`` of accuracy over seeds."""
    return headline(prepare(evaluations))


def _curve_frame(summary: pd.DataFrame, panel: list[str], line: str, x: str) -> pd.DataFrame:
    frame = summary.assign(panel=summary[panel].astype(str).agg(", ".join, axis=1) if panel else "")
    return frame.rename(columns={line: "line", x: "x"})[list(plots.CURVE_COLUMNS)]


def _curves(ev: pd.DataFrame) -> dict[str, Curves]:
    curves: dict[str, Curves] = {}
    setting = varying(ev, SETTING_KEYS)
    if ev["train_batch_size"].nunique() > 1:
        summary = summarize(default_test_slice(ev), [*setting, "method", "train_batch_size"])
        curves["accuracy_vs_train_batch_size"] = Curves(
            _curve_frame(summary, setting, "method", "train_batch_size"),
            "train batch size",
            "Clean accuracy vs train batch size (largest test batch, running statistics)",
            True,
        )
    clean = ev[(ev["shift"] == "clean") & (ev["test_composition"] == "iid")]
    modes_per_method = clean.groupby("method")["stats_mode"].nunique()
    dependent = modes_per_method[modes_per_method > 1].index
    if clean["test_batch_size"].nunique() > 1 and len(dependent):
        rows = clean[clean["method"].isin(dependent)]
        keys = [*setting, "method", "train_batch_size", "stats_mode", "test_batch_size"]
        summary = summarize(rows, keys)
        summary = summary.assign(
            train_batch_size="train bs " + summary["train_batch_size"].astype(str)
        )
        curves["accuracy_vs_test_batch_size"] = Curves(
            _curve_frame(
                summary, [*setting, "method", "train_batch_size"], "stats_mode", "test_batch_size"
            ),
            "test batch size",
            "Clean accuracy vs test batch size per test-time statistics mode",
            True,
        )
    shifted = ev[(ev["shift"] != "clean") & (ev["test_composition"] == "iid")]
    if not shifted.empty and shifted["severity"].nunique() > 1:
        rows = ev[ev["train_batch_size"] == ev["train_batch_size"].max()]
        rows = rows[rows["test_batch_size"] == rows["test_batch_size"].max()]
        rows = prefer_stats_mode(rows[rows["test_composition"] == "iid"])
        corrupted = rows[rows["shift"] != "clean"]
        clean_rows = rows[rows["shift"] == "clean"]
        # Severity 0 of every corruption is the clean accuracy, so each curve starts there.
        pieces = [corrupted] + [clean_rows.assign(shift=s) for s in corrupted["shift"].unique()]
        summary = summarize(pd.concat(pieces), [*setting, "shift", "method", "severity"])
        curves["accuracy_vs_severity"] = Curves(
            _curve_frame(summary, [*setting, "shift"], "method", "severity"),
            "severity",
            "Accuracy vs corruption severity (largest train and test batch, running statistics)",
            False,
        )
    return curves


def compute_report(
    runs: pd.DataFrame,
    evaluations: pd.DataFrame,
    reference: str = "batch",
    stats: StatsSection | None = None,
    title: str = "normzoo benchmark report",
    command: str | None = None,
) -> Report:
    """All tables, tests, findings and curve data of a report (nothing is written)."""
    check_columns(runs, RUN_COLUMNS, "runs")
    spec = stats or StatsSection()
    if not 0.0 < spec.alpha < 1.0:
        raise ValueError(f"alpha={spec.alpha} is outside (0, 1); use e.g. 0.05")
    ev = prepare(evaluations)
    counts = runs["status"].value_counts()
    limits: list[str] = []
    methods = tuple(sorted(ev["method"].unique())) if not ev.empty else ()
    if reference not in methods and methods:
        reference = methods[0]
    empty = pd.DataFrame()
    conv = convergence(runs, ev, spec) if not ev.empty else None
    if ev.empty:
        limits.append("no finished evaluations: no accuracy, comparison or rank can be computed")
        members, labels, missing = [], [c.label for c in spec.comparisons], []
        explore, seeds, merged = {}, {}, {}
    else:
        members, labels, missing, explore, merged = _families(ev, spec, reference)
        seeds = ev.groupby("method")["seed"].nunique().to_dict()
        limits += _data_limits(methods, seeds, conv)
    primary = test_members(members, spec, "primary", conv)
    exploratory = {
        name: test_members(group, spec, f"exploratory: {name}", conv)
        for name, group in explore.items()
    }
    exploratory = {name: table for name, table in exploratory.items() if not table.empty}
    collapse = collapse_table(members, conv, spec.alpha) if conv is not None else empty
    constant_modes: tuple[str, ...] = ()
    if not ev.empty and ev["stats_mode"].nunique() > 1:
        multi = ev.groupby("method")["stats_mode"].nunique()
        tested = set(exploratory.get("stats_modes", empty).get("method", pd.Series()).unique())
        constant_modes = tuple(m for m in multi[multi > 1].index if m not in tested)
    ranks = rank_blocks(ev, spec.alpha) if not ev.empty else None
    if ranks is None and len(methods) >= 2:
        limits.append(
            "rank test skipped: it needs at least 3 norms and 2 blocks where every norm was "
            "evaluated"
        )
    return Report(
        title=title,
        command=command,
        spec=spec,
        declared=bool(spec.primary),
        reference=reference,
        run_counts={s: int(counts.get(s, 0)) for s in RUN_STATUSES} | {"total": len(runs)},
        failed=failed_runs(runs),
        methods=methods,
        seeds=seeds,
        test_conditions=0 if ev.empty else int(ev[list(TEST_KEYS)].drop_duplicates().shape[0]),
        headline=headline(ev),
        primary_labels=tuple(labels),
        primary_missing=tuple(missing),
        primary=primary,
        findings=tuple(_findings(primary, collapse, conv)) if not ev.empty else (),
        exploratory=exploratory,
        constant_modes=constant_modes,
        ranks=ranks,
        curves=_curves(ev) if not ev.empty else {},
        limits=tuple(limits),
        convergence=conv,
        collapse=collapse,
        merged={k: v for k, v in merged.items() if v},
        calibration=calibration(ev),
    )


def _families(ev: pd.DataFrame, spec: StatsSection, reference: str) -> tuple:
    """(primary members, declared labels, missing labels, exploratory members, merged counts);
    repeated computations merged, exploratory tables without the primary members."""
    merged: dict[str, int] = {}
    members, labels, missing = primary_members(ev, spec, reference)
    members, merged["primary"] = _distinct(members)
    # one verdict per comparison on a page: exploratory tables leave out primary members
    declared = {m.identity for m in members}
    explore = {}
    for name, group in exploratory_members(ev, reference).items():
        group = [m for m in group if m.identity not in declared]
        explore[name], merged[name] = _distinct(group, members)
    return members, labels, missing, explore, merged


def _data_limits(methods: tuple, seeds: dict, conv: Convergence) -> list[str]:
    limits = []
    if len(methods) < 2:
        limits.append(f"only one norm ({methods[0]}): no comparison between norms is possible")
    if max(seeds.values()) < 2:
        limits.append("one seed per norm: no confidence interval or test is possible")
    if not conv.gate_applied:
        limits.append(
            "the store records no training accuracy (runs older than the convergence "
            "contract): no training-accuracy gate is applied, every train condition is "
            "treated as trained, and collapse is judged by test accuracy alone"
        )
    return limits


def _distinct(members: list[Member], before: list[Member] = ()) -> tuple[list[Member], int]:
    """``members`` without those repeating a computation of ``before`` or of an earlier one."""
    kept = distinct([*before, *members])[0][len(before) :]
    return kept, len(members) - len(kept)


def _findings(primary: pd.DataFrame, collapse: pd.DataFrame, conv: Convergence | None) -> list[str]:
    lines = findings(primary)
    if conv is not None:
        lines += gate_findings(conv)
    return lines + collapse_findings(collapse)


def write_report(report: Report, out_dir: Path) -> ReportResult:
    """Draw the figures, write ``report.md`` and the CSV tables into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {
        name: plots.plot_curves(
            c.frame, out_dir / f"{name}.png", c.xlabel, c.title, log2_x=c.log2_x
        )
        for name, c in report.curves.items()
    }
    if not report.tuning.empty:
        figures["accuracy_vs_lr"] = plots.plot_curves(
            tuning_curves(report.tuning),
            out_dir / "accuracy_vs_lr.png",
            "learning rate",
            "Validation accuracy vs learning rate (tuning seeds; the selected rate is used)",
            ylabel="validation accuracy (mean over tuning seeds)",
            log2_x=True,
        )
    if report.ranks is not None:
        figures["critical_difference"] = plots.plot_critical_difference(
            report.ranks.result, out_dir / "critical_difference.png", "Norms by average rank"
        )
    tables = {"failed_runs": report.failed}
    if not report.headline.empty:
        tables["headline"] = report.headline
    if not report.primary.empty:
        tables["significance_primary"] = report.primary
    if not report.collapse.empty:
        tables["collapse_primary"] = report.collapse
    if not report.tuning.empty:
        tables["tuning"] = report.tuning
    if not report.calibration.empty:
        tables["calibration"] = report.calibration
    if report.convergence is not None:
        tables["convergence_runs"] = report.convergence.runs
        tables["convergence_cells"] = report.convergence.cells
    names = {
        "vs_reference": "significance_vs_reference",
        "all_pairs": "significance_all_pairs",
        "stats_modes": "significance_stats_modes",
    }
    tables |= {names[k]: v for k, v in report.exploratory.items()}
    path = out_dir / "report.md"
    path.write_text(render_markdown(report, {k: p.name for k, p in figures.items()}))
    for name, table in tables.items():
        table.to_csv(out_dir / f"{name}.csv", index=name == "headline")
    logger.info("report written to %s", path)
    return ReportResult(path, figures, tables, report.headline, report)


def build_report(
    runs: pd.DataFrame,
    evaluations: pd.DataFrame,
    out_dir: Path,
    reference: str = "batch",
    alpha: float | None = None,
    title: str = "normzoo benchmark report",
    command: str | None = None,
    stats: StatsSection | None = None,
    tuning: pd.DataFrame | None = None,
) -> ReportResult:
    """:func:`compute_report`, then :func:`write_report` into ``out_dir``.

    ``tuning``: the learning-rate selection (`normzoo.bench.plan.tuning.tuning_table`), shown as
    validation accuracy vs learning rate per norm and train condition.
    """
    spec = stats or StatsSection()
    if alpha is not None:
        spec = replace(spec, alpha=alpha)
    report = compute_report(runs, evaluations, reference, spec, title, command)
    if tuning is not None and not tuning.empty:
        report = replace(report, tuning=tuning)
    return write_report(report, out_dir)
