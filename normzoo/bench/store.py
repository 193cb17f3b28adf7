"""SQLite results store (``results.sqlite``): one atomic transaction per finished run, resumable.

Only the parent process writes (workers return their results), so there is one writer; WAL mode
and a busy timeout still let readers (a notebook, the report) look at the file concurrently.
A run and all its evaluations are written in one transaction: a killed process leaves either the
whole run or nothing. Keys are unique; rewriting a run (``--retry-failed``) replaces its rows.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from normzoo.bench.schema import CURVE_COLUMNS, EVAL_COLUMNS, RUN_COLUMNS, SCHEMA_RUN_COLUMNS

STORE_NAME = "results.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_key TEXT PRIMARY KEY,
    experiment TEXT NOT NULL, dataset TEXT NOT NULL, backbone TEXT NOT NULL,
    norm TEXT NOT NULL, norm_options TEXT NOT NULL,
    train_batch_size INTEGER NOT NULL, train_composition TEXT NOT NULL, seed INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed', 'diverged')),
    error TEXT, val_accuracy REAL, train_seconds REAL, eval_seconds REAL,
    config_hash TEXT NOT NULL, config_json TEXT NOT NULL,
    started_at TEXT, finished_at TEXT
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


class Store:
    """The results of one output dir: opens or creates ``out_dir/results.sqlite``."""

    def __init__(self, out_dir: str | Path) -> None:
        self.path = Path(out_dir) / STORE_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=60)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def write_run(
        self, run_row: dict, evaluations: Iterable[dict], curves: Iterable[dict] = ()
    ) -> None:
        """Write a finished run, its evaluations and its training curves in one transaction
        (replacing old rows)."""
        missing = set(RUN_COLUMNS) - set(run_row)
        if missing:
            raise ValueError(f"run row lacks columns {sorted(missing)}")
        run_values = [run_row[c] for c in RUN_COLUMNS]
        eval_values = [[e[c] for c in EVAL_COLUMNS] for e in evaluations]
        curve_values = [[run_row["run_key"], *(c[k] for k in CURVE_COLUMNS[1:])] for c in curves]
        with self._conn:  # one transaction: commit on success, rollback on any error
            self._conn.execute("DELETE FROM evaluations WHERE run_key = ?", (run_row["run_key"],))
            self._conn.execute("DELETE FROM curves WHERE run_key = ?", (run_row["run_key"],))
            self._conn.execute(
                f"INSERT OR REPLACE INTO runs ({', '.join(RUN_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(RUN_COLUMNS))})",
                run_values,
            )
            self._conn.executemany(
                f"INSERT INTO evaluations ({', '.join(EVAL_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(EVAL_COLUMNS))})",
                eval_values,
            )
            self._conn.executemany(
                f"INSERT OR REPLACE INTO curves ({', '.join(CURVE_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(CURVE_COLUMNS))})",
                curve_values,
            )

    def statuses(self) -> dict[str, str]:
        """run_key -> status of every recorded run."""
        return dict(self._conn.execute("SELECT run_key, status FROM runs").fetchall())

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
