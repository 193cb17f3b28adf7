"""SQLite results store (``results.sqlite``): one atomic transaction per unit of work, resumable.

Only the parent process writes (workers return their results), so there is one writer; WAL mode
and a busy timeout still let readers (a notebook, the report) look at the file concurrently.
A trained run is one transaction, each batch of its evaluations another: a killed process leaves
whole units or nothing, and loses at most the evaluations in progress. Keys are unique; rewriting
a run (retraining it) replaces its row and drops the evaluations of the old model.

``PRAGMA user_version`` holds `SCHEMA_VERSION`; `check_store` reads an existing file read-only
(its WAL included) and refuses foreign, older or damaged ones before anything is written; a
normzoo store that lost a table is repaired on open (the table recreated, its rows recomputed),
never deleted. Beyond the shared columns the store keeps, per evaluation, the fingerprint of
everything it depends on (`normzoo.bench.execute.evaluate.condition_fingerprint`) and, per run,
the sha256 of its weights file. Values read back are validated: impossible accuracies and losses
are excluded with a warning that counts them, values of the wrong type raise `StoreError`.
"""

from __future__ import annotations

import json
import logging
import math
import re
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

log = logging.getLogger(__name__)

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
# Version 3: evaluations.fingerprint and .ece (expected calibration error); runs.weights_sha256,
# what training reached (train_accuracy, train_loss, train_accuracy_train_mode), the learning rate
# (lr) and the role (compare/tune). A version-2 store is migrated by adding `ADDED_COLUMNS`.
SCHEMA_VERSION = 3
MIGRATABLE_VERSIONS = (2,)
# Columns added since version 2: (table, column, SQL type). An older store gets them as NULL, so
# its evaluations (no fingerprint) count as stale and are recomputed from the kept weights.
# Runs stored before stacking were trained alone (stack of 1, slot 0) and before tuning were
# compared runs; the other added values are unknown (NULL).
ROLE_COLUMN = "TEXT NOT NULL DEFAULT 'compare' CHECK (role IN ('compare', 'tune'))"
ADDED_COLUMNS = (
    ("runs", "weights_sha256", "TEXT"),
    ("runs", "train_accuracy", "REAL"),
    ("runs", "train_loss", "REAL"),
    ("runs", "train_accuracy_train_mode", "REAL"),
    ("runs", "lr", "REAL"),
    ("runs", "role", ROLE_COLUMN),
    ("runs", "stack_size", "INTEGER NOT NULL DEFAULT 1"),
    ("runs", "stack_slot", "INTEGER NOT NULL DEFAULT 0"),
    ("evaluations", "fingerprint", "TEXT"),
    ("evaluations", "ece", "REAL"),
)


def _default_sql(kind: str) -> str:
    """The value an added column reads as in an older store: its SQL DEFAULT, else NULL."""
    match = re.search(r"DEFAULT (\S+)", kind)
    return match[1] if match else "NULL"


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
    weights_sha256 TEXT,
    train_accuracy REAL, train_loss REAL, train_accuracy_train_mode REAL, lr REAL,
    role TEXT NOT NULL DEFAULT 'compare' CHECK (role IN ('compare', 'tune')),
    stack_size INTEGER NOT NULL DEFAULT 1, stack_slot INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS evaluations (
    run_key TEXT NOT NULL REFERENCES runs(run_key) ON DELETE CASCADE,
    test_batch_size INTEGER NOT NULL, stats_mode TEXT NOT NULL, shift TEXT NOT NULL,
    severity INTEGER NOT NULL, test_composition TEXT NOT NULL,
    accuracy REAL NOT NULL, loss REAL, n_test INTEGER NOT NULL, computed_as TEXT NOT NULL,
    ece REAL,
    fingerprint TEXT,
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


# What a store of ours has in every migratable version (the added columns may be missing).
_REQUIRED = {
    table: set(columns) - {c for t, c, _ in ADDED_COLUMNS if t == table}
    for table, columns in (("runs", RUN_COLUMNS), ("evaluations", EVAL_COLUMNS))
}
_SQLITE_HEADER = b"SQLite format 3\x00"


def _read_only_uri(path: Path) -> str:
    """An SQLite URI that reads ``path`` without writing it.

    With a ``-wal`` file beside it the store's last transactions live there, so it is read
    through SQLite's WAL machinery (``mode=ro``); ``immutable=1`` would ignore the WAL and call
    an intact store damaged. Without one nothing needs locks: ``immutable=1`` creates no
    ``-wal``/``-shm`` files next to a file that may not be ours.
    """
    wal = path.with_name(path.name + "-wal")
    query = "mode=ro" if wal.exists() and wal.stat().st_size else "mode=ro&immutable=1"
    return f"{path.resolve().as_uri()}?{query}"


def _inspect(path: Path) -> tuple[str, int, dict[str, set[str]], int]:
    """(quick_check, user_version, columns per required table, table count), read-only."""
    conn = sqlite3.connect(_read_only_uri(path), uri=True)
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
    return check, version, columns, tables


def check_store(path: str | Path) -> None:
    """Raise `StoreError` if ``path`` exists and is not a store this normzoo can write.

    The file is opened read-only: a damaged, foreign or older store is never modified. A missing
    or empty file is fine (it becomes a new store), and so is a normzoo store that lost a table
    (`Store` recreates it; its rows are recomputed). The advice never deletes a store.
    """
    path = Path(path)
    fix = f"move it away (e.g. mv '{path}' '{path}.bak') or choose another --out"
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
        check, version, columns, tables = _inspect(path)
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
    ours = version == SCHEMA_VERSION or version in MIGRATABLE_VERSIONS
    if not ours and not columns["runs"]:
        raise StoreError(f"{path} is an SQLite file of another program (no runs table); {fix}")
    if not ours:
        raise StoreError(
            f"{path} was written by an older normzoo (store schema {version}, this one writes"
            f" {SCHEMA_VERSION}: run keys now cover training only and weights are kept), so its"
            f" runs cannot be resumed; {fix}"
        )
    for table, required in _REQUIRED.items():
        if columns[table] and required - columns[table]:
            missing = ", ".join(sorted(required - columns[table]))
            raise StoreError(f"{path} has a foreign '{table}' table (lacks {missing}); {fix}")


def _missing_tables(conn: sqlite3.Connection) -> list[str]:
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    return [t for t in ("runs", "evaluations", "curves") if t not in names]


def _migrate(conn: sqlite3.Connection) -> None:
    """Add the `ADDED_COLUMNS` to an older store: its evaluations have no fingerprint, so they
    count as stale and are recomputed from the kept weights."""
    for table, column, kind in ADDED_COLUMNS:
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


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
            uri = _read_only_uri(self.path) if exists else "file::memory:"
            self._conn = sqlite3.connect(uri, uri=True)
            self._shadow_missing()
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=60)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never torn
        self._conn.execute("PRAGMA foreign_keys=ON")
        missing = _missing_tables(self._conn)
        with self._conn:
            self._conn.executescript(_SCHEMA)
            _migrate(self._conn)
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
        for table in _missing_tables(self._conn):
            start = _SCHEMA.index(f"CREATE TABLE IF NOT EXISTS {table}")
            statement = _SCHEMA[start : _SCHEMA.index(";", start)]
            statement = statement.replace("CREATE TABLE IF NOT EXISTS", "CREATE TEMP TABLE")
            self._conn.execute(statement.replace("REFERENCES runs(run_key) ON DELETE CASCADE", ""))
        for table in dict.fromkeys(table for table, _, _ in ADDED_COLUMNS):
            present = {row[1] for row in self._conn.execute(f"PRAGMA table_info({table})")}
            kinds = {c: kind for t, c, kind in ADDED_COLUMNS if t == table}
            absent = [c for c in kinds if c not in present]
            if absent:
                extra = ", ".join(f"{_default_sql(kinds[column])} AS {column}" for column in absent)
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
