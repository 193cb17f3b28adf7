"""Compare the results of two output dirs, timing and provenance aside.

python benchmarks/store_diff.py runs/quick /tmp/other/quick

Dumps the ``runs``, ``evaluations`` and ``curves`` tables of each ``results.sqlite`` sorted by
their keys, without the columns that legitimately differ between two identical computations
(wall-clock times, timestamps, code/library versions, device, W&B bookkeeping), and reports
whether they are identical; with differences, the first rows that differ. Exit 0 when identical,
1 when not. Used to show that a refactoring changed no number (a store is reproducible bit for
bit on one machine).
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path

from normzoo.bench.plan.schema import PROVENANCE_COLUMNS

# Columns that differ between two runs of the same computation: times, provenance (versions,
# device), W&B bookkeeping, and the experiment name (a label, not identity).
IGNORED = {
    "train_seconds",
    "eval_seconds",
    "started_at",
    "finished_at",
    *PROVENANCE_COLUMNS,
    "wandb_logged",
    "experiment",
}


def dump(path: Path, table: str) -> tuple[list[str], list[tuple]]:
    """The table's kept columns and its rows, sorted."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
        columns = [row[1] for row in con.execute(f"PRAGMA table_info({table})")]
        kept = [c for c in columns if c not in IGNORED]
        if not kept:
            return [], []
        rows = con.execute(f"SELECT {', '.join(kept)} FROM {table}").fetchall()
    return kept, sorted(rows, key=repr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="output dir (or results.sqlite)")
    parser.add_argument("b", type=Path, help="output dir (or results.sqlite)")
    parser.add_argument("--tables", default="runs,evaluations,curves")
    args = parser.parse_args(argv)
    paths = [p / "results.sqlite" if p.is_dir() else p for p in (args.a, args.b)]
    same = True
    for table in args.tables.split(","):
        (cols_a, rows_a), (cols_b, rows_b) = dump(paths[0], table), dump(paths[1], table)
        shared = [c for c in cols_a if c in cols_b]
        if cols_a != cols_b:
            print(f"{table}: columns differ; comparing the {len(shared)} shared ones")
            ia, ib = [cols_a.index(c) for c in shared], [cols_b.index(c) for c in shared]
            rows_a = sorted((tuple(r[i] for i in ia) for r in rows_a), key=repr)
            rows_b = sorted((tuple(r[i] for i in ib) for r in rows_b), key=repr)
        if rows_a == rows_b:
            print(f"{table}: {len(rows_a)} rows identical ({len(shared)} columns)")
            continue
        same = False
        print(f"{table}: DIFFERENT ({len(rows_a)} vs {len(rows_b)} rows)")
        only_a = sorted(set(rows_a) - set(rows_b), key=repr)[:3]
        only_b = sorted(set(rows_b) - set(rows_a), key=repr)[:3]
        for row in only_a:
            print("  only in a:", dict(zip(shared, row, strict=True)))
        for row in only_b:
            print("  only in b:", dict(zip(shared, row, strict=True)))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
