"""The W&B Report is built offline (never saved) and checked panel by panel."""

import pytest

from normzoo.bench.plan.config import load_config
from normzoo.bench.plan.grid import expand_conditions, expand_runs
from normzoo.bench.record.dashboard import build_dashboard, pick_significance_table
from normzoo.bench.record.wandb_layout import condition_key, run_config

wr = pytest.importorskip("wandb_workspaces.reports.v2")
expr = pytest.importorskip("wandb_workspaces.expr")

SET = ["eval.shifts=[clean, gaussian_noise, contrast]", "eval.severities=[1, 3, 5]"]


def _filters(runset) -> dict:
    parsed = expr.expr_to_filters(runset.filters)
    assert parsed.op == "AND"
    return {(f.key.section, f.key.name): f.value for f in parsed.filters}


def _metrics(panel) -> list[str]:
    return [m.name for m in panel.metrics]


def test_dashboard_panels_and_filters(tiny_config_path):
    config = load_config(tiny_config_path, SET)
    report = build_dashboard(config, "proj", "team", "significance_vs_reference")
    assert (report.project, report.entity) == ("proj", "team")
    grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    assert len(grids) == 6
    logged = {condition_key(c.columns()) for c in expand_conditions(config)}

    train_bs, parallel, test_bs, severity, curves, tables = grids
    for grid in (train_bs, parallel, test_bs, severity, curves):
        (runset,) = grid.runsets
        assert _filters(runset) == {("config", "experiment"): "tiny", ("run", "jobType"): "train"}
        assert (runset.entity, runset.project) == ("team", "proj")
    assert train_bs.runsets[0].groupby == ["norm_label"]
    assert curves.runsets[0].groupby == ["setting"]
    assert _filters(tables.runsets[0]) == {
        ("config", "experiment"): "tiny",
        ("run", "jobType"): "summary",
    }

    (scatter,) = train_bs.panels
    assert isinstance(scatter, wr.ScatterPlot)
    assert scatter.x.name == "train_batch_size" and scatter.y.name == "test/bs32/running/clean/iid"

    # one line per run over norm x train batch size x lr x the headline accuracy
    (coordinates,) = parallel.panels
    assert isinstance(coordinates, wr.ParallelCoordinatesPlot)
    axes = [c.metric for c in coordinates.columns]
    assert [type(a).__name__ for a in axes] == ["Config", "Config", "Config", "SummaryMetric"]
    assert [a.name for a in axes] == [
        "norm_label",
        "train_batch_size",
        "lr",
        "test/bs32/running/clean/iid",
    ]
    assert axes[-1].name in logged
    flat = run_config(expand_runs(config)[0], config)  # every config axis is a logged config key
    assert {a.name for a in axes[:3]} <= set(flat)

    assert [p.title.split(", ")[1] for p in test_bs.panels] == [
        "running statistics (clean",
        "batch statistics (clean",
    ]
    for panel, mode in zip(test_bs.panels, ["running", "batch"], strict=True):
        assert isinstance(panel, wr.BarPlot) and panel.groupby == "norm_label"
        assert _metrics(panel) == [f"test/bs1/{mode}/clean/iid", f"test/bs32/{mode}/clean/iid"]

    assert [p.title.split(":")[1].split()[0] for p in severity.panels] == [
        "gaussian_noise",
        "contrast",
    ]
    for panel, shift in zip(severity.panels, ["gaussian_noise", "contrast"], strict=True):
        assert _metrics(panel) == ["test/bs32/running/clean/iid"] + [
            f"test/bs32/running/{shift}-{s}/iid" for s in (1, 3, 5)
        ]
    # every bar and point is a summary key the training runs really log
    for panel in [*test_bs.panels, *severity.panels]:
        assert set(_metrics(panel)) <= logged
    assert [p.y for p in curves.panels] == [["val/acc"], ["train/loss"]]
    assert [p.table_name for p in tables.panels] == [
        "tables/headline",
        "tables/significance_vs_reference",
    ]


def test_significance_table_choice_and_bad_experiment_names(tiny_config_path):
    assert pick_significance_table(["significance_vs_reference", "significance_primary"]) == (
        "significance_primary"
    )
    assert pick_significance_table(["significance_stats_modes"]) == "significance_stats_modes"
    assert pick_significance_table([]) == "significance_primary"
    config = load_config(tiny_config_path, ["experiment.name=a=b"])
    with pytest.raises(ValueError, match="rename experiment.name"):
        build_dashboard(config, "proj", "team")


def test_dashboard_filters_on_the_experiment_identity(tiny_config_path):
    config = load_config(tiny_config_path, SET)
    report = build_dashboard(config, "proj", "team", experiment="tiny-0a1b2c")
    grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    assert {_filters(g.runsets[0])[("config", "experiment")] for g in grids} == {"tiny-0a1b2c"}
    assert report.title == "normzoo: tiny-0a1b2c"
