"""Reports never crash on the shape of a grid; they say what they cannot compute (issue 13.8)."""

import pandas as pd
from test_report import synthetic_results  # tests/report is on sys.path

from normzoo import report


def _text(result: report.ReportResult) -> str:
    return result.path.read_text()


def test_single_norm(tmp_path):
    runs, evaluations = synthetic_results({"batch": 0.0}, seeds=3)
    result = report.build_report(runs, evaluations, tmp_path)
    text = _text(result)
    assert "only one norm (batch): no comparison between norms is possible" in text
    assert "## Headline" in text and not result.headline.empty
    assert "significance_primary" not in result.tables


def test_single_seed(tmp_path):
    runs, evaluations = synthetic_results({"batch": 0.0, "group": 0.02, "layer": 0.0}, seeds=1)
    result = report.build_report(runs, evaluations, tmp_path)
    text = _text(result)
    assert "one seed per norm: no confidence interval or test is possible" in text
    primary = result.tables["significance_primary"]
    assert (primary["verdict"] == "insufficient data").all()
    assert "insufficient data (n = 1 paired seeds" in text
    assert "(n = 1, no CI)" in result.headline.iloc[0, 0]


def test_single_condition(tmp_path):
    runs, evaluations = synthetic_results(
        {"batch": 0.0, "group": 0.02},
        train_batch_sizes=(32,),
        test_batch_sizes=(128,),
        stats_modes=("running",),
        shifts=(("clean", 0),),
        compositions=("iid",),
    )
    result = report.build_report(runs, evaluations, tmp_path)
    assert len(result.tables["significance_primary"]) == 1
    assert "rank test skipped" in _text(result)


def test_all_failed(tmp_path):
    failed = tuple(
        (norm, bs, seed, "failed", "ValueError: boom")
        for norm in ("batch", "group")
        for bs in (8, 32)
        for seed in range(3)
    )
    runs, evaluations = synthetic_results({"batch": 0.0, "group": 0.02}, failed=failed)
    assert evaluations.empty
    evaluations = pd.DataFrame(columns=list(report.select.EVALUATION_COLUMNS))
    result = report.build_report(runs, evaluations, tmp_path)
    text = _text(result)
    assert "12 training runs: 0 ok, 12 failed" in text
    assert "no finished evaluations" in text and "ValueError: boom" in text
