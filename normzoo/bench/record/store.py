"""SQLite results store (``results.sqlite``): one atomic transaction per unit of work, resumable.

Only the parent process writes (workers return their results), so there is one writer; WAL mode
and a busy timeout still let readers (a notebook, the report) look at the file concurrently.
A trained run is one transaction, each batch of its evaluations another: a killed process leaves
whole units or nothing, and loses at most the evaluations in progress. Keys are unique; rewriting
a run (retraining it) replaces its row and drops the evaluations of the old model.

``PRAGMA user_version`` holds `SCHEMA_VERSION`; `check_store` reads an existing file read-only
and refuses foreign, older or damaged ones before anything is written.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from normzoo.bench.plan.schema import (
    CURVE_COLUMNS,
    EVAL_COLUMNS,
    PROVENANCE_COLUMNS,
    RUN_COLUMNS,
    SCHEMA_RUN_COLUMNS,
    TEST_KEYS,
    VERSION_COLUMNS,
)

__all__ = [
    "CURVE_COLUMNS",
    "EVAL_COLUMNS",
    "PROVENANCE_COLUMNS",
    "RUN_COLUMNS",
    "SCHEMA_RUN_COLUMNS",
    "VERSION_COLUMNS",
    "Store",
    "StoreError",
    "check_store",
]

STORE_NAME = "results.sqlite"
# Version 2: run keys cover training only, weights kept, provenance columns, wandb_logged.
SCHEMA_VERSION = 2

# The columns of an evaluation that name its test condition (with run_key: the primary key).
EVAL_KEY = TEST_KEYS

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_key TEXT PRIMARY KEY,
    experiment TEXT NOT NULL, dataset TEXT NOT NULL, backbone TEXT NOT NULL,
    norm TEXT NOT NULL, norm_options TEXT NOT NULL,
    train_batch_size INTEGER NOT NULL, train_composition TEXT NOT NULL, seed INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed', 'diverged')),
    error TEXT, val_accuracy REAL, train_seconds REAL, eval_seconds REAL,
    config_hash TEXT NOT NULL, config_json TEXT NOT NULL,
    started_at TEXT, finished_at TEXT,
    normzoo_version TEXT, git_sha TEXT, torch_version TEXT, lightning_version TEXT,
    timm_version TEXT, device TEXT,
    wandb_logged INTEGER NOT NULL DEFAULT 0,
    stack_size INTEGER NOT NULL DEFAULT 1, stack_slot INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS evaluations (
    run_key TEXT NOT NULL REFERENCES runs(run_key) ON DELETE CASCADE,
    test_batch_size INTEGER NOT NULL, stats_mode TEXT NOT NULL, shift TEXT NOT NULL,
    severity INTEGER NOT NULL, test_composition TEXT NOT NULL,
    accuracy REAL NOT NULL, loss REAL, n_test INTEGER NOT NULL, computed_as TEXT NOT NULL,
    PRIMARY KEY (run_key, test_batch_size, stats_mode, shift, severity, test_composition)
);
CREATE TABLE IF NOT EXISTS curves (
    run_key TEXT NOT NULL REFERENCES runs(run_key) ON DELETE CASCADE,
    step INTEGER NOT NULL, epoch INTEGER, metric TEXT NOT NULL, value REAL,
    PRIMARY KEY (run_key, metric, step)
);
"""


def now() -> str:
    """UTC timestamp in ISO 8601, as stored."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class StoreError(ValueError):
    """An existing ``results.sqlite`` that this normzoo cannot use (left untouched)."""


# Columns added to the runs table after schema 2 and their value for runs stored before them
# (every such run was trained alone): added on open, so older stores keep working.
_ADDED_RUN_COLUMNS = {"stack_size": 1, "stack_slot": 0}
_REQUIRED = {"runs": set(RUN_COLUMNS) - set(_ADDED_RUN_COLUMNS), "evaluations": set(EVAL_COLUMNS)}
_SQLITE_HEADER = b"SQLite format 3\x00"


def check_store(path: str | Path) -> None:
    """Raise `StoreError` if ``path`` exists and is not a store this normzoo can write.

    The file is opened read-only: a damaged, foreign or older store is never modified. A missing
    or empty file is fine (it becomes a new store).
    """
    path = Path(path)
    fix = "move it away, choose another --out, or pass --fresh to delete it"
    if not path.exists():
        return
    if not path.is_file():
        raise StoreError(f"{path} is not a file; {fix}")
    try:
        with path.open("rb") as f:
            head = f.read(len(_SQLITE_HEADER))
    except OSError as error:
        raise StoreError(f"cannot read {path}: {error.strerror}; fix its permissions") from error
    if not head:
        return
    if head != _SQLITE_HEADER:
        raise StoreError(f"{path} is not an SQLite file (not a normzoo results store); {fix}")
    try:
        # immutable: no locks, no -wal/-shm files created next to a file that may not be ours
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            columns = {
                table: {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                for table in _REQUIRED
            }
            tables = conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.DatabaseError as error:
        raise StoreError(f"{path} is damaged or truncated ({error}); {fix}") from error
    if check != "ok":
        raise StoreError(f"{path} is damaged ({check}); {fix}")
    if tables == 0:
        return
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} was written by a newer normzoo (store schema {version}, this one knows"
            f" {SCHEMA_VERSION}); upgrade normzoo or choose another --out"
        )
    if not columns["runs"] or not columns["evaluations"]:
        raise StoreError(f"{path} is an SQLite file of another program (no runs table); {fix}")
    if version < SCHEMA_VERSION:
        raise StoreError(
            f"{path} was written by an older normzoo (store schema {version}, this one writes"
            f" {SCHEMA_VERSION}: run keys now cover training only and weights are kept), so its"
            f" runs cannot be resumed; {fix}"
        )
    for table, required in _REQUIRED.items():
        if required - columns[table]:
            missing = ", ".join(sorted(required - columns[table]))
            raise StoreError(f"{path} has a foreign '{table}' table (lacks {missing}); {fix}")


class Store:
    """The results of one output dir: opens or creates ``out_dir/results.sqlite``.

    ``read_only=True`` opens an existing store without writing anything (`dry runs`); a missing
    store then reads as empty.
    """

    def __init__(self, out_dir: str | Path, read_only: bool = False) -> None:
        self.path = Path(out_dir) / STORE_NAME
        check_store(self.path)
        if read_only:
            target = self.path if self.path.exists() else None
            uri = f"{target.resolve().as_uri()}?mode=ro" if target else "file::memory:"
            self._conn = sqlite3.connect(uri, uri=True)
            if target is None:
                self._conn.executescript(_SCHEMA)
            else:  # an older store read as if it had the added columns (a view shadows it)
                added = self._missing_run_columns()
                if added:
                    values = ", ".join(f"{_ADDED_RUN_COLUMNS[c]} AS {c}" for c in added)
                    self._conn.execute(
                        f"CREATE TEMP VIEW runs AS SELECT *, {values} FROM main.runs"
                    )
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=60)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never torn
        self._conn.execute("PRAGMA foreign_keys=ON")
        with self._conn:
            self._conn.executescript(_SCHEMA)
            for column in self._missing_run_columns():
                self._conn.execute(
                    f"ALTER TABLE runs ADD COLUMN {column} INTEGER NOT NULL"
                    f" DEFAULT {_ADDED_RUN_COLUMNS[column]}"
                )
            self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _missing_run_columns(self) -> list[str]:
        present = {row[1] for row in self._conn.execute("PRAGMA table_info(runs)")}
        return [c for c in _ADDED_RUN_COLUMNS if c not in present]

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def write_run(
        self, run_row: dict, evaluations: Iterable[dict] = (), curves: Iterable[dict] = ()
    ) -> None:
        """Write a run (optionally with evaluations) and its training curves in one transaction,
        replacing its old rows: a rewritten run is a retrained model, the old model's
        evaluations and curves are dropped."""
        missing = set(RUN_COLUMNS) - set(run_row)
        if missing:
            raise ValueError(f"run row lacks columns {sorted(missing)}")
        run_values = [run_row[c] for c in RUN_COLUMNS]
        curve_values = [[run_row["run_key"], *(c[k] for k in CURVE_COLUMNS[1:])] for c in curves]
        with self._conn:  # one transaction: commit on success, rollback on any error
            self._conn.execute("DELETE FROM evaluations WHERE run_key = ?", (run_row["run_key"],))
            self._conn.execute("DELETE FROM curves WHERE run_key = ?", (run_row["run_key"],))
            self._conn.execute(
                f"INSERT OR REPLACE INTO runs ({', '.join(RUN_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(RUN_COLUMNS))})",
                run_values,
            )
            self._insert_evaluations(evaluations)
            self._conn.executemany(
                f"INSERT OR REPLACE INTO curves ({', '.join(CURVE_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(CURVE_COLUMNS))})",
                curve_values,
            )

    def write_evaluations(self, evaluations: Iterable[dict]) -> None:
        """Add evaluations of stored runs in one transaction (a condition's row is replaced)."""
        evaluations = list(evaluations)
        keys = {(e["run_key"],) for e in evaluations}
        with self._conn:
            self._insert_evaluations(evaluations, replace=True)
            # W&B holds the run without these: log it again (`not_in_wandb`)
            self._conn.executemany("UPDATE runs SET wandb_logged = 0 WHERE run_key = ?", keys)

    def _insert_evaluations(self, evaluations: Iterable[dict], replace: bool = False) -> None:
        values = [[e[c] for c in EVAL_COLUMNS] for e in evaluations]
        verb = "INSERT OR REPLACE" if replace else "INSERT"
        self._conn.executemany(
            f"{verb} INTO evaluations ({', '.join(EVAL_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(EVAL_COLUMNS))})",
            values,
        )

    def mark_failed(self, run_key: str, error: str) -> None:
        """Record that a stored run failed after training (in evaluation); kept for the retry."""
        with self._conn:
            self._conn.execute(
                "UPDATE runs SET status = 'failed', error = ?, finished_at = ? WHERE run_key = ?",
                (error, now(), run_key),
            )

    def update_run(self, run_key: str, **values) -> None:
        """Set columns of a stored run (e.g. ``eval_seconds``, ``finished_at``)."""
        unknown = set(values) - set(RUN_COLUMNS)
        if unknown:
            raise ValueError(f"unknown run columns {sorted(unknown)}; allowed: {RUN_COLUMNS}")
        assignments = ", ".join(f"{c} = ?" for c in values)
        with self._conn:
            self._conn.execute(
                f"UPDATE runs SET {assignments} WHERE run_key = ?", [*values.values(), run_key]
            )

    def statuses(self) -> dict[str, str]:
        """run_key -> status of every recorded run."""
        return dict(self._conn.execute("SELECT run_key, status FROM runs").fetchall())

    def run_row(self, run_key: str) -> dict | None:
        """A stored run as a dict of `RUN_COLUMNS` (None when not stored)."""
        cursor = self._conn.execute(
            f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE run_key = ?", (run_key,)
        )
        row = cursor.fetchone()
        return None if row is None else dict(zip(RUN_COLUMNS, row, strict=True))

    def evaluation_rows(self, run_key: str) -> list[dict]:
        """A stored run's evaluations as dicts of `EVAL_COLUMNS`."""
        cursor = self._conn.execute(
            f"SELECT {', '.join(EVAL_COLUMNS)} FROM evaluations WHERE run_key = ? ORDER BY"
            f" {', '.join(EVAL_KEY)}",
            (run_key,),
        )
        return [dict(zip(EVAL_COLUMNS, row, strict=True)) for row in cursor]

    def versions(self) -> dict[str, tuple]:
        """run_key -> the `VERSION_COLUMNS` values (the code and libraries that trained it)."""
        rows = self._conn.execute(f"SELECT run_key, {', '.join(VERSION_COLUMNS)} FROM runs")
        return {row[0]: tuple(row[1:]) for row in rows}

    def evaluated(self) -> dict[str, set[tuple]]:
        """run_key -> the stored test conditions, as tuples of `EVAL_KEY` values."""
        found: dict[str, set[tuple]] = {}
        rows = self._conn.execute(f"SELECT run_key, {', '.join(EVAL_KEY)} FROM evaluations")
        for row in rows:
            found.setdefault(row[0], set()).add(tuple(row[1:]))
        return found

    def mark_wandb_logged(self, run_key: str) -> None:
        """Remember that the run is in W&B (resume logs only the stored runs that are not)."""
        with self._conn:
            self._conn.execute("UPDATE runs SET wandb_logged = 1 WHERE run_key = ?", (run_key,))

    def not_in_wandb(self, run_keys: Iterable[str] | None = None) -> list[str]:
        """Keys of stored runs not yet logged to W&B, optionally only among ``run_keys``."""
        keys = [r[0] for r in self._conn.execute("SELECT run_key FROM runs WHERE wandb_logged = 0")]
        if run_keys is None:
            return keys
        wanted = set(run_keys)
        return [k for k in keys if k in wanted]

    def runs_frame(self, run_keys: Iterable[str] | None = None) -> pd.DataFrame:
        """All recorded runs (every status), optionally only those with the given keys."""
        frame = pd.read_sql_query(
            f"SELECT {', '.join(RUN_COLUMNS)} FROM runs ORDER BY experiment, seed, norm, "
            "train_batch_size, train_composition, run_key",
            self._conn,
        )
        return _only(frame, run_keys)

    def evaluations_frame(self, run_keys: Iterable[str] | None = None) -> pd.DataFrame:
        """One row per (ok run, test condition) with the run's columns joined in."""
        run_cols = ", ".join(f"r.{c}" for c in SCHEMA_RUN_COLUMNS)
        eval_cols = ", ".join(f"e.{c}" for c in EVAL_COLUMNS[1:])
        frame = pd.read_sql_query(
            f"SELECT {run_cols}, {eval_cols} FROM evaluations e JOIN runs r USING (run_key) "
            "WHERE r.status = 'ok' ORDER BY r.run_key, e.test_batch_size, e.stats_mode, "
            "e.shift, e.severity, e.test_composition",
            self._conn,
        )
        return _only(frame, run_keys)

    def curves_frame(self, run_keys: Iterable[str] | None = None) -> pd.DataFrame:
        """Training curves in long form: one row per (run, metric, step), with ``epoch``."""
        frame = pd.read_sql_query(
            f"SELECT {', '.join(CURVE_COLUMNS)} FROM curves ORDER BY run_key, metric, step",
            self._conn,
        )
        return _only(frame, run_keys)

    def export_csv(self, out_dir: str | Path, run_keys: Iterable[str] | None = None) -> list[Path]:
        """Write ``runs.csv`` and ``evaluations.csv`` into ``out_dir``; returns their paths."""
        out_dir = Path(out_dir)
        paths = [out_dir / "runs.csv", out_dir / "evaluations.csv"]
        self.runs_frame(run_keys).drop(columns=["config_json"]).to_csv(paths[0], index=False)
        self.evaluations_frame(run_keys).to_csv(paths[1], index=False)
        return paths


def _only(frame: pd.DataFrame, run_keys: Iterable[str] | None) -> pd.DataFrame:
    if run_keys is None:
        return frame
    return frame[frame["run_key"].isin(set(run_keys))].reset_index(drop=True)


def config_json(obj: dict) -> str:
    """Serialize a run's config for the store."""
    return json.dumps(obj, sort_keys=True, default=str)
