"""The experiment's W&B summary run: tables (headline first), plots, run counts, and the results
store and report as versioned artifacts; skipped when identical to the one last logged.
"""

from __future__ import annotations

import logging
import sqlite3
import tempfile
from pathlib import Path

import pandas as pd

from normzoo.bench.plan.config import stable_hash
from normzoo.bench.record.wandb_layout import slug, summary_id

log = logging.getLogger(__name__)


def log_summary(
    tracker,
    config,
    tables: dict[str, pd.DataFrame],
    images: list[Path],
    store_path: Path | None = None,
    report_files: list[Path] = (),
    counts: dict | None = None,
) -> str | None:
    """The summary run: tables (headline first), plots as images, the results store and the
    report as versioned artifacts. Returns the run's URL when online.

    A summary identical to the one last logged in this mode (same tables, counts, report
    text and settings) is not logged again: a no-op rerun creates no W&B run or folder.
    """
    if not tracker.enabled:
        return None
    config = config or tracker.config
    experiment_config = {
        "experiment": tracker.experiment,
        "config_hash": config.hash,
        "dataset": config.data.dataset,
        "backbone": config.model.backbone,
        "norm_labels": [n.label for n in config.norms],
        "train_batch_sizes": list(config.train.batch_sizes),
        "train_compositions": [c.label for c in config.train.compositions],
        "seeds": list(config.train.seeds),
        "test_batch_sizes": list(config.eval.test_batch_sizes),
        "stats_modes": list(config.eval.stats_modes),
        "shifts": list(config.eval.shifts),
        "severities": list(config.eval.severities),
        **tracker.code_versions,
    }
    marker = tracker.root / "wandb" / f"normzoo-{summary_id(config.hash)}-{tracker.mode}.logged"
    fingerprint = _fingerprint(experiment_config, tables, counts, report_files, tracker)
    if marker.is_file() and marker.read_text() == fingerprint:
        log.info("W&B summary run unchanged since it was last logged; not logged again")
        return None
    url = _log_summary_run(
        tracker, config, experiment_config, tables, images, store_path, report_files, counts
    )
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(fingerprint)
    return url


def _log_summary_run(
    tracker, config, experiment_config, tables, images, store_path, report_files, counts
) -> str | None:
    import wandb  # wandb: imported only when W&B is on (start-up time)

    run = wandb.init(
        **tracker.init_kwargs(
            id=summary_id(config.hash),
            name=f"{tracker.experiment}-summary",
            group=f"{tracker.experiment}/summary",
            job_type="summary",
            tags=["summary", tracker.experiment],
            config=experiment_config,
        )
    )
    try:
        for name, frame in tables.items():
            run.log({f"tables/{name}": wandb.Table(dataframe=frame.reset_index())})
        for path in images:
            run.log({f"plots/{Path(path).stem}": wandb.Image(str(path))})
        for key, value in (counts or {}).items():
            run.summary[f"runs/{key}"] = value
        name = slug(tracker.experiment, 60)
        if store_path is not None and Path(store_path).is_file():
            artifact = wandb.Artifact(f"results-{name}", type="results")
            with tempfile.TemporaryDirectory() as tmp:
                artifact.add_file(str(_snapshot(Path(store_path), Path(tmp))))
                run.log_artifact(artifact)  # the file is staged (copied) when added
        files = [Path(p) for p in report_files if Path(p).is_file()]
        if files:
            artifact = wandb.Artifact(f"report-{name}", type="report")
            for path in files:
                artifact.add_file(str(path))
            run.log_artifact(artifact)
        url = run.url if tracker.mode == "online" else None
    finally:
        run.finish()
    return url


def _fingerprint(experiment_config: dict, tables: dict, counts, report_files, tracker) -> str:
    """What a summary run would hold, hashed: its config, tables, counts and report text."""
    texts = {
        Path(p).name: Path(p).read_text()
        for p in report_files
        if Path(p).suffix in (".md", ".csv") and Path(p).is_file()
    }
    return stable_hash(
        {
            "config": experiment_config,
            "where": [tracker.project, tracker.entity, tracker.experiment],
            "tables": {
                k: v.to_json(orient="split", default_handler=str) for k, v in tables.items()
            },
            "counts": {str(k): int(v) for k, v in (counts or {}).items()},
            "report": texts,
        },
        length=32,
    )


def _snapshot(store_path: Path, folder: Path) -> Path:
    """A consistent copy of a SQLite store (WAL included) through SQLite's backup API."""
    target = folder / store_path.name
    with sqlite3.connect(store_path) as source, sqlite3.connect(target) as copy:
        source.backup(copy)
    return target
