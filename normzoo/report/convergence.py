"""Convergence gate and collapsed runs: which train conditions trained, which runs collapsed.

A train condition is *trained* when its best norm's mean training accuracy over seeds (the
``train_accuracy`` column: final, eval mode, on a fixed training subset) reaches the declared
gate ``stats.gate``. A run *collapsed* when its test accuracy on the default test slice (clean
i.i.d. batches of the largest test batch size, running statistics preferred) lies within
``stats.collapse_margin`` of chance (1 / number of classes), or its training accuracy stays
under the gate. Stores written before the runs recorded training accuracy have no
``train_accuracy`` column: then no gate is applied and the report says so.

The number of classes comes from, in order: a ``num_classes`` column of the runs; the run's
``config_json`` (``data.dataset`` and ``data.options``) through
:func:`normzoo.data.datasets.dataset_info`; the ``dataset`` column with that dataset's default
options. Without any of them, collapse is judged by the gate alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from normzoo.bench.plan.config.stats_section import StatsSection
from normzoo.data.datasets import dataset_info
from normzoo.report.select import TRAIN_KEYS, default_test_slice, method_label

TRAIN_METRICS = ("train_accuracy", "train_loss", "train_accuracy_train_mode", "lr")


@dataclass(frozen=True)
class Convergence:
    """Per run, per cell (train condition x norm) and per train condition: gate and collapse."""

    runs: pd.DataFrame  # run_key, method, train keys, seed, test/train accuracy, collapsed
    cells: pd.DataFrame  # per train condition and norm: counts, means, collapsed seeds
    conditions: pd.DataFrame  # per train condition: best norm, its train accuracy, trained
    gate_applied: bool  # False: the store has no training accuracy (older store)
    chance_source: str  # where the number of classes came from, in words
    gate: float
    margin: float

    def untrained(self) -> set[tuple]:
        """Train conditions (tuples of TRAIN_KEYS values) that did not pass the gate."""
        rows = self.conditions[self.conditions["trained"] == False]  # noqa: E712 (object column)
        return {tuple(r) for r in rows[list(TRAIN_KEYS)].itertuples(index=False)}

    def collapsed_runs(self) -> set[str]:
        return set(self.runs.loc[self.runs["collapsed"], "run_key"])


def _classes_from_config(text: object) -> int | None:
    try:
        data = json.loads(str(text)).get("data", {})
        info = dataset_info(data["dataset"], data.get("options") or {}, data.get("root"))
        return info.num_classes
    except (ValueError, KeyError, TypeError, AttributeError, OSError):
        return None


def _classes_from_dataset(name: object) -> int | None:
    try:
        return dataset_info(str(name)).num_classes
    except (ValueError, OSError):
        return None


def num_classes(runs: pd.DataFrame) -> tuple[pd.Series, str]:
    """Classes per run (NaN where unknown) and where the number came from, in words."""
    if "num_classes" in runs.columns and runs["num_classes"].notna().all():
        return runs["num_classes"].astype(float), "each run's dataset as configured (num_classes)"
    if "config_json" in runs.columns:
        found = runs["config_json"].map(_classes_from_config).astype(float)
        if found.notna().all():
            return found, "each run's config (data.dataset and data.options)"
    if "dataset" in runs.columns:
        found = runs["dataset"].map(_classes_from_dataset).astype(float)
        if found.notna().all():
            return found, (
                "the dataset column with the dataset's default options (the config was not "
                "available: a non-default num_classes would be missed)"
            )
    return pd.Series(np.nan, index=runs.index), "unknown (no config or dataset to read it from)"


def convergence(runs: pd.DataFrame, ev: pd.DataFrame, spec: StatsSection) -> Convergence:
    """Gate and collapse of every ok run (``ev`` as :func:`normzoo.report.select.prepare`
    returns it)."""
    ok = runs[runs["status"] == "ok"].copy()
    for key in TRAIN_KEYS:  # as select.prepare shows missing keys, so conditions match
        ok[key] = ok[key].astype(object).where(ok[key].notna(), "-")
    ok["method"] = [method_label(n, o) for n, o in zip(ok["norm"], ok["norm_options"], strict=True)]
    classes, source = num_classes(ok)
    ok["chance"] = 1.0 / classes
    test = default_test_slice(ev).groupby("run_key")["accuracy"].mean()
    ok["test_accuracy"] = ok["run_key"].map(test)
    gate_applied = "train_accuracy" in ok.columns and ok["train_accuracy"].notna().any()
    near_chance = ok["test_accuracy"] <= ok["chance"] + spec.collapse_margin
    under_gate = (ok["train_accuracy"] < spec.gate) if gate_applied else False
    ok["collapsed"] = (near_chance.fillna(False) | under_gate).astype(bool)
    for column in TRAIN_METRICS:
        if column not in ok.columns:
            ok[column] = np.nan
    cells = _cells(ok)
    conditions = _conditions(cells, spec.gate, gate_applied)
    keep = ["run_key", "method", *TRAIN_KEYS, "seed", "test_accuracy", *TRAIN_METRICS]
    return Convergence(
        ok[[*keep, "chance", "collapsed"]].reset_index(drop=True),
        cells,
        conditions,
        bool(gate_applied),
        source,
        spec.gate,
        spec.collapse_margin,
    )


def _cells(ok: pd.DataFrame) -> pd.DataFrame:
    keys = [*TRAIN_KEYS, "method"]
    grouped = ok.groupby(keys, dropna=False)
    cells = grouped.agg(
        runs=("run_key", "size"),
        train_accuracy=("train_accuracy", "mean"),
        train_accuracy_train_mode=("train_accuracy_train_mode", "mean"),
        test_accuracy=("test_accuracy", "mean"),
        collapsed=("collapsed", "sum"),
    ).reset_index()
    seeds = grouped.apply(
        lambda g: " ".join(str(s) for s in sorted(g.loc[g["collapsed"], "seed"])),
        include_groups=False,
    )
    return cells.assign(collapsed_seeds=seeds.to_numpy())


def _conditions(cells: pd.DataFrame, gate: float, gate_applied: bool) -> pd.DataFrame:
    rows = []
    for key, group in cells.groupby(list(TRAIN_KEYS), dropna=False):
        best = group.loc[group["train_accuracy"].idxmax()] if gate_applied else None
        best_accuracy = float(best["train_accuracy"]) if best is not None else np.nan
        trained = (best_accuracy >= gate) if gate_applied else None
        below = group[group["train_accuracy"] < gate]["method"].tolist() if gate_applied else []
        rows.append(
            {
                **dict(zip(TRAIN_KEYS, key, strict=True)),
                "best_norm": best["method"] if best is not None else None,
                "best_train_accuracy": best_accuracy,
                "trained": trained,
                "under_gate": " ".join(below),
            }
        )
    return pd.DataFrame(rows)


def gate_findings(conv: Convergence) -> list[str]:
    """Sentences about the gate: untrained conditions, and norms under the gate where the
    best norm passed it ("X did not reach the gate at train bs 2 while batch did")."""
    if not conv.gate_applied:
        return []
    lines = []
    cells = conv.cells.merge(conv.conditions, on=list(TRAIN_KEYS))
    for row in conv.conditions.itertuples(index=False):
        where = _where(row)
        if not row.trained:
            lines.append(
                f"**No norm reached the training-accuracy gate {conv.gate:g} at {where}** (best: "
                f"{row.best_norm}, {row.best_train_accuracy:.3f}): the budget, not the norms, "
                "limits this condition; its comparisons are counted in the family as not tested."
            )
    for row in cells[cells["trained"] == True].itertuples(index=False):  # noqa: E712
        if row.train_accuracy < conv.gate:
            lines.append(
                f"**{row.method} did not reach the training-accuracy gate {conv.gate:g} at "
                f"{_where(row)} while {row.best_norm} did** ({row.train_accuracy:.3f} vs "
                f"{row.best_train_accuracy:.3f}, mean over seeds): a finding about the norm here."
            )
    return lines


def _where(row) -> str:
    where = f"train bs {row.train_batch_size}"
    if row.train_composition not in ("iid", "-"):
        where += f", {row.train_composition} batches"
    return where
