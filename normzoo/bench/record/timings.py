"""Measured timings of an output dir's finished runs, for the cost estimate of the next grid."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from normzoo.bench.plan.config import Config
from normzoo.bench.plan.cost import timing_key
from normzoo.bench.record.provenance import device_name
from normzoo.bench.record.store import STORE_NAME, Store


def _as_stored(value):
    """A config value as the store's JSON holds it (tuples as lists)."""
    return json.loads(json.dumps(value, default=str))


def _same_setup(stored: dict, config: Config) -> bool:
    """Whether a stored run's config has this config's data and model sections."""
    mine = _as_stored(config.result_dict())
    data = {k: v for k, v in stored.get("data", {}).items() if k not in ("root", "download")}
    return data == mine["data"] and stored.get("model") == mine["model"]


def stored_timings(config: Config, out_dir: str | Path | None) -> dict:
    """Timings of the store's ok runs made like ``config``'s (same data and model, this device).

    ``{"train": {timing_key: seconds per training step}, "eval": {(norm, options JSON):
    evaluation seconds per run}}``; the eval entries only from runs evaluated under this
    config's test conditions. Seconds per step are the stored training seconds over the run's
    last logged step. Empty dicts without a store.
    """
    timings: dict = {"train": {}, "eval": {}}
    if out_dir is None or not (Path(out_dir) / STORE_NAME).is_file():
        return timings
    with Store(out_dir, read_only=True) as store:
        runs = store.runs_frame()
        runs = runs[(runs["status"] == "ok") & (runs["device"] == device_name())]
        runs = runs[runs["train_seconds"].notna()]
        curves = store.curves_frame(list(runs["run_key"]))
    if runs.empty or curves.empty:
        return timings
    steps = curves.groupby("run_key")["step"].max()
    evaluation = _as_stored(config.to_dict()["eval"])
    train: dict = {}
    evals: dict = {}
    for row in runs.itertuples(index=False):
        stored = json.loads(row.config_json)
        if not _same_setup(stored, config) or steps.get(row.run_key, 0) <= 0:
            continue
        key = timing_key(row.norm, json.loads(row.norm_options), row.train_batch_size)
        train.setdefault(key, []).append(row.train_seconds / steps[row.run_key])
        if stored.get("eval") == evaluation and pd.notna(row.eval_seconds):  # evaluated
            evals.setdefault(key[:2], []).append(row.eval_seconds)
    timings["train"] = {k: sum(v) / len(v) for k, v in train.items()}
    timings["eval"] = {k: sum(v) / len(v) for k, v in evals.items()}
    return timings
