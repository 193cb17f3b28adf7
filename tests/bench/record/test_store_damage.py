"""Damaged, edited and renamed stores (issue 28.4-28.6): the check reads the WAL, a store with a
missing table is repaired (runs and weights kept, evaluations recomputed), impossible values are
excluded with a count, mistyped ones refused with one line, `normzoo report` never writes a
read-only dir, and a renamed experiment reuses its runs as one experiment."""

from __future__ import annotations

import logging
import os
import re
import shutil
import sqlite3

import pytest
import yaml

from normzoo.__main__ import main as normzoo_main
from normzoo.bench.plan.config import load_config
from normzoo.bench.record.store import STORE_NAME, Store, StoreError, check_store
from normzoo.bench.run import plan_grid, run_grid
from tests.bench.record.test_store import _evals, _row
from tests.bench.test_eval_keys import GRID

TWO = {**GRID, "train": {**GRID["train"], "seeds": 2}}
TWO["eval"] = {**GRID["eval"], "stats_modes": ["running", "batch"], "shifts": ["clean"]}
TWO["eval"]["compositions"] = ["iid"]


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    root = tmp_path_factory.mktemp("damage")
    path = root / "grid.yaml"
    path.write_text(yaml.safe_dump(TWO))
    out = root / "out"
    assert run_grid(load_config(path), out, workers=1, show_progress=False).exit_status == 0
    return path, out


@pytest.fixture
def copy(stored, tmp_path):
    path, out = stored
    shutil.copytree(out, tmp_path / "out")
    return path, tmp_path / "out"


def _sql(out, statement: str) -> None:
    conn = sqlite3.connect(out / STORE_NAME)
    conn.execute(statement)
    conn.commit()
    conn.close()


def test_the_check_reads_the_wal_of_a_store_left_unfinished(tmp_path):
    live, copy = tmp_path / "live", tmp_path / "copy"
    store = Store(live)
    store._conn.execute("PRAGMA wal_autocheckpoint=0")  # as a process killed before checkpoint
    store.write_run(_row("a"), _evals("a", [(1, 0.7)]))
    copy.mkdir()
    for name in (STORE_NAME, f"{STORE_NAME}-wal"):
        shutil.copyfile(live / name, copy / name)
    store.close()
    path = copy / STORE_NAME
    immutable = sqlite3.connect(f"{path.as_uri()}?mode=ro&immutable=1", uri=True)
    with pytest.raises(sqlite3.DatabaseError):  # what the old check saw: no tables, "damaged"
        immutable.execute("SELECT COUNT(*) FROM runs").fetchone()
    immutable.close()
    check_store(path)  # intact: no error
    with Store(copy, read_only=True) as reader:
        assert reader.statuses() == {"a": "ok"}


def test_a_missing_evaluations_table_is_repaired_runs_and_weights_kept(copy, caplog):
    path, out = copy
    with Store(out, read_only=True) as store:
        rows = len(store.evaluations_frame())
        runs = store.statuses()
    _sql(out, "DROP TABLE evaluations")
    check_store(out / STORE_NAME)  # not "another program", no advice to delete
    with Store(out, read_only=True) as store:  # read-only: an empty stand-in, the file untouched
        assert store.statuses() == runs and store.evaluations_frame().empty
        plan = plan_grid(load_config(path), out, store)
    assert (plan.to_train, plan.to_evaluate) == (0, len(runs))
    caplog.set_level(logging.WARNING)
    summary = run_grid(load_config(path), out, workers=1, show_progress=False)
    assert summary.exit_status == 0 and summary.trained == set()
    assert "lacked the table(s) evaluations" in caplog.text
    with Store(out, read_only=True) as store:
        assert store.statuses() == runs and len(store.evaluations_frame()) == rows


def test_stores_that_cannot_be_repaired_get_advice_that_deletes_nothing(tmp_path):
    path = tmp_path / STORE_NAME
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE songs (title TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="another program") as error:
        check_store(path)
    assert "--fresh" not in str(error.value) and "mv " in str(error.value)


def test_impossible_values_are_excluded_with_a_count_and_recomputed(copy, caplog):
    path, out = copy
    with Store(out, read_only=True) as store:
        rows = len(store.evaluations_frame())
    _sql(out, "UPDATE evaluations SET accuracy = 1.7 WHERE rowid = 1")
    _sql(out, "UPDATE evaluations SET loss = -2 WHERE rowid = 2")
    caplog.set_level(logging.WARNING)
    with Store(out, read_only=True) as store:
        assert len(store.evaluations_frame()) == rows - 2
        assert "2 evaluation row(s) with impossible values excluded" in caplog.text
    run_grid(load_config(path), out, workers=1, show_progress=False)  # the 1.7 row is redone
    with Store(out, read_only=True) as store:
        ev = store.evaluations_frame()
    assert len(ev) == rows - 1 and ev["accuracy"].between(0, 1).all()


def test_values_of_the_wrong_type_give_one_line_and_exit_2(copy, capsys):
    _, out = copy
    _sql(out, "UPDATE evaluations SET accuracy = 'abc' WHERE rowid = 1")
    with Store(out, read_only=True) as store, pytest.raises(StoreError, match="wrong type"):
        store.evaluations_frame()
    assert normzoo_main(["report", str(out)]) == 2
    printed = capsys.readouterr().out
    assert "Traceback" not in printed and printed.count("error:") == 1 and "'abc'" in printed


@pytest.mark.skipif(os.geteuid() != 0, reason="a read-only mount needs root (root writes anywhere)")
def test_report_on_a_read_only_dir_writes_elsewhere_and_leaves_the_store(copy, capsys, tmp_path):
    _, out = copy
    mount = tmp_path / "ro"
    mount.mkdir()
    if os.system(f"mount -t tmpfs -o size=16m tmpfs '{mount}' 2>/dev/null") != 0:
        pytest.skip("tmpfs cannot be mounted here")
    live = sqlite3.connect(out / STORE_NAME)  # a store left with a WAL, as after a kill
    live.execute("PRAGMA wal_autocheckpoint=0")
    live.execute("UPDATE runs SET error = 'edited in the WAL' WHERE rowid = 1")
    live.commit()
    try:
        shutil.copytree(out, mount / "out")
        live.close()
        assert (mount / "out" / f"{STORE_NAME}-wal").stat().st_size > 0
        before = {p.name: p.read_bytes() for p in (mount / "out").iterdir() if p.is_file()}
        assert os.system(f"mount -o remount,ro '{mount}'") == 0
        assert normzoo_main(["report", str(mount / "out")]) == 0
        printed = " ".join(capsys.readouterr().out.split())
        assert "is read-only: the report and CSVs are written to" in printed
        target = printed.split("are written to ")[1].split(" ")[0]
        assert tmp_path.root and os.path.isfile(os.path.join(target, "report.md"))
        after = {p.name: p.read_bytes() for p in (mount / "out").iterdir() if p.is_file()}
        assert after == before
        shutil.rmtree(target)
    finally:
        os.system(f"umount '{mount}'")


def test_a_renamed_experiment_reuses_its_runs_as_one_experiment(tmp_path, caplog):
    path = tmp_path / "grid.yaml"
    one = {**TWO, "experiment": {"name": "first"}, "train": {**TWO["train"], "seeds": 1}}
    path.write_text(yaml.safe_dump(one))
    out = tmp_path / "out"
    run_grid(load_config(path), out, workers=1, show_progress=False)
    caplog.set_level(logging.INFO)
    renamed = load_config(path, ["experiment.name=second", "train.seeds=2"])
    summary = run_grid(renamed, out, workers=1, show_progress=False)
    assert summary.exit_status == 0 and len(summary.trained) == 1  # seed 0 reused
    assert "now labelled 'second'" in caplog.text
    with Store(out, read_only=True) as store:
        ev = store.evaluations_frame()
    assert set(ev["experiment"]) == {"second"} and set(ev["seed"]) == {0, 1}


def test_a_version_2_store_is_read_and_migrated_its_rows_counted_stale(tmp_path):
    from normzoo.bench.plan.schema import RUN_COLUMNS
    from normzoo.bench.record import store_schema

    v2 = store_schema.SCHEMA_SQL
    for _, column, kind in store_schema.ADDED_COLUMNS:  # the schema as version 2 wrote it
        v2 = re.sub(rf",\s*{column} {re.escape(kind)}", "", v2)
    added = {column for _, column, _ in store_schema.ADDED_COLUMNS}
    assert not any(re.search(rf"\b{column}\b", v2) for column in added)
    older = tmp_path / "older"
    older.mkdir()
    conn = sqlite3.connect(older / STORE_NAME)
    conn.executescript(v2)
    conn.execute("PRAGMA user_version=2")
    conn.commit()
    conn.close()
    row = _row("a")
    run_columns = [c for c in RUN_COLUMNS if c not in added]
    values = [row[c] for c in run_columns]
    evaluation = {k: v for k, v in _evals("a", [(1, 0.7)])[0].items() if k not in added}
    conn = sqlite3.connect(older / STORE_NAME)
    conn.execute(
        f"INSERT INTO runs ({', '.join(run_columns)}) VALUES ({', '.join('?' * len(values))})",
        values,
    )
    conn.execute(
        f"INSERT INTO evaluations ({', '.join(evaluation)}) VALUES"
        f" ({', '.join('?' * len(evaluation))})",
        list(evaluation.values()),
    )
    conn.commit()
    conn.close()
    content = (older / STORE_NAME).read_bytes()
    with Store(older, read_only=True) as store:  # read as schema 3, the file untouched
        assert store.weights_hash("a") is None
        assert list(store.evaluated()["a"].values()) == [None]  # no fingerprint: stale
    assert (older / STORE_NAME).read_bytes() == content
    with Store(older) as store:
        assert store.statuses() == {"a": "ok"} and len(store.evaluations_frame()) == 1
        version = store._conn.execute("PRAGMA user_version").fetchone()[0]
    assert version == store_schema.SCHEMA_VERSION
