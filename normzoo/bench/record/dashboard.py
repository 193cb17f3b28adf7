"""A ready W&B Report for an experiment (wandb-workspaces): the panels a user wants first.

Built from the config alone (the summary names follow `wandb_layout.condition_key`), so it is the
same before, during and after the runs; `save_dashboard` uploads it when online. Panels:
- accuracy vs train batch size, runs grouped (coloured) by norm (clean data, running statistics);
- parallel coordinates over norm x train batch size x learning rate x accuracy, one line per run;
- accuracy vs test batch size, one panel per stats mode, bars per norm (mean over seeds);
- accuracy vs severity, one panel per corruption;
- validation accuracy during training, one line per setting;
- the headline and significance tables of the summary run.
"""

from __future__ import annotations

from normzoo.bench.record.wandb_layout import condition_key

SIGNIFICANCE_TABLES = ("significance_primary", "significance_vs_reference")


def _require():
    try:
        import wandb_workspaces.reports.v2 as wr
    except ImportError as error:
        raise ValueError(
            "the W&B dashboard needs wandb-workspaces: pip install 'normzoo[dashboard]'"
        ) from error
    return wr


def _key(shift: str, severity: int, stats_mode: str, batch_size: int, composition: str) -> str:
    return condition_key(
        dict(
            shift=shift,
            severity=severity,
            stats_mode=stats_mode,
            test_batch_size=batch_size,
            test_composition=composition,
        )
    )


def train_filter(experiment: str) -> str:
    """The runset filter of an experiment's training runs.

    Norms are split by grouping on ``norm_label``, not by filters: wandb-workspaces' filter
    parser rewrites an ``=`` inside a quoted value (``group(groups=8)``) into ``==``.
    """
    return f"Config('experiment') == '{experiment}' and Metric('JobType') == 'train'"


def summary_filter(experiment: str) -> str:
    """The runset filter of an experiment's summary run."""
    return f"Config('experiment') == '{experiment}' and Metric('JobType') == 'summary'"


_BAR = dict(groupby="norm_label", groupby_aggfunc="mean", groupby_rangefunc="stderr")


def build_dashboard(
    config,
    project: str,
    entity: str,
    significance_table: str = SIGNIFICANCE_TABLES[0],
    experiment: str | None = None,
):
    """The Report object (not saved) for ``config``'s experiment in ``entity/project``;
    ``experiment`` is its identity as the runs were logged (default: the config's name)."""
    wr = _require()
    experiment = experiment or config.experiment.name
    if any(c in experiment for c in "='\""):
        raise ValueError(
            f"experiment name {experiment!r} contains = or quotes, which W&B report filters "
            "cannot hold; rename experiment.name"
        )

    def runset(name: str, filters: str, groupby=()):
        return wr.Runset(
            entity=entity, project=project, name=name, filters=filters, groupby=list(groupby)
        )

    by_norm = [runset("by norm", train_filter(experiment), ["norm_label"])]
    train_bs, parallel, test_bs = _batch_size_grids(wr, config.eval, experiment, runset, by_norm)
    severity = _severity_grid(wr, config.eval, by_norm)
    curves = wr.PanelGrid(
        runsets=[runset("by setting", train_filter(experiment), ["setting"])],
        panels=[
            wr.LinePlot(title="validation accuracy", x="trainer/global_step", y=["val/acc"]),
            wr.LinePlot(title="training loss", x="trainer/global_step", y=["train/loss"]),
        ],
    )
    tables = wr.PanelGrid(
        runsets=[runset("summary", summary_filter(experiment))],
        panels=[
            wr.WeavePanelSummaryTable(table_name="tables/headline"),
            wr.WeavePanelSummaryTable(table_name=f"tables/{significance_table}"),
        ],
    )
    description = config.experiment.description or f"normzoo benchmark: {experiment}"
    return wr.Report(
        project=project,
        entity=entity,
        title=f"normzoo: {experiment}",
        description=description.strip()[:500],
        blocks=[
            wr.H1(f"normzoo: {experiment}"),
            wr.P(
                "Accuracy is the mean over seeds (bars: standard error); each training run's "
                "summary holds every test condition as test/bs<test batch size>/<stats mode>/"
                "<shift>[-<severity>]/<composition>."
            ),
            wr.H2("Accuracy vs train batch size, per norm"),
            train_bs,
            wr.H2("Norm x train batch size x learning rate x accuracy, one line per run"),
            parallel,
            wr.H2("Accuracy vs test batch size, per stats mode"),
            test_bs,
            wr.H2("Accuracy vs severity, per corruption"),
            severity,
            wr.H2("Training curves"),
            curves,
            wr.H2("Headline and significance"),
            tables,
        ],
    )


def _reference(ev) -> tuple[str, int, str, str]:
    """The reference test condition of the panels: (stats mode, largest test batch size,
    first composition, the clean accuracy's summary name)."""
    reference_mode = "running" if "running" in ev.stats_modes else ev.stats_modes[0]
    largest = max(ev.test_batch_sizes)
    composition = ev.compositions[0].label
    return (
        reference_mode,
        largest,
        composition,
        _key("clean", 0, reference_mode, largest, composition),
    )


def _batch_size_grids(wr, ev, experiment: str, runset, by_norm: list) -> tuple:
    """Accuracy vs train batch size, the parallel-coordinates view of runs, and accuracy vs
    test batch size per stats mode."""
    _, _, composition, clean = _reference(ev)
    train_bs = wr.PanelGrid(
        runsets=by_norm,
        panels=[
            wr.ScatterPlot(
                title=f"accuracy vs train batch size ({clean})",
                x=wr.Config("train_batch_size"),
                y=wr.SummaryMetric(clean),
                log_x=True,
            )
        ],
    )
    parallel = wr.PanelGrid(
        runsets=[runset("runs", train_filter(experiment))],
        panels=[
            wr.ParallelCoordinatesPlot(
                title=f"norm x train batch size x learning rate x accuracy ({clean})",
                columns=[
                    wr.ParallelCoordinatesPlotColumn(metric=wr.Config("norm_label")),
                    wr.ParallelCoordinatesPlotColumn(metric=wr.Config("train_batch_size")),
                    wr.ParallelCoordinatesPlotColumn(metric=wr.Config("lr")),
                    wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(clean)),
                ],
            )
        ],
    )
    test_bs = wr.PanelGrid(
        runsets=by_norm,
        panels=[
            wr.BarPlot(
                title=f"accuracy vs test batch size, {mode} statistics (clean, {composition})",
                metrics=[
                    wr.SummaryMetric(_key("clean", 0, mode, size, composition))
                    for size in sorted(ev.test_batch_sizes)
                ],
                **_BAR,
            )
            for mode in ev.stats_modes
        ],
    )
    return train_bs, parallel, test_bs


def _severity_grid(wr, ev, by_norm: list):
    """Accuracy vs severity, one bar plot per corruption, at the reference condition."""
    reference_mode, largest, composition, clean = _reference(ev)
    corruptions = [s for s in ev.shifts if s != "clean"]
    return wr.PanelGrid(
        runsets=by_norm,
        panels=[
            wr.BarPlot(
                title=f"accuracy vs severity: {shift} ({reference_mode}, bs{largest})",
                metrics=[wr.SummaryMetric(clean)]
                + [
                    wr.SummaryMetric(_key(shift, s, reference_mode, largest, composition))
                    for s in sorted(ev.severities)
                ],
                **_BAR,
            )
            for shift in corruptions
        ],
    )


def pick_significance_table(table_names) -> str:
    """The primary-family significance table when the report has one, else the first
    significance table."""
    names = list(table_names)
    for preferred in SIGNIFICANCE_TABLES:
        if preferred in names:
            return preferred
    others = [n for n in names if n.startswith("significance")]
    return others[0] if others else SIGNIFICANCE_TABLES[0]


def save_dashboard(config, tracker, significance_table: str = SIGNIFICANCE_TABLES[0]) -> str:
    """Build and save the report (online only) for the tracker's experiment identity; returns
    its URL."""
    if tracker.mode != "online":
        raise ValueError(
            f"saving a W&B Report needs W&B online (mode is {tracker.mode}); log in with "
            "`wandb login` or set WANDB_API_KEY, and do not set WANDB_MODE=offline/disabled"
        )
    import wandb

    entity = tracker.entity or wandb.Api().default_entity
    report = build_dashboard(
        config, tracker.project, entity, significance_table, tracker.experiment
    )
    report.save()
    return report.url
