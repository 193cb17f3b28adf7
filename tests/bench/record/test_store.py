"""The SQLite store: atomic writes, unique keys, resume, export; bad stores refused untouched."""

import os
import sqlite3

import pandas as pd
import pytest

from normzoo.bench.plan.schema import EVAL_COLUMNS, RUN_COLUMNS, SCHEMA_RUN_COLUMNS
from normzoo.bench.record import store as store_module
from normzoo.bench.record.store import STORE_NAME, Store, StoreError, check_store
from normzoo.bench.record.store_schema import SCHEMA_VERSION


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
            "ece": 0.1,
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


OLD_SCHEMA = """
CREATE TABLE runs (run_key TEXT PRIMARY KEY, experiment TEXT, status TEXT);
CREATE TABLE evaluations (run_key TEXT, accuracy REAL);
INSERT INTO runs VALUES ('k', 'e', 'ok');
"""


def _sqlite_file(path, script: str, user_version: int = 0) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(script)
    conn.execute(f"PRAGMA user_version={user_version}")
    conn.commit()
    conn.close()


def _unusable_stores(tmp_path):
    """name -> (path of an unusable results.sqlite, what the error must say)."""
    cases = {}
    garbage = tmp_path / "garbage" / STORE_NAME
    garbage.parent.mkdir()
    garbage.write_bytes(b"not a database\n" * 100)
    cases["garbage"] = (garbage, "not an SQLite file")
    good = tmp_path / "good"
    with Store(good) as store:
        store.write_run(_row("a"), _evals("a", [(1, 0.7)]))
    truncated = tmp_path / "truncated" / STORE_NAME
    truncated.parent.mkdir()
    truncated.write_bytes((good / STORE_NAME).read_bytes()[:1500])
    cases["truncated"] = (truncated, "damaged")
    foreign = tmp_path / "foreign" / STORE_NAME
    foreign.parent.mkdir()
    _sqlite_file(foreign, "CREATE TABLE songs (title TEXT); INSERT INTO songs VALUES ('x');")
    cases["foreign"] = (foreign, "another program")
    older = tmp_path / "older" / STORE_NAME
    older.parent.mkdir()
    _sqlite_file(older, OLD_SCHEMA)
    cases["older"] = (older, "older normzoo")
    newer = tmp_path / "newer" / STORE_NAME
    newer.parent.mkdir()
    _sqlite_file(newer, OLD_SCHEMA, user_version=SCHEMA_VERSION + 1)
    cases["newer"] = (newer, "newer normzoo")
    return cases


def test_unusable_stores_are_refused_and_left_untouched(tmp_path):
    for name, (path, message) in _unusable_stores(tmp_path).items():
        content = path.read_bytes()
        with pytest.raises(StoreError, match=message):
            Store(path.parent)
        with pytest.raises(StoreError, match=message):
            Store(path.parent, read_only=True)
        assert path.read_bytes() == content, name
        assert sorted(p.name for p in path.parent.iterdir()) == [STORE_NAME], name
    check_store(tmp_path / "missing" / STORE_NAME)  # a new store is fine


def test_cli_refuses_unusable_output_dirs_before_any_work(
    compare, tiny_config_path, tmp_path, capsys
):
    cases = {name: (path.parent, msg) for name, (path, msg) in _unusable_stores(tmp_path).items()}
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases["out is a file"] = (a_file, "is a file")
    cases["under a file"] = (a_file / "sub", "is a file")
    for name, (out, message) in cases.items():
        before = sorted(p.name for p in out.iterdir()) if out.is_dir() else None
        assert compare.main([str(tiny_config_path), "--out", str(out)]) == 2, name
        printed = " ".join(capsys.readouterr().out.split())
        assert message in printed and "Traceback" not in printed, name
        assert (sorted(p.name for p in out.iterdir()) if out.is_dir() else None) == before, name


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_cli_refuses_an_unwritable_output_dir(compare, tiny_config_path, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert compare.main([str(tiny_config_path), "--out", str(locked / "out")]) == 2
    assert "not writable" in capsys.readouterr().out


class _LockedAtFirst:
    """A connection whose first WAL switches fail as SQLite fails them while another process
    creates the same store: "database is locked" at once, without the busy handler."""

    def __init__(self, conn: sqlite3.Connection, failures: int, message: str) -> None:
        self.conn, self.failures, self.message, self.tries = conn, failures, message, 0

    def execute(self, sql: str, *args):
        if sql == "PRAGMA journal_mode=WAL":
            self.tries += 1
            if self.tries <= self.failures:
                raise sqlite3.OperationalError(self.message)
        return self.conn.execute(sql, *args)


def test_wal_switch_is_retried_while_another_process_holds_the_lock(tmp_path):
    conn = _LockedAtFirst(sqlite3.connect(tmp_path / STORE_NAME), 3, "database is locked")
    store_module._use_wal(conn)
    assert conn.tries == 4
    assert conn.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.conn.close()
    already = _LockedAtFirst(sqlite3.connect(tmp_path / STORE_NAME), 1, "database is locked")
    store_module._use_wal(already)  # WAL is kept in the file: nothing to switch
    assert already.tries == 0


def test_wal_switch_gives_up_on_other_errors_and_after_the_busy_timeout(tmp_path, monkeypatch):
    other = _LockedAtFirst(sqlite3.connect(tmp_path / STORE_NAME), 1, "disk I/O error")
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        store_module._use_wal(other)
    assert other.tries == 1
    monkeypatch.setattr(store_module, "BUSY_SECONDS", 0.05)
    stuck = _LockedAtFirst(sqlite3.connect(tmp_path / STORE_NAME), 10**9, "database is locked")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        store_module._use_wal(stuck)
    assert 1 < stuck.tries < 10**9
