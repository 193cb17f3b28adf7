"""Selection of evaluation rows: labels, default test slice, summaries over seeds.

Every function returns a new frame and leaves its arguments as they were.
"""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pandas as pd

from normzoo import stats
from normzoo.bench.plan.schema import (
    REPORT_EVALUATION_COLUMNS,
    REPORT_RUN_COLUMNS,
    SETTING_KEYS,
    TEST_KEYS,
    TRAIN_KEYS,
)

log = logging.getLogger(__name__)

RUN_COLUMNS = REPORT_RUN_COLUMNS
EVALUATION_COLUMNS = REPORT_EVALUATION_COLUMNS


def check_columns(frame: pd.DataFrame, required: tuple[str, ...], name: str) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{name} lacks columns {missing}; it must follow the Results schema "
            f"(export it with the results store) with columns {list(required)}"
        )


def method_label(norm: str, norm_options: str | dict | None) -> str:
    """``norm``, or ``norm(key=value,...)`` with options (as the benchmark config labels it)."""
    options = norm_options
    if isinstance(options, str):
        try:
            options = json.loads(options) if options.strip() else {}
        except json.JSONDecodeError as error:
            raise ValueError(
                f"norm_options {norm_options!r} of norm {norm!r} is not JSON; the results store "
                "writes a JSON object such as '{}' or '{\"groups\": 8}'"
            ) from error
    if not options or (isinstance(options, float) and np.isnan(options)):
        return norm
    return f"{norm}(" + ",".join(f"{k}={v}" for k, v in sorted(options.items())) + ")"


def natural_key(value: object) -> tuple:
    """Sort key that orders numbers inside strings numerically ("bs 2" < "bs 16")."""
    parts = re.split(r"(\d+(?:\.\d+)?)", str(value))
    return tuple((0, float(p)) if i % 2 else (1, p) for i, p in enumerate(parts))


def prepare(evaluations: pd.DataFrame) -> pd.DataFrame:
    """Finished evaluations with a ``method`` label; NaN condition keys shown as ``-``."""
    check_columns(evaluations, EVALUATION_COLUMNS, "evaluations")
    ev = evaluations.copy()
    if "status" in ev.columns:
        ev = ev[ev["status"] == "ok"]
    ev = _valid_accuracies(ev)
    labels = {
        (n, str(o)): method_label(n, o)
        for n, o in ev[["norm", "norm_options"]].drop_duplicates().itertuples(index=False)
    }
    ev["method"] = [
        labels[(n, str(o))] for n, o in zip(ev["norm"], ev["norm_options"], strict=True)
    ]
    for key in (*TRAIN_KEYS, *TEST_KEYS):
        if ev[key].isna().any():  # pandas group-bys drop NaN keys; keep those rows visible
            ev[key] = ev[key].astype(object).where(ev[key].notna(), "-")
    return ev[ev["accuracy"].notna()].reset_index(drop=True)


def _valid_accuracies(ev: pd.DataFrame) -> pd.DataFrame:
    """Accuracies as numbers in [0, 1]: a value that is not a number raises ValueError (one
    line, naming the run); a number outside [0, 1] is excluded with a warning that counts."""
    accuracy = pd.to_numeric(ev["accuracy"], errors="coerce")
    mistyped = accuracy.isna() & ev["accuracy"].notna()
    if mistyped.any():
        first = ev[mistyped].iloc[0]
        raise ValueError(
            f"evaluations: {int(mistyped.sum())} accuracy value(s) are not numbers, e.g."
            f" {first['accuracy']!r} of run {first['run_key']}; the results were edited or"
            " damaged: restore them or drop those rows"
        )
    impossible = accuracy.notna() & ~accuracy.between(0, 1)
    if impossible.any():
        log.warning(
            "evaluations: %d row(s) with an accuracy outside [0, 1] excluded",
            int(impossible.sum()),
        )
    return ev[~impossible].assign(accuracy=accuracy[~impossible])


def prefer_stats_mode(ev: pd.DataFrame, mode: str = "running") -> pd.DataFrame:
    """Rows with stats mode ``mode`` per method (the method's first mode if it lacks ``mode``)."""
    if ev.empty:
        return ev
    first = ev.groupby("method")["stats_mode"].transform(lambda s: sorted(s.unique())[0])
    has_mode = ev.groupby("method")["stats_mode"].transform(lambda s: bool((s == mode).any()))
    return ev[np.where(has_mode, ev["stats_mode"] == mode, ev["stats_mode"] == first)]


def default_test_slice(ev: pd.DataFrame) -> pd.DataFrame:
    """Clean i.i.d. test batches of the largest test batch size, running statistics preferred."""
    if ev.empty:
        return ev
    composition = (
        "iid" if (ev["test_composition"] == "iid").any() else ev["test_composition"].mode()[0]
    )
    clean = "clean" if (ev["shift"] == "clean").any() else ev["shift"].mode()[0]
    ev = ev[(ev["shift"] == clean) & (ev["test_composition"] == composition)]
    ev = ev[ev["test_batch_size"] == ev["test_batch_size"].max()]
    return prefer_stats_mode(ev)


def summarize(ev: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean and 95% Student-t CI over runs (seeds) of per-run mean accuracy, per ``keys``."""
    per_run = ev.groupby([*keys, "run_key"], dropna=False)["accuracy"].mean().reset_index()
    grouped = per_run.groupby(keys, dropna=False)["accuracy"]
    out = grouped.agg(mean="mean", sd="std", n="count").reset_index()
    half = stats.t_half_width(out["sd"].to_numpy(), out["n"].to_numpy())
    return out.assign(low=out["mean"] - half, high=out["mean"] + half)


def varying(ev: pd.DataFrame, keys: tuple[str, ...]) -> list[str]:
    return [k for k in keys if k in ev.columns and ev[k].nunique(dropna=False) > 1]


def failed_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Failed and diverged runs with their method label and error."""
    failed = runs[runs["status"] != "ok"]
    keys = [*varying(runs, SETTING_KEYS), "train_batch_size"]
    methods = [
        method_label(n, o) for n, o in zip(failed["norm"], failed["norm_options"], strict=True)
    ]
    out = failed.assign(method=methods)[["method", *keys, "seed", "status", "error"]]
    return out.sort_values(["method", "seed"]).reset_index(drop=True)
