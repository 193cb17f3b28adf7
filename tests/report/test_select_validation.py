"""Evaluation rows read for a report are validated (issue 28.5): accuracies that are not numbers
raise one ValueError naming the run, accuracies outside [0, 1] are excluded with a count."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from normzoo.bench.plan.schema import REPORT_EVALUATION_COLUMNS
from normzoo.report.select import prepare


def _frame(accuracies) -> pd.DataFrame:
    rows = []
    for i, accuracy in enumerate(accuracies):
        row = dict.fromkeys(REPORT_EVALUATION_COLUMNS, "x")
        row.update(
            run_key=f"run{i}",
            norm="batch",
            norm_options="{}",
            seed=i,
            accuracy=accuracy,
            train_batch_size=8,
            test_batch_size=8,
            severity=0,
        )
        rows.append(row)
    return pd.DataFrame(rows)


def test_accuracies_outside_the_unit_interval_are_excluded_with_a_count(caplog):
    caplog.set_level(logging.WARNING)
    ev = prepare(_frame([0.5, 1.7, -0.1, 0.9]))
    assert sorted(ev["accuracy"]) == [0.5, 0.9]
    assert "2 row(s) with an accuracy outside [0, 1] excluded" in caplog.text


def test_accuracies_that_are_not_numbers_are_refused_in_one_line():
    with pytest.raises(ValueError, match=r"not numbers, e.g. 'abc' of run run1") as error:
        prepare(_frame([0.5, "abc"]))
    assert "\n" not in str(error.value)
