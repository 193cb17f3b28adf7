"""``normzoo evaluate``'s results in the benchmark's store and W&B layout.

A checkpoint evaluation is one run of the results store (``results.sqlite`` in the output dir).
Its run row names the checkpoint: ``run_key`` ``evaluate-<hash>`` of the checkpoint's SHA-256,
model, norm, data and grid; ``experiment`` ``evaluate``; the model as ``backbone``; the training
columns as unknown (train batch size 0, composition ``external``, seed -1); the SHA-256 as
``weights_sha256``. Every computed test condition is an evaluation row keyed as the benchmark
keys them (``test_batch_size``, ``stats_mode``, ``shift``, ``severity``, ``test_composition``:
accuracy, NLL, ECE, scored samples, what was computed). Conditions the model cannot be evaluated
under are left out of the store and named in the run row's ``error``. The bootstrap intervals
stay in ``evaluate.csv`` (the store has no interval columns).

With W&B on, the same rows go to one W&B run (``job_type`` ``evaluate``, id from the run key):
its config is the provenance (checkpoint hashes, model, data, versions), its summary holds each
condition's accuracy under ``test/<condition>`` (as a benchmark run's) with ``_low``/``_high``
bounds, and an ``evaluations`` table holds every row of ``evaluate.csv``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from normzoo.bench.plan.config import stable_hash
from normzoo.bench.plan.grid import condition_name
from normzoo.bench.plan.schema import PROVENANCE_COLUMNS, RUN_COLUMNS, TEST_KEYS
from normzoo.bench.record.store import Store, now

EXPERIMENT = "evaluate"


def evaluation_key(provenance: dict, rows: list[dict]) -> str:
    """The run key of a checkpoint evaluation: the checkpoint's bytes, how it was built and
    on what it was evaluated (the same request on the same file gives the same key)."""
    identity = {
        name: provenance.get(name)
        for name in ("sha256_before", "model", "norm", "norm_options", "dataset")
    }
    identity["dataset_options"] = provenance.get("dataset_options")
    identity["conditions"] = sorted(condition_name(r) for r in rows)
    return f"{EXPERIMENT}-{stable_hash(identity)[:16]}"


def _computed(row: dict) -> bool:
    accuracy = row.get("accuracy")
    return accuracy is not None and not (isinstance(accuracy, float) and math.isnan(accuracy))


def store_rows(provenance: dict, rows: list[dict]) -> tuple[dict, list[dict]]:
    """The run row and evaluation rows of the store for one checkpoint evaluation."""
    key = evaluation_key(provenance, rows)
    skipped = [condition_name(r) for r in rows if not _computed(r)]
    run = dict.fromkeys(RUN_COLUMNS)
    run.update(
        run_key=key,
        experiment=EXPERIMENT,
        dataset=provenance["dataset"],
        backbone=provenance["model"],
        norm=provenance["norm"],
        norm_options=json.dumps(provenance.get("norm_options") or {}, sort_keys=True),
        # trained outside normzoo: train batch size 0, composition "external", seed -1 (unknown)
        train_batch_size=0,
        train_composition="external",
        seed=-1,
        stack_size=1,
        stack_slot=0,
        config_hash=key.removeprefix(f"{EXPERIMENT}-"),
        status="ok",
        error=f"not computable: {', '.join(skipped)}" if skipped else None,
        config_json=json.dumps(provenance, sort_keys=True, default=str),
        finished_at=now(),
    )
    for name in PROVENANCE_COLUMNS:
        run[name] = provenance.get(name)
    evaluations = [
        {
            "run_key": key,
            **{k: r[k] for k in TEST_KEYS},
            "accuracy": float(r["accuracy"]),
            "loss": None if pd.isna(r.get("loss")) else float(r["loss"]),
            "n_test": int(r["n_test"]),
            "computed_as": str(r["computed_as"]),
            "ece": None if pd.isna(r.get("ece")) else float(r["ece"]),
        }
        for r in rows
        if _computed(r)
    ]
    return run, evaluations


def write_store(provenance: dict, rows: list[dict], out_dir: str | Path) -> tuple[Path, str]:
    """Write the evaluation into ``out_dir/results.sqlite`` (replacing an earlier evaluation of
    the same request); returns the store's path and the run key."""
    run, evaluations = store_rows(provenance, rows)
    with Store(out_dir) as store:
        store.write_run(run, evaluations, weights_sha256=provenance["sha256_before"])
        path = store.path
    return path, run["run_key"]


def log_wandb(
    provenance: dict, rows: list[dict], out_dir: str | Path, mode: str, run_key: str
) -> Path | str | None:
    """Log the evaluation as one W&B run (``mode`` online or offline; disabled logs nothing).
    Returns the run's URL online, its offline directory offline, None when disabled."""
    if mode == "disabled":
        return None
    import os

    import wandb  # imported only when W&B is on (start-up time)

    from normzoo.bench.record.track import DEFAULT_PROJECT, Tracker
    from normzoo.bench.record.wandb_layout import condition_key

    tracker = Tracker(
        mode=mode,
        experiment=EXPERIMENT,
        project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
        entity=os.environ.get("WANDB_ENTITY") or None,
        root=Path(os.environ.get("WANDB_DIR") or out_dir),
    )
    config = {
        k: (json.dumps(v, sort_keys=True, default=str) if isinstance(v, dict | list) else v)
        for k, v in provenance.items()
    }
    run = wandb.init(
        **tracker.init_kwargs(
            id=run_key,
            name=f"{EXPERIMENT}-{Path(provenance['checkpoint']).stem}",
            job_type=EXPERIMENT,
            group=EXPERIMENT,
            tags=[EXPERIMENT, provenance["model"]],
            config={"run_key": run_key, "experiment": EXPERIMENT, **config},
        )
    )
    try:
        frame = pd.DataFrame(rows)
        run.log({"evaluations": wandb.Table(dataframe=frame.astype(object).where(frame.notna()))})
        for row in rows:
            if _computed(row):
                key = condition_key(row)
                run.summary[key] = float(row["accuracy"])
                for bound in ("low", "high"):
                    value = row.get(f"accuracy_{bound}")
                    if value is not None and not pd.isna(value):
                        run.summary[f"{key}_{bound}"] = float(value)
        run.summary["sha256_unchanged"] = provenance["sha256_before"] == provenance["sha256_after"]
        where = run.url if mode == "online" else Path(run.dir).parent
    finally:
        run.finish()
    return where
