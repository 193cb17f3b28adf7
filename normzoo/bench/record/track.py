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
- config: inputs only, flat (see `run_config`); results live in the summary: one scalar per test
  condition named by `condition_key` (``test/`` + the condition's one name) plus the
  ``evaluations`` table.

Offline unless the user is logged in; files land in ``$WANDB_DIR`` or ``<out_dir>``, under
``wandb/``, and ``wandb sync <dir>/wandb/offline-run-*`` uploads them later.
"""

from __future__ import annotations

import json
import logging
import netrc
import os
import re
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd

from normzoo.bench.plan.config import stable_hash
from normzoo.bench.plan.grid import condition_name
from normzoo.bench.plan.schema import WANDB_MODES, WANDB_RUN_MODES
from normzoo.bench.record.provenance import versions

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
    import wandb

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


def slug(text: str, length: int = 40) -> str:
    """``text`` in the characters W&B ids and artifact names allow (letters, digits, ``-_.``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:length] or "x"


def run_id(run_key: str) -> str:
    """The W&B id of a training run: its run key, so renaming the experiment or adding test
    conditions resumes the same W&B run."""
    return f"run-{run_key}"


def summary_id(config_hash: str) -> str:
    """The W&B id of an experiment's summary run: one per config (results), not per name."""
    return f"summary-{config_hash}"


def setting(experiment: str, run) -> str:
    """The group of a run: the seeds of one (norm label, train batch size, composition)."""
    return f"{experiment}/{run.norm.label}/bs{run.train_batch_size}/{run.train_composition.label}"


def run_tags(run) -> list[str]:
    """Tags a user filters by: norm label, ``bs=<train batch size>``, train composition."""
    return [run.norm.label, f"bs={run.train_batch_size}", run.train_composition.label]


def condition_key(evaluation: dict) -> str:
    """The summary name of a test condition's accuracy: ``test/`` (W&B's panel section) and the
    condition's one name (`condition_name`, as the CLI, store and report spell it), e.g.
    ``test/bs8/batch/contrast-5/iid``."""
    return f"test/{condition_name(evaluation)}"


def _flat(prefix: str, options: dict) -> dict:
    out = {}
    for key, value in options.items():
        if isinstance(value, dict):
            out.update(_flat(f"{prefix}{key}_", value))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def run_config(
    run, config, code_versions: dict | None = None, experiment: str | None = None
) -> dict:
    """A training run's W&B config: its inputs only, one level deep.

    Identity (experiment: ``experiment`` or the config's name; experiment_name; run_key,
    config_hash, setting), data (dataset, ``data_<option>``),
    model (backbone, ``model_<option>``), norm (norm, norm_label, norm_options as JSON,
    ``norm_<option>``, batch_dependent), the train condition (train_batch_size,
    train_composition, seed), every other training hyper-parameter under its own name (lr,
    optimizer, epochs, max_steps, ...), and the code versions.
    """
    import dataclasses

    from normzoo.registry import is_batch_dependent

    experiment = experiment or config.experiment.name
    out = {
        "experiment": experiment,
        "experiment_name": config.experiment.name,
        "run_key": run.key,
        "config_hash": config.hash,
        "setting": setting(experiment, run),
        "dataset": run.dataset,
        **_flat("data_", dict(config.data.options)),
        "val_fraction": config.data.val_fraction,
        "backbone": run.backbone,
        **_flat("model_", dict(config.model.options)),
        "norm": run.norm.name,
        "norm_label": run.norm.label,
        "norm_options": json.dumps(run.norm.options, sort_keys=True),
        **_flat("norm_", dict(run.norm.options)),
        "batch_dependent": is_batch_dependent(run.norm.name),
        "train_batch_size": run.train_batch_size,
        "train_composition": run.train_composition.label,
        "seed": run.seed,
    }
    train = dataclasses.asdict(config.train)
    for plural in ("batch_sizes", "compositions", "seeds"):  # this run's values are above
        train.pop(plural)
    out.update(_flat("", train))
    out.update(code_versions or {})
    return out


def evaluation_table(run, experiment: str, evaluations: list[dict]) -> pd.DataFrame:
    """The evaluations of one run with the columns a dashboard splits by (norm, batch sizes,
    seed, setting) and each condition's summary name."""
    frame = pd.DataFrame(evaluations)
    if frame.empty:
        return frame
    front = {
        "run_key": run.key,
        "setting": setting(experiment, run),
        "norm": run.norm.name,
        "norm_label": run.norm.label,
        "train_batch_size": run.train_batch_size,
        "train_composition": run.train_composition.label,
        "seed": run.seed,
    }
    frame = frame.drop(columns=[c for c in front if c in frame.columns])
    frame.insert(0, "condition", [condition_key(e) for e in evaluations])
    for position, (column, value) in enumerate(front.items()):
        frame.insert(position, column, value)
    return frame


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
        import wandb

        entity = self.entity or wandb.Api().default_entity
        base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").replace("//api.", "//")
        return f"{base.rstrip('/')}/{entity}/{self.project}"

    def _init_kwargs(self, **kwargs) -> dict:
        import wandb

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
        return self._init_kwargs(
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
        from lightning.pytorch.loggers import WandbLogger

        return WandbLogger(experiment=self._start(run, config))

    def _start(self, run, config=None):
        import wandb

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
        """The summary run: tables (headline first), plots as images, the results store and the
        report as versioned artifacts. Returns the run's URL when online.

        A summary identical to the one last logged in this mode (same tables, counts, report
        text and settings) is not logged again: a no-op rerun creates no W&B run or folder.
        """
        if not self.enabled:
            return None
        config = config or self.config
        experiment_config = {
            "experiment": self.experiment,
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
            **self.code_versions,
        }
        marker = self.root / "wandb" / f"normzoo-{summary_id(config.hash)}-{self.mode}.logged"
        fingerprint = _fingerprint(experiment_config, tables, counts, report_files, self)
        if marker.is_file() and marker.read_text() == fingerprint:
            log.info("W&B summary run unchanged since it was last logged; not logged again")
            return None
        url = self._log_summary(
            config, experiment_config, tables, images, store_path, report_files, counts
        )
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(fingerprint)
        return url

    def _log_summary(
        self, config, experiment_config, tables, images, store_path, report_files, counts
    ) -> str | None:
        import wandb

        run = wandb.init(
            **self._init_kwargs(
                id=summary_id(config.hash),
                name=f"{self.experiment}-summary",
                group=f"{self.experiment}/summary",
                job_type="summary",
                tags=["summary", self.experiment],
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
            name = slug(self.experiment, 60)
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
            url = run.url if self.mode == "online" else None
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


def _log_results(experiment, run, experiment_name: str, row: dict, evaluations: list[dict]) -> None:
    import wandb

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
    import wandb

    artifact = wandb.Artifact(
        f"model-{run_id(run.key)}", type="model", metadata={"run_key": run.key}
    )
    artifact.add_file(str(path))
    experiment.log_artifact(artifact)


def _snapshot(store_path: Path, folder: Path) -> Path:
    """A consistent copy of a SQLite store (WAL included) through SQLite's backup API."""
    target = folder / store_path.name
    with sqlite3.connect(store_path) as source, sqlite3.connect(target) as copy:
        source.backup(copy)
    return target


def offline_run_dirs(out_dir: str | Path) -> list[Path]:
    """The offline W&B run directories written under ``out_dir``."""
    return sorted((Path(out_dir) / "wandb").glob("offline-run-*"))
