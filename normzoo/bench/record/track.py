"""Weights & Biases: one W&B run per training run, logged live from the process that trains it,
plus one summary run per experiment.

Layout (what a dashboard filters and groups by, without joins):
- id: ``run-<run key>`` for a training run, ``summary-<config hash>`` for the summary run: ids
  follow what was computed, never the experiment's name, so a rerun, ``--retry-failed``,
  ``--report-only`` or a renamed experiment resumes the same run instead of duplicating it;
- group: the setting ``<experiment>/<norm label>/bs<train batch size>/<train composition>`` (its
  members are the seeds), where ``<experiment>`` is the experiment's identity (its name, plus a
  short hash of what ``--set`` changed, `normzoo.bench.plan.identity`); job_type ``train`` or
  ``summary``; tags: norm label, ``bs=<N>``, composition;
- config: inputs only, flat; results live in the summary: one scalar per test condition named
  by `condition_key` (``test/`` + the condition's one name) plus the ``evaluations`` table
  (all spelled in `normzoo.bench.record.wandb_layout`).

Offline unless the user is logged in; files land in ``$WANDB_DIR`` or ``<out_dir>``, under
``wandb/``, and ``wandb sync <dir>/wandb/offline-run-*`` uploads them later.
"""

from __future__ import annotations

import logging
import netrc
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd

from normzoo.bench.plan.schema import WANDB_MODES, WANDB_RUN_MODES
from normzoo.bench.record.provenance import versions
from normzoo.bench.record.wandb_layout import (
    condition_key,
    evaluation_table,
    run_config,
    run_id,
    run_tags,
    setting,
)
from normzoo.bench.record.wandb_summary import log_summary

log = logging.getLogger(__name__)

MODES = WANDB_RUN_MODES
DEFAULT_PROJECT = "normzoo"
# Summaries W&B keeps for a metric beyond its last value (define_metric).
METRIC_SUMMARIES = {"val/acc": "max,last", "train/loss": "min,last", "train/epoch_loss": "min,last"}


NOT_LOGGED_IN = (
    "W&B online needs a login and none was found (WANDB_API_KEY, ~/.netrc): run `wandb login`,"
    " or use --wandb offline (and `wandb sync` later)"
)


def logged_in() -> bool:
    """Whether a W&B API key is available, found as wandb itself finds one, without network:
    ``WANDB_API_KEY`` (or ``WANDB_IDENTITY_TOKEN_FILE``), else the netrc entry ``wandb login``
    writes for the server (``$NETRC``, else ``~/.netrc``).

    Only the presence of a key is checked; it is never printed or logged.
    """
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    import wandb  # wandb: imported only when W&B is on (start-up time)

    host = os.environ.get("WANDB_BASE_URL") or wandb.Settings().base_url
    try:
        from wandb.sdk.lib.wbauth import read_netrc_auth  # wandb's own netrc lookup
    except ImportError:  # another wandb layout: read the netrc entry of the host directly
        path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
        try:
            return netrc.netrc(path).authenticators(urlparse(host).hostname) is not None
        except (OSError, netrc.NetrcParseError):  # no netrc file: not logged in
            return False
    try:
        return read_netrc_auth(host=host) is not None
    except Exception:  # noqa: BLE001 - a malformed key is no usable login
        return False


def check_online(mode: str) -> None:
    """Raise ValueError (one line naming the fix) when ``mode`` is online without a login."""
    if mode == "online" and not logged_in():
        raise ValueError(NOT_LOGGED_IN)


def describe_mode(requested: str, mode: str) -> str:
    """What the CLI says at start: the mode, and for ``auto`` why."""
    if requested != "auto" or os.environ.get("WANDB_MODE") or mode == "disabled":
        return f"W&B mode: {mode}"
    if mode == "online":
        return "W&B mode: online (auto: logged in to W&B)"
    return "W&B mode: offline (auto: not logged in to W&B; `wandb login` to log online)"


def resolve_mode(requested: str) -> str:
    """The W&B mode to use: the user's environment limits what a config or flag asks for.

    ``WANDB_MODE=disabled`` (or ``WANDB_DISABLED=true``) disables W&B whatever was requested, and
    ``WANDB_MODE=offline``/``dryrun`` keeps an ``online`` request offline; ``auto`` is
    ``WANDB_MODE`` when set, else ``online`` when logged in, else ``offline``.
    """
    allowed = WANDB_MODES
    if requested not in allowed:
        raise ValueError(f"unknown W&B mode '{requested}'; allowed: {', '.join(allowed)}")
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    env = {"dryrun": "offline", "run": "online"}.get(env, env)
    if os.environ.get("WANDB_DISABLED", "").strip().lower() in ("true", "1", "yes"):
        env = "disabled"
    if requested == "auto":
        requested = env if env in MODES else ("online" if logged_in() else "offline")
    restriction = {"online": 0, "offline": 1, "disabled": 2}
    if env in MODES and restriction[env] > restriction[requested]:
        log.info("W&B mode %s requested; WANDB_MODE=%s in the environment wins", requested, env)
        return env
    return requested


@dataclass(frozen=True)
class Tracker:
    """Resolved W&B settings of an invocation; picklable, so workers log their own runs.

    ``mode`` is ``disabled`` for no W&B at all (curves still go to the results store).
    """

    mode: str
    experiment: str
    project: str = DEFAULT_PROJECT
    entity: str | None = None
    root: Path = Path(".")
    log_weights: bool = False
    code_versions: dict = field(default_factory=dict)
    config: object = field(default=None, repr=False, compare=False)  # the experiment's Config

    @classmethod
    def from_config(
        cls, config, out_dir: str | Path, mode: str | None = None, experiment: str | None = None
    ) -> Tracker:
        """Settings from ``config.execution`` and the environment; ``experiment`` is the identity
        that groups, artifacts and the summary carry (default: the config's name).

        Project and entity: the config's value when set (``--set execution.wandb_project=...``),
        else ``WANDB_PROJECT``/``WANDB_ENTITY``, else ``normzoo`` and the login's default entity.
        Files: ``WANDB_DIR`` when set, else ``out_dir``.
        """
        ex = config.execution
        weights = getattr(ex, "wandb_weights", False)
        if not isinstance(weights, bool):
            raise ValueError(f"execution.wandb_weights must be true or false, got {weights!r}")
        resolved = resolve_mode(mode or ex.wandb)
        return cls(
            mode=resolved,
            experiment=experiment or config.experiment.name,
            project=ex.wandb_project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
            entity=getattr(ex, "wandb_entity", None) or os.environ.get("WANDB_ENTITY") or None,
            root=Path(os.environ.get("WANDB_DIR") or out_dir),
            log_weights=weights,
            code_versions=versions() if resolved != "disabled" else {},
            config=config,
        )

    @property
    def enabled(self) -> bool:
        return self.mode != "disabled"

    def run_dirs(self) -> list[Path]:
        """The offline run directories written so far."""
        return sorted((self.root / "wandb").glob("offline-run-*"))

    def project_url(self) -> str | None:
        """The project's web address (online only; needs the entity, asked from the API)."""
        if self.mode != "online":
            return None
        import wandb  # wandb: imported only when W&B is on (start-up time)

        entity = self.entity or wandb.Api().default_entity
        base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").replace("//api.", "//")
        return f"{base.rstrip('/')}/{entity}/{self.project}"

    def init_kwargs(self, **kwargs) -> dict:
        import wandb  # wandb: imported only when W&B is on (start-up time)

        self.root.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(silent=True, console="off", x_disable_stats=True, save_code=False)
        return dict(
            project=self.project,
            entity=self.entity,
            dir=str(self.root),
            mode=self.mode,
            resume="allow",
            reinit="finish_previous",
            settings=settings,
            **kwargs,
        )

    def _train_kwargs(self, run, config) -> dict:
        return self.init_kwargs(
            id=run_id(run.key),
            name=f"{self.experiment}-{run.name}",
            group=setting(self.experiment, run),
            job_type="train",
            tags=run_tags(run),
            config=run_config(run, config, self.code_versions, self.experiment),
        )

    # --- a training run, in the process that trains it ---------------------------------------

    def train_logger(self, run, config=None):
        """A Lightning ``WandbLogger`` for ``run`` (None when disabled): pass it to the Trainer,
        then call `finish_run` with the results."""
        if not self.enabled:
            return None
        from lightning.pytorch.loggers import WandbLogger  # Lightning: start-up time

        return WandbLogger(experiment=self._start(run, config))

    def _start(self, run, config=None):
        import wandb  # wandb: imported only when W&B is on (start-up time)

        experiment = wandb.init(**self._train_kwargs(run, config or self.config))
        # Lightning's own axis: every metric is plotted against the optimizer step
        experiment.define_metric("trainer/global_step")
        experiment.define_metric("*", step_metric="trainer/global_step", step_sync=True)
        for metric, summary in METRIC_SUMMARIES.items():
            experiment.define_metric(metric, summary=summary)
        return experiment

    def finish_run(
        self, logger, run, row: dict, evaluations: list[dict], weights: Path | None = None
    ) -> bool:
        """Put a run's results into its W&B summary and close it; True when W&B has it all."""
        if logger is None:
            return False
        try:
            _log_results(logger.experiment, run, self.experiment, row, evaluations)
            if self.log_weights and weights is not None and Path(weights).is_file():
                _log_weights(logger.experiment, run, self.experiment, Path(weights))
            logger.experiment.finish(exit_code=0 if row["status"] == "ok" else 1)
            return True
        except Exception as error:  # W&B trouble never costs a result: the parent logs it again
            log.warning("W&B logging of %s failed (%s); it is logged again later", run.name, error)
            return False

    # --- a stored run that W&B does not have yet, from the parent ----------------------------

    def log_stored_run(
        self,
        run,
        row: dict,
        evaluations: list[dict],
        curves: list[dict] | pd.DataFrame = (),
        weights: Path | None = None,
        config=None,
    ) -> bool:
        """Log a finished run from the results store (curves as rows of the store's ``curves``
        table, results) under its own id; resumes the W&B run when it exists."""
        if not self.enabled:
            return False
        experiment = self._start(run, config)
        try:
            frame = pd.DataFrame(curves)
            if not frame.empty:
                for (step, epoch), points in frame.groupby(["step", "epoch"], dropna=False):
                    metrics = dict(zip(points["metric"], points["value"], strict=True))
                    metrics["trainer/global_step"] = int(step)
                    if pd.notna(epoch):
                        metrics["epoch"] = int(epoch)
                    experiment.log(metrics)
            _log_results(experiment, run, self.experiment, row, evaluations)
            if self.log_weights and weights is not None and Path(weights).is_file():
                _log_weights(experiment, run, self.experiment, Path(weights))
        finally:
            experiment.finish(exit_code=0 if row["status"] == "ok" else 1)
        return True

    def log_run(self, result) -> bool:
        """The parent's hook for a finished result (``run``, ``row``, ``evaluations``, and
        ``curves`` or ``history`` rows, optional ``weights`` path): `log_stored_run`."""
        curves = getattr(result, "curves", None) or getattr(result, "history", None) or ()
        return self.log_stored_run(
            result.run, result.row, result.evaluations, curves, getattr(result, "weights", None)
        )

    # --- the experiment's summary run ---------------------------------------------------------

    def log_summary(
        self,
        config,
        tables: dict[str, pd.DataFrame],
        images: list[Path],
        store_path: Path | None = None,
        report_files: list[Path] = (),
        counts: dict | None = None,
    ) -> str | None:
        """The summary run (`normzoo.bench.record.wandb_summary.log_summary`): tables, plots, the
        results store and the report; returns the run's URL when online."""
        return log_summary(self, config, tables, images, store_path, report_files, counts)


def _log_results(experiment, run, experiment_name: str, row: dict, evaluations: list[dict]) -> None:
    import wandb  # wandb: imported only when W&B is on (start-up time)

    if evaluations:
        frame = evaluation_table(run, experiment_name, evaluations)
        experiment.log({"evaluations": wandb.Table(dataframe=frame)})
        for evaluation in evaluations:
            experiment.summary[condition_key(evaluation)] = evaluation["accuracy"]
    for key in ("status", "val_accuracy", "train_seconds", "eval_seconds", "error"):
        if row.get(key) is not None:
            experiment.summary[key] = row[key]
    if row["status"] != "ok":
        experiment.tags = (*experiment.tags, row["status"])


def _log_weights(experiment, run, experiment_name: str, path: Path) -> None:
    import wandb  # wandb: imported only when W&B is on (start-up time)

    artifact = wandb.Artifact(
        f"model-{run_id(run.key)}", type="model", metadata={"run_key": run.key}
    )
    artifact.add_file(str(path))
    experiment.log_artifact(artifact)


def offline_run_dirs(out_dir: str | Path) -> list[Path]:
    """The offline W&B run directories written under ``out_dir``."""
    return sorted((Path(out_dir) / "wandb").glob("offline-run-*"))
