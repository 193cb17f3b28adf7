"""The stack columns of the runs table: stores written before them keep working."""

import sqlite3

from normzoo.bench.plan.schema import RUN_COLUMNS
from normzoo.bench.record.store import STORE_NAME, Store


def _row(key: str) -> dict:
    row = dict.fromkeys(RUN_COLUMNS)
    row.update(
        run_key=key,
        experiment="e",
        dataset="synthetic",
        backbone="small_cnn",
        norm="batch",
        norm_options="{}",
        train_batch_size=8,
        train_composition="iid",
        seed=0,
        status="ok",
        config_hash="h",
        config_json="{}",
        stack_size=3,
        stack_slot=2,
    )
    return row


def _older_store(out) -> None:
    """A store as written before the stack columns existed, holding one run."""
    with Store(out) as store:
        store.write_run({**_row("old"), "stack_size": 1, "stack_slot": 0})
    conn = sqlite3.connect(out / STORE_NAME)
    conn.execute("ALTER TABLE runs DROP COLUMN stack_slot")
    conn.execute("ALTER TABLE runs DROP COLUMN stack_size")
    conn.commit()
    conn.close()


def test_stack_columns_round_trip(tmp_path):
    with Store(tmp_path) as store:
        store.write_run(_row("a"))
        assert (store.run_row("a")["stack_size"], store.run_row("a")["stack_slot"]) == (3, 2)


def test_an_older_store_reads_its_runs_as_trained_alone(tmp_path):
    _older_store(tmp_path)
    with Store(tmp_path, read_only=True) as store:  # read-only: the file is not changed
        row = store.run_row("old")
        assert (row["stack_size"], row["stack_slot"]) == (1, 0)
    columns = {
        r[1] for r in sqlite3.connect(tmp_path / STORE_NAME).execute("PRAGMA table_info(runs)")
    }
    assert "stack_size" not in columns
    with Store(tmp_path) as store:  # writable: the columns are added, old runs get 1 and 0
        assert (store.run_row("old")["stack_size"], store.run_row("old")["stack_slot"]) == (1, 0)
        store.write_run(_row("new"))
        assert store.run_row("new")["stack_slot"] == 2
        assert len(store.runs_frame()) == 2
