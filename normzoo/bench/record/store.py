"""SQLite results store (``results.sqlite``): one atomic transaction per unit of work, resumable.

Only the parent process writes (workers return their results), so there is one writer; WAL mode
and a busy timeout still let readers (a notebook, the report) look at the file concurrently.
A trained run is one transaction, each batch of its evaluations another: a killed process leaves
whole units or nothing, and loses at most the evaluations in progress. Keys are unique; rewriting
a run (retraining it) replaces its row and drops the evaluations of the old model.

The schema, its migration and `check_store` (refusing foreign, older or damaged files before
anything is written) live in `normzoo.bench.record.store_schema`. Beyond the shared columns
the store keeps, per evaluation, the fingerprint of everything it depends on
(`normzoo.bench.execute.evaluate.condition_fingerprint`) and, per run, the sha256 of its weights
file. Values read back are validated: impossible accuracies and losses are excluded with a
warning that counts them, values of the wrong type raise `StoreError`.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from normzoo.bench.plan.schema import (
    CURVE_COLUMNS,
    EVAL_COLUMNS,
    RUN_COLUMNS,
    SCHEMA_RUN_COLUMNS,
    TEST_KEYS,
    VERSION_COLUMNS,
)
from normzoo.bench.record.store_schema import (
    ADDED_COLUMNS,
    SCHEMA_SQL,
    SCHEMA_VERSION,
    StoreError,
    check_store,
    default_sql,
    migrate,
    missing_tables,
    read_only_uri,
)

log = logging.getLogger(__name__)


STORE_NAME = "results.sqlite"


# The columns of an evaluation that name its test condition (with run_key: the primary key).
EVAL_KEY = TEST_KEYS


def now() -> str:
    """UTC timestamp in ISO 8601, as stored."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# How long a writer waits for another process's lock before giving up.
BUSY_SECONDS = 60.0


def _use_wal(conn: sqlite3.Connection) -> None:
    """Put the store in WAL mode (persistent in the file, so usually already set).

    Switching the journal mode can fail with "database is locked" at once, without SQLite's busy
    handler, while another process creates the same store (two invocations started together hit
    it about once in 200 openings here): retried until `BUSY_SECONDS`, as any other lock is."""
    deadline = time.monotonic() + BUSY_SECONDS
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class Store:
    """The results of one output dir: opens or creates ``out_dir/results.sqlite``.

    ``read_only=True`` opens an existing store without writing anything (`dry runs`); a missing
    store then reads as empty.
    """

    def __init__(self, out_dir: str | Path, read_only: bool = False) -> None:
        self.path = Path(out_dir) / STORE_NAME
        check_store(self.path)
        if read_only:
            exists = self.path.exists() and self.path.stat().st_size > 0
            uri = read_only_uri(self.path) if exists else "file::memory:"
            self._conn = sqlite3.connect(uri, uri=True)
            self._shadow_missing()
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=BUSY_SECONDS)
        _use_wal(self._conn)
        self._conn.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never torn
        self._conn.execute("PRAGMA foreign_keys=ON")
        missing = missing_tables(self._conn)
        with self._conn:
            self._conn.executescript(SCHEMA_SQL)
            migrate(self._conn)
            self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        if 0 < len(missing) < 3:
            log.warning(
                "%s lacked the table(s) %s: recreated; the runs and weights it holds are kept and"
                " the missing rows are recomputed",
                self.path,
                ", ".join(missing),
            )

    def _shadow_missing(self) -> None:
        """Read-only: empty TEMP tables stand in for missing ones, TEMP views add the columns of
        `ADDED_COLUMNS` to an older store (the file itself is never written)."""
        for table in missing_tables(self._conn):
            start = SCHEMA_SQL.index(f"CREATE TABLE IF NOT EXISTS {table}")
            statement = SCHEMA_SQL[start : SCHEMA_SQL.index(";", start)]
            statement = statement.replace("CREATE TABLE IF NOT EXISTS", "CREATE TEMP TABLE")
            self._conn.execute(statement.replace("REFERENCES runs(run_key) ON DELETE CASCADE", ""))
        for table in dict.fromkeys(table for table, _, _ in ADDED_COLUMNS):
            present = {row[1] for row in self._conn.execute(f"PRAGMA table_info({table})")}
            kinds = {c: kind for t, c, kind in ADDED_COLUMNS if t == table}
            absent = [c for c in kinds if c not in present]
            if absent:
                extra = ", ".join(f"{default_sql(kinds[column])} AS {column}" for column in absent)
                self._conn.execute(
                    f"CREATE TEMP VIEW {table} AS SELECT *, {extra} FROM main.{table}"
                )

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def write_run(
        self,
        run_row: dict,
        evaluations: Iterable[dict] = (),
        curves: Iterable[dict] = (),
        weights_sha256: str | None = None,
    ) -> None:
        """Write a run (optionally with evaluations) and its training curves in one transaction,
        replacing its old rows: a rewritten run is a retrained model, the old model's
        evaluations and curves are dropped, unless the retrained weights hash to the recorded
        ``weights_sha256`` (the same model bit for bit: its evaluations stay valid)."""
        missing = set(RUN_COLUMNS) - set(run_row)
        if missing:
            raise ValueError(f"run row lacks columns {sorted(missing)}")
        run_values = [run_row[c] for c in RUN_COLUMNS]
        curve_values = [[run_row["run_key"], *(c[k] for k in CURVE_COLUMNS[1:])] for c in curves]
        key = run_row["run_key"]
        same_model = weights_sha256 is not None and weights_sha256 == self.weights_hash(key)
        with self._conn:  # one transaction: commit on success, rollback on any error
            if not same_model:
                self._conn.execute("DELETE FROM evaluations WHERE run_key = ?", (key,))
            self._conn.execute("DELETE FROM curves WHERE run_key = ?", (key,))
            self._conn.execute(
                f"INSERT OR REPLACE INTO runs ({', '.join(RUN_COLUMNS)}, weights_sha256) "
                f"VALUES ({', '.join('?' * (len(RUN_COLUMNS) + 1))})",
                [*run_values, weights_sha256],
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
        values = [[*(e[c] for c in EVAL_COLUMNS), e.get("fingerprint")] for e in evaluations]
        verb = "INSERT OR REPLACE" if replace else "INSERT"
        self._conn.executemany(
            f"{verb} INTO evaluations ({', '.join(EVAL_COLUMNS)}, fingerprint) "
            f"VALUES ({', '.join('?' * (len(EVAL_COLUMNS) + 1))})",
            values,
        )

    def weights_hash(self, run_key: str) -> str | None:
        """The sha256 recorded for a run's weights file (None: not recorded)."""
        row = self._conn.execute(
            "SELECT weights_sha256 FROM runs WHERE run_key = ?", (run_key,)
        ).fetchone()
        return None if row is None else row[0]

    def relabel(self, run_keys: Iterable[str], experiment: str) -> int:
        """Give stored runs the experiment label ``experiment``; returns how many changed.

        The name is a label, not identity (run keys do not hash it): a renamed experiment reuses
        its runs and keeps one experiment for the statistics."""
        keys = [(experiment, key, experiment) for key in run_keys]
        with self._conn:
            before = self._conn.total_changes
            self._conn.executemany(
                "UPDATE runs SET experiment = ? WHERE run_key = ? AND experiment != ?", keys
            )
            return self._conn.total_changes - before

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

    def evaluated(self) -> dict[str, dict[tuple, str | None]]:
        """run_key -> {stored test condition (tuple of `EVAL_KEY` values): its fingerprint}.

        Rows with impossible or mistyped numbers are left out, so they are recomputed."""
        found: dict[str, dict[tuple, str | None]] = {}
        rows = self._conn.execute(
            f"SELECT run_key, {', '.join(EVAL_KEY)}, fingerprint FROM evaluations"
            " WHERE typeof(accuracy) IN ('real', 'integer') AND accuracy BETWEEN 0 AND 1"
        )
        for row in rows:
            found.setdefault(row[0], {})[tuple(row[1:-1])] = row[-1]
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
        self._check_types(run_keys)
        return _plausible(_only(frame, run_keys), self.path)

    def _check_types(self, run_keys: Iterable[str] | None) -> None:
        """Raise `StoreError` naming the first evaluation whose numbers are not numbers."""
        numeric = "('real', 'integer')"
        rows = self._conn.execute(
            f"SELECT run_key, {', '.join(EVAL_KEY)}, accuracy, loss, n_test FROM evaluations"
            f" WHERE typeof(accuracy) NOT IN {numeric} OR typeof(n_test) NOT IN {numeric}"
            f" OR typeof(loss) NOT IN ('real', 'integer', 'null')"
        ).fetchall()
        wanted = None if run_keys is None else set(run_keys)
        rows = [row for row in rows if wanted is None or row[0] in wanted]
        if rows:
            key, *condition, accuracy, loss, n_test = rows[0]
            raise StoreError(
                f"{self.path}: {len(rows)} evaluation row(s) hold values of the wrong type, e.g."
                f" run {key} condition {tuple(condition)}: accuracy={accuracy!r}, loss={loss!r},"
                f" n_test={n_test!r} (numbers expected); the store was edited or damaged: restore"
                " it, or delete those rows (their conditions are then recomputed on the next run)"
            )

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


def impossible(frame: pd.DataFrame) -> pd.Series:
    """Rows whose numbers no evaluation can produce: accuracy outside [0, 1], a negative or
    infinite loss (a non-finite loss is stored as NULL), no test samples."""
    accuracy = pd.to_numeric(frame["accuracy"], errors="coerce")
    loss = pd.to_numeric(frame["loss"], errors="coerce")
    bad_loss = loss.notna() & ((loss < 0) | ~loss.map(lambda v: math.isfinite(v)))
    return ~accuracy.between(0, 1) | bad_loss | (pd.to_numeric(frame["n_test"]) < 1)


def _plausible(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    bad = impossible(frame)
    if bad.any():
        first = frame[bad].iloc[0]
        log.warning(
            "%s: %d evaluation row(s) with impossible values excluded (accuracy outside [0, 1],"
            " negative or infinite loss), e.g. run %s %s/%s: accuracy %r, loss %r; the store was"
            " edited or damaged",
            path,
            int(bad.sum()),
            first["run_key"],
            first["stats_mode"],
            first["shift"],
            first["accuracy"],
            first["loss"],
        )
    return frame[~bad].reset_index(drop=True)


def _only(frame: pd.DataFrame, run_keys: Iterable[str] | None) -> pd.DataFrame:
    if run_keys is None:
        return frame
    return frame[frame["run_key"].isin(set(run_keys))].reset_index(drop=True)


def config_json(obj: dict) -> str:
    """Serialize a run's config for the store."""
    return json.dumps(obj, sort_keys=True, default=str)
