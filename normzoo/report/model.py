"""What a report says, as data: computed by :mod:`normzoo.report.build`, formatted by
:mod:`normzoo.report.markdown` and :mod:`normzoo.report.plots`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from normzoo.bench.plan.config.stats_section import StatsSection
from normzoo.report.convergence import Convergence
from normzoo.report.ranks import RankBlocks


@dataclass(frozen=True)
class Curves:
    """One figure's data: curves (plots.CURVE_COLUMNS) and how to draw them."""

    frame: pd.DataFrame
    xlabel: str
    title: str
    log2_x: bool


@dataclass(frozen=True)
class Report:
    """Everything a report says, computed; rendering and writing only format it."""

    title: str
    command: str | None
    spec: StatsSection
    declared: bool  # the config declared its primary family (else the stated default)
    reference: str
    run_counts: dict[str, int]
    failed: pd.DataFrame
    methods: tuple[str, ...]
    seeds: dict[str, int]
    test_conditions: int
    headline: pd.DataFrame
    primary_labels: tuple[str, ...]
    primary_missing: tuple[str, ...]
    primary: pd.DataFrame
    findings: tuple[str, ...]
    exploratory: dict[str, pd.DataFrame]
    constant_modes: tuple[str, ...]
    ranks: RankBlocks | None
    curves: dict[str, Curves]
    limits: tuple[str, ...]  # what this report cannot compute, and why
    convergence: Convergence | None = None  # gate per train condition, collapsed runs
    collapse: pd.DataFrame = field(default_factory=pd.DataFrame)  # Fisher, primary pairs
    merged: dict[str, int] = field(default_factory=dict)  # per family: repeated computations
    # learning-rate selection: validation accuracy per (cell, lr) tried (plan.tuning.tuning_table)
    tuning: pd.DataFrame = field(default_factory=pd.DataFrame)
    # accuracy, NLL and ECE per norm x stats mode x test condition (tables.calibration)
    calibration: pd.DataFrame = field(default_factory=pd.DataFrame)


@dataclass(frozen=True)
class ReportResult:
    """Where the report went and the tables it was built from."""

    path: Path
    figures: dict[str, Path] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    headline: pd.DataFrame = field(default_factory=pd.DataFrame)
    report: Report | None = None
