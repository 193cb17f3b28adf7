"""The store's SQLite schema: its version, tables and the columns added since version 2, the
migration of an older store, and `check_store`, which reads an existing file read-only and
refuses foreign, newer, older or damaged ones before anything is written.

``PRAGMA user_version`` holds `SCHEMA_VERSION`. A version-2 store gets `ADDED_COLUMNS` on open
(`migrate`; read-only opens see them through TEMP views instead); a normzoo store that lost a
table is repaired on open (the table recreated, its rows recomputed), never deleted.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from normzoo.bench.plan.schema import EVAL_COLUMNS, RUN_COLUMNS

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


def default_sql(kind: str) -> str:
    """The value an added column reads as in an older store: its SQL DEFAULT, else NULL."""
    match = re.search(r"DEFAULT (\S+)", kind)
    return match[1] if match else "NULL"


SCHEMA_SQL = """
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


class StoreError(ValueError):
    """An existing ``results.sqlite`` that this normzoo cannot use (left untouched)."""


# What a store of ours has in every migratable version (the added columns may be missing).
_REQUIRED = {
    table: set(columns) - {c for t, c, _ in ADDED_COLUMNS if t == table}
    for table, columns in (("runs", RUN_COLUMNS), ("evaluations", EVAL_COLUMNS))
}


_SQLITE_HEADER = b"SQLite format 3\x00"


def read_only_uri(path: Path) -> str:
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
    conn = sqlite3.connect(read_only_uri(path), uri=True)
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


def missing_tables(conn: sqlite3.Connection) -> list[str]:
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    return [t for t in ("runs", "evaluations", "curves") if t not in names]


def migrate(conn: sqlite3.Connection) -> None:
    """Add the `ADDED_COLUMNS` to an older store: its evaluations have no fingerprint, so they
    count as stale and are recomputed from the kept weights."""
    for table, column, kind in ADDED_COLUMNS:
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
