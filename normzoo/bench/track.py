"""Weights & Biases logging: one W&B run per training run plus one summary run per invocation.

Offline unless the user is logged in (``WANDB_API_KEY`` or a stored login); the files land in
``<out_dir>/wandb/`` and ``wandb sync <out_dir>/wandb/offline-run-*`` uploads them later.
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd

log = logging.getLogger(__name__)

MODES = ("offline", "online", "disabled")


def logged_in() -> bool:
    """Whether a W&B API key is available: ``WANDB_API_KEY`` or a ``wandb login`` netrc entry.

    Only the presence of a key is checked; it is never printed or logged.
    """
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):  # no netrc file: not logged in
        return False


def resolve_mode(requested: str) -> str:
    """``auto`` -> ``online`` when logged in, else ``offline``; other modes pass through."""
    if requested == "auto":
        return "online" if logged_in() else "offline"
    if requested not in MODES:
        raise ValueError(f"unknown W&B mode '{requested}'; allowed: auto, {', '.join(MODES)}")
    return requested


class Tracker:
    """Logs finished runs and the summary to W&B (no-op when the mode is ``disabled``)."""

    def __init__(self, mode: str, out_dir: str | Path, experiment: str, project: str) -> None:
        self.mode = resolve_mode(mode)
        self.out_dir = Path(out_dir)
        self.experiment = experiment
        self.project = project

    @property
    def enabled(self) -> bool:
        return self.mode != "disabled"

    def _init(self, name: str, job_type: str, tags: list[str], config: dict):
        import wandb

        self.out_dir.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(
            silent=True, console="off", x_disable_stats=True, disable_git=True, save_code=False
        )
        return wandb.init(
            project=self.project,
            group=self.experiment,
            name=name,
            job_type=job_type,
            tags=tags,
            config=config,
            dir=str(self.out_dir),
            mode=self.mode,
            settings=settings,
            reinit="create_new",
        )

    def log_run(self, result) -> None:
        """One W&B run for one training run: config, curves, evaluation table, summary."""
        if not self.enabled:
            return
        import json

        import wandb

        row = result.row
        config = {k: v for k, v in row.items() if k not in ("config_json", "error")}
        config["norm_options"] = json.loads(row["norm_options"])
        config["experiment_config"] = json.loads(row["config_json"])
        tags = [
            row["norm"],
            f"bs={row['train_batch_size']}",
            row["train_composition"],
            row["status"],
        ]
        run = self._init(f"{self.experiment}-{result.run.name}", "train", tags, config)
        try:
            for entry in result.history:
                entry = dict(entry)
                run.log(entry, step=entry.pop("step"))
            if result.evaluations:
                frame = pd.DataFrame(result.evaluations)
                run.log({"evaluations": wandb.Table(dataframe=frame)})
                clean = frame[(frame["shift"] == "clean") & (frame["stats_mode"] == "running")]
                if len(clean):
                    run.summary["test/clean_running_accuracy"] = float(clean["accuracy"].mean())
            run.summary["status"] = row["status"]
            run.summary["val_accuracy"] = row["val_accuracy"]
            if row["error"]:
                run.summary["error"] = row["error"]
        finally:
            run.finish(exit_code=0 if row["status"] == "ok" else 1)

    def log_summary(
        self, tables: dict[str, pd.DataFrame], images: list[Path], config: dict
    ) -> None:
        """The summary run: headline/significance tables and report plots as images."""
        if not self.enabled:
            return
        import wandb

        run = self._init(f"{self.experiment}-summary", "summary", ["summary"], config)
        try:
            for name, frame in tables.items():
                run.log({name: wandb.Table(dataframe=frame.reset_index())})
            for path in images:
                run.log({f"report/{Path(path).stem}": wandb.Image(str(path))})
        finally:
            run.finish()


def offline_run_dirs(out_dir: str | Path) -> list[Path]:
    """The offline W&B run directories written under ``out_dir``."""
    return sorted((Path(out_dir) / "wandb").glob("offline-run-*"))
