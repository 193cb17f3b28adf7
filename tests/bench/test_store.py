"""The SQLite store: atomic per-run writes, unique keys, resume statuses, pandas/CSV export."""

import sqlite3

import pandas as pd
import pytest

from normzoo.bench.store import EVAL_COLUMNS, RUN_COLUMNS, SCHEMA_RUN_COLUMNS, Store


def _row(key, status="ok", norm="batch", seed=0):
    row = dict.fromkeys(RUN_COLUMNS)
    row.update(
        run_key=key,
        experiment="e",
        dataset="synthetic",
        backbone="small_cnn",
        norm=norm,
        norm_options="{}",
        train_batch_size=8,
        train_composition="iid",
        seed=seed,
        status=status,
        val_accuracy=0.5,
        train_seconds=1.0,
        eval_seconds=0.5,
        config_hash="h",
        config_json="{}",
    )
    return row


def _evals(key, accuracies):
    return [
        {
            "run_key": key,
            "test_batch_size": bs,
            "stats_mode": "running",
            "shift": "clean",
            "severity": 0,
            "test_composition": "iid",
            "accuracy": a,
            "loss": 1.0,
            "n_test": 100,
            "computed_as": "x",
        }
        for bs, a in accuracies
    ]


def test_write_and_frames(tmp_path):
    with Store(tmp_path) as store:
        store.write_run(_row("a"), _evals("a", [(1, 0.7), (8, 0.75)]))
        store.write_run(_row("b", norm="group", seed=1), _evals("b", [(1, 0.6)]))
        store.write_run(_row("c", status="diverged"), [])
        assert store.statuses() == {"a": "ok", "b": "ok", "c": "diverged"}
        runs, ev = store.runs_frame(), store.evaluations_frame()
    assert list(runs.columns[: len(SCHEMA_RUN_COLUMNS)]) == list(SCHEMA_RUN_COLUMNS)
    assert len(runs) == 3
    assert set(SCHEMA_RUN_COLUMNS) | set(EVAL_COLUMNS) <= set(ev.columns)
    assert sorted(ev["accuracy"]) == [0.6, 0.7, 0.75]
    assert set(ev["status"]) == {"ok"}
    only_b = Store(tmp_path).evaluations_frame(["b"])
    assert list(only_b["norm"]) == ["group"]


def test_rewrite_replaces_instead_of_duplicating(tmp_path):
    with Store(tmp_path) as store:
        store.write_run(_row("a", status="failed"), [])
        store.write_run(_row("a"), _evals("a", [(1, 0.7), (8, 0.8)]))
        store.write_run(_row("a"), _evals("a", [(1, 0.7), (8, 0.8)]))
        assert len(store.runs_frame()) == 1
        assert len(store.evaluations_frame()) == 2


def test_a_failing_write_leaves_nothing_behind(tmp_path):
    bad = _evals(
        "a", [(1, 0.7), (1, 0.8)]
    )  # duplicate primary key -> the transaction must roll back
    with Store(tmp_path) as store:
        with pytest.raises(sqlite3.IntegrityError):
            store.write_run(_row("a"), bad)
        assert store.statuses() == {}
        assert store.evaluations_frame().empty


def test_second_connection_sees_committed_runs_and_csv_export(tmp_path):
    writer = Store(tmp_path)
    writer.write_run(_row("a"), _evals("a", [(1, 0.7)]))
    reader = Store(tmp_path)
    assert reader.statuses() == {"a": "ok"}
    runs_csv, ev_csv = reader.export_csv(tmp_path)
    assert pd.read_csv(ev_csv)["accuracy"].tolist() == [0.7]
    assert "config_json" not in pd.read_csv(runs_csv).columns
    assert (
        sqlite3.connect(tmp_path / "results.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
        == "wal"
    )
    writer.close()
    reader.close()
