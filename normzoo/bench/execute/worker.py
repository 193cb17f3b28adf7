"""What runs in a worker: one `Task` (train a run and/or evaluate it), streamed as messages.

`execute_task` is a generator of `Trained`, `Evaluated` (one per computed condition) and
`Finished`; executors run it where they like and hand the messages to the parent, which alone
writes the store (`normzoo.bench.run`). An executor is a function
``(tasks, config, out_dir) -> Iterator[message]`` that also yields `TaskDone` after each task
and `WorkerDied` for a task whose process died: `in_process_results`, `local_results`
(spawned workers, GPUs round-robin); `normzoo.bench.run` picks the submitit one.

Every run records provenance (`code_versions`, `device_name`); weights are kept as safetensors
(loading executes no code), so evaluating a stored run never retrains it. A weights file holds
its run key in its metadata and the store records its sha256; `verify_weights` checks both
before a model is evaluated, so a damaged, truncated or foreign file is never evaluated.
A full disk (ENOSPC) is not a failure of the run: it is reported as `Trained` with
``no_space`` and the parent stops the grid, keeping what is stored.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from normzoo.bench.execute.pool import TaskDone, WorkerDied, pool_results
from normzoo.bench.plan.config import Config
from normzoo.bench.plan.grid import Run, TestCondition, computed_condition
from normzoo.bench.plan.tuning import effective_lr
from normzoo.bench.record.provenance import code_versions, device_name
from normzoo.bench.record.store import config_json, now

log = logging.getLogger(__name__)

WEIGHTS_DIR = "weights"
CHECKPOINTS_DIR = "checkpoints"  # of runs in training (normzoo.bench.execute.checkpoint)

__all__ = ["TaskDone", "WorkerDied"]


# ---- what flows from executors to the parent -------------------------------------------------


@dataclass(frozen=True)
class Task:
    """Train ``run`` (when ``train``) and evaluate it under ``conditions``.

    A stacked task (``stack``: runs in slot order, ``run`` the first of those it keeps) trains
    the runs of ``stack`` as one model (`normzoo.bench.execute.stack`) and keeps the results of
    the slots in ``keep`` (empty: all); a run retrained on its own is retrained in its recorded
    slot of a stack of its recorded size, the other slots holding copies of it.
    """

    run: Run
    conditions: tuple[TestCondition, ...]
    train: bool = True
    weights_sha256: str | None = None  # recorded hash of the weights an evaluation loads
    stack: tuple[Run, ...] = ()
    keep: tuple[int, ...] = ()

    @property
    def slots(self) -> tuple[int, ...]:
        """The stack slots whose runs this task produces."""
        return self.keep or tuple(range(len(self.stack)))

    @property
    def runs(self) -> tuple[Run, ...]:
        """The runs this task trains and/or evaluates."""
        return tuple(self.stack[i] for i in self.slots) if self.stack else (self.run,)


@dataclass
class Trained:
    """A run's row after training (status ok with weights saved, or failed/diverged)."""

    run_key: str
    row: dict
    curves: list[dict] = field(default_factory=list)  # rows of the store's curves table
    wandb_logged: bool = False  # a failed/diverged run's live W&B run was finished with it
    weights_sha256: str | None = None  # of the weights file written (status ok)
    no_space: bool = False  # the disk is full: nothing to store, the grid stops


@dataclass
class Evaluated:
    """Evaluation rows of one computed condition of a stored run."""

    run_key: str
    rows: list[dict]


@dataclass
class Finished:
    """A task ended; ``error`` says why its evaluation failed (the run is then ``failed``)."""

    run_key: str
    eval_seconds: float
    error: str | None = None
    wandb_logged: bool = False  # the live W&B run of the training holds everything


@dataclass
class RunResult:
    """A finished run as the W&B tracker logs it: run row, evaluation rows, training curves."""

    run: Run
    row: dict
    evaluations: list[dict] = field(default_factory=list)
    curves: list[dict] = field(default_factory=list)
    weights: Path | None = None

    @property
    def status(self) -> str:
        return self.row["status"]


# ---- devices ---------------------------------------------------------------------------------


def gpu_count() -> int:
    """Visible CUDA devices (0 without CUDA); does not initialize CUDA in this process."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def default_workers(gpus: int | None = None, workers_per_gpu: int = 1) -> int:
    """``workers_per_gpu`` per visible GPU on a GPU machine, else one worker per CPU core."""
    gpus = gpu_count() if gpus is None else gpus
    if gpus:
        return gpus * workers_per_gpu
    return os.cpu_count() or 1


def assign_devices(workers: int, gpus: int, visible: str | None = None) -> list[str | None]:
    """The GPU of each worker, round-robin over the visible ones (None: CPU).

    ``visible`` is the parent's ``CUDA_VISIBLE_DEVICES``; a worker's value is one of its entries,
    so worker i sees exactly one GPU as ``cuda:0``.
    """
    if gpus <= 0:
        return [None] * workers
    ids = (
        [v.strip() for v in visible.split(",")][:gpus] if visible else [str(i) for i in range(gpus)]
    )
    return [ids[i % len(ids)] for i in range(workers)]


def setup_worker(slot: tuple[str | None, int]) -> None:
    """Per-worker set-up from its slot ``(gpu, threads)``: its one GPU (set before CUDA starts),
    its torch threads, quiet logging."""
    import torch

    gpu, threads = slot
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)


# ---- one task, in whatever process runs it ---------------------------------------------------


def weights_path(out_dir: str | Path, run_key: str) -> Path:
    """Where a finished run's weights live (safetensors: loading executes no code)."""
    return Path(out_dir) / WEIGHTS_DIR / f"{run_key}.safetensors"


def checkpoint_path(out_dir: str | Path, run_key: str) -> Path:
    """Where a run in training keeps its latest resumable checkpoint."""
    return Path(out_dir) / CHECKPOINTS_DIR / f"{run_key}.ckpt"


class WeightsError(ValueError):
    """A weights file that cannot be trusted: unreadable, truncated, damaged or another run's."""


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_weights(model, path: Path, run_key: str | None = None) -> str:
    """Write ``model``'s state dict atomically (a kill leaves the old file or none), with
    ``run_key`` in the safetensors metadata; returns the file's sha256."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    partial = path.with_suffix(f".{os.getpid()}.partial")
    try:
        save_file(state, str(partial), metadata={"run_key": run_key} if run_key else None)
        digest = file_sha256(partial)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)  # a full disk keeps no half-written file
        raise
    return digest


def verify_weights(path: Path, run_key: str, sha256: str | None) -> None:
    """Raise `WeightsError` unless ``path`` is run ``run_key``'s intact weights file: its sha256
    equals the recorded one (when recorded) and its metadata names the run (when it has any:
    files of older normzoo versions carry none)."""
    from safetensors import safe_open

    try:
        digest = file_sha256(path)
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as error:  # missing, truncated, not safetensors
        raise WeightsError(
            f"weights of run {run_key} ({path}) are unreadable ({type(error).__name__}: {error})"
        ) from None
    if sha256 is not None and digest != sha256:
        raise WeightsError(
            f"weights of run {run_key} ({path}) are damaged or replaced: sha256 {digest[:12]}..."
            f" differs from the recorded {sha256[:12]}..."
        )
    if "run_key" in metadata and metadata["run_key"] != run_key:
        raise WeightsError(
            f"weights file {path} holds run {metadata['run_key']}, not run {run_key}"
        )


def _datamodule(run: Run, config: Config):
    from normzoo.data import NormzooDataModule

    composition = run.train_composition
    return NormzooDataModule(
        dataset=config.data.dataset,
        root=config.data.root,
        train_batch_size=run.train_batch_size,
        train_composition=composition.name,
        train_alpha=composition.alpha if composition.alpha is not None else 1.0,
        train_classes=composition.k if composition.name == "classes" else None,
        val_fraction=config.data.val_fraction,
        seed=run.seed,
        num_workers=0,
        dataset_options=dict(config.data.options),
    )


def _load_model(run: Run, config: Config, datamodule, path: Path, sha256: str | None):
    from safetensors.torch import load_file

    from normzoo.bench.execute.module import build_run_model

    verify_weights(path, run.key, sha256)
    model = build_run_model(run, config, datamodule)
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def no_space(error: BaseException) -> bool:
    """True for a full disk (or quota) anywhere in ``error``'s chain."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__ or error.__context__
    return False


def run_row(run: Run, config: Config) -> dict:
    """A run's row before training: identity, config, provenance; results still empty."""
    return {
        **run.columns(config.experiment.name),
        "status": "ok",
        "error": None,
        "val_accuracy": None,
        "train_seconds": None,
        "eval_seconds": None,
        "config_hash": config.hash,
        "config_json": config_json(config.to_dict()),
        "started_at": now(),
        "finished_at": None,
        **code_versions(),
        "device": device_name(),
        # what training reached: measured after training (execute.measure), NULL until then
        "train_accuracy": None,
        "train_loss": None,
        "train_accuracy_train_mode": None,
        "lr": effective_lr(config.train, run.train_batch_size, run.lr),
        "role": run.role,
        "stack_size": 1,
        "stack_slot": 0,
    }


def _train_logger(tracker, run: Run, config: Config):
    """The run's live W&B logger, or None (disabled, or W&B failed: the parent logs it later)."""
    if tracker is None:
        return None
    try:
        return tracker.train_logger(run, config)
    except Exception as error:  # W&B trouble never stops training
        log.warning("W&B init for %s failed (%s); logging it after the run", run.name, error)
        return None


def _finish_logger(tracker, logger, run: Run, row: dict, evaluations: list, weights=None) -> bool:
    if tracker is None or logger is None:
        return False
    return bool(tracker.finish_run(logger, run, row, evaluations, weights))


def execute_task(task: Task, config: Config, out_dir: str, tracker=None) -> Iterator:
    """Train (if asked) and evaluate one run, yielding `Trained`, `Evaluated`s and `Finished`.

    Never raises for a failing run: errors become a failed/diverged `Trained` row or a
    `Finished` with an error. Evaluations are yielded per computed condition. With a tracker,
    training logs live to the run's W&B run, which then gets the results (``wandb_logged``).
    """
    from normzoo.bench.execute.measure import training_fit
    from normzoo.bench.execute.module import DivergedError, train_run

    if task.stack:
        yield from _execute_stacked(task, config, out_dir, tracker)
        return
    run = task.run
    path = weights_path(out_dir, run.key)
    row = run_row(run, config)
    logger = _train_logger(tracker, run, config) if task.train else None
    try:
        datamodule = _datamodule(run, config)
        if task.train:
            loggers = [logger] if logger else []
            # resumes from the run's checkpoint when a killed or requeued attempt left one
            outcome = train_run(run, config, datamodule, loggers, checkpoint_path(out_dir, run.key))
            digest = save_weights(outcome.model, path, run.key)
            row.update(val_accuracy=outcome.val_accuracy, train_seconds=outcome.seconds)
            row.update(training_fit(outcome.model, datamodule, run, config))
            yield Trained(run.key, dict(row), outcome.curves, weights_sha256=digest)
            model = outcome.model
        else:
            model = _load_model(run, config, datamodule, path, task.weights_sha256)
    except Exception as error:  # one failing run must never stop the grid
        if no_space(error):
            row.update(status="failed", error=f"{type(error).__name__}: {error}")
            yield Trained(run.key, row, no_space=True)
            return
        if isinstance(error, DivergedError):
            row.update(status="diverged", error=str(error), finished_at=now())
        else:
            log.debug("run %s failed:\n%s", run.name, traceback.format_exc())
            row.update(status="failed", error=f"{type(error).__name__}: {error}", finished_at=now())
        if task.train:
            logged = _finish_logger(tracker, logger, run, row, [])
            yield Trained(run.key, row, wandb_logged=logged)
        else:
            yield Finished(run.key, 0.0, f"loading weights: {row['error']}")
        return
    yield from _evaluate(
        run, model, datamodule, task.conditions, config, row, (tracker, logger, path)
    )


def _evaluate(run: Run, model, datamodule, conditions, config: Config, row: dict, tracking):
    """Evaluate a trained model under ``conditions``: `Evaluated`s, then `Finished`.
    ``tracking``: (tracker, the run's live W&B logger or None, weights path)."""
    from normzoo.bench.execute.evaluate import evaluate_run
    from normzoo.models import has_batch_layers

    tracker, logger, path = tracking
    start = time.perf_counter()
    evaluations: list[dict] = []
    error_text = None
    try:
        batch_dependent = has_batch_layers(model)
        largest = max(config.eval.test_batch_sizes)
        groups: dict[TestCondition, list[TestCondition]] = {}
        for condition in conditions:
            computed = computed_condition(condition, batch_dependent, largest)
            groups.setdefault(computed, []).append(condition)
        for group in groups.values():
            rows = evaluate_run(model, datamodule, group, config.eval)
            for evaluation in rows:
                evaluation["run_key"] = run.key
            evaluations += rows
            yield Evaluated(run.key, rows)
    except Exception as error:
        log.debug("evaluating %s failed:\n%s", run.name, traceback.format_exc())
        error_text = f"evaluation: {type(error).__name__}: {error}"
        row.update(status="failed", error=error_text)
    seconds = time.perf_counter() - start
    row.update(eval_seconds=seconds, finished_at=now())
    logged_rows = [{k: v for k, v in e.items() if k != "fingerprint"} for e in evaluations]
    logged = _finish_logger(tracker, logger, run, row, logged_rows, path)  # as the store exports
    yield Finished(run.key, seconds, error_text, wandb_logged=logged)


def _execute_stacked(task: Task, config: Config, out_dir: str, tracker=None) -> Iterator:
    """Train a stacked task's runs as one model, then store and evaluate each kept run as
    `execute_task` does for a run trained alone. W&B gets each run from the parent once it is
    stored (no live logging: the K runs train as one). If the stack cannot train (a model that
    does not fold, or an error inside the stacked step such as a batch layer rejecting one
    model's non-finite batch), each kept run is trained alone instead."""
    from normzoo.bench.execute.measure import training_fit
    from normzoo.bench.execute.module import DivergedError
    from normzoo.bench.execute.stack import train_stack

    runs = task.stack
    try:
        datamodules = [_datamodule(run, config) for run in runs]
        checkpoint = checkpoint_path(out_dir, f"stack-{runs[0].key}-{len(runs)}")
        outcomes = train_stack(list(runs), config, datamodules, checkpoint)
        checkpoint.unlink(missing_ok=True)  # each run's result is stored next
    except Exception as error:
        log.warning(
            "stacked training of %s failed (%s: %s); training each run alone",
            ", ".join(sorted({run.name for run in runs})),
            type(error).__name__,
            error,
        )
        for slot in task.slots:
            yield from execute_task(Task(runs[slot], task.conditions), config, out_dir, tracker)
        return
    for slot in task.slots:
        run, outcome = runs[slot], outcomes[slot]
        row = {**run_row(run, config), "stack_size": len(runs), "stack_slot": slot}
        if isinstance(outcome, DivergedError):
            row.update(status="diverged", error=str(outcome), finished_at=now())
            yield Trained(run.key, row)
            continue
        path = weights_path(out_dir, run.key)
        try:
            digest = save_weights(outcome.model, path, run.key)
        except OSError as error:
            if not no_space(error):
                raise
            row.update(status="failed", error=f"{type(error).__name__}: {error}")
            yield Trained(run.key, row, no_space=True)
            return
        row.update(val_accuracy=outcome.val_accuracy, train_seconds=outcome.seconds)
        row.update(training_fit(outcome.model, datamodules[slot], run, config))
        yield Trained(run.key, dict(row), outcome.curves, weights_sha256=digest)
        tracking = (tracker, None, path)
        yield from _evaluate(
            run, outcome.model, datamodules[slot], task.conditions, config, row, tracking
        )


# ---- executors: (tasks, config, out_dir) -> Iterator[message] ---------------------------------


def in_process_results(tasks: list[Task], config: Config, out_dir: str, tracker=None) -> Iterator:
    """Run the tasks one after the other in this process (no start-up cost)."""
    import torch

    torch.set_num_threads(1)
    for task in tasks:
        yield from execute_task(task, config, out_dir, tracker)
        yield TaskDone(task)


def local_results(
    tasks: list[Task], config: Config, out_dir: str, tracker=None, workers: int = 1, gpus: int = 0
) -> Iterator:
    """Run the tasks on ``workers`` spawned processes (GPUs assigned round-robin)."""
    if workers == 1 and gpus <= 1:
        yield from in_process_results(tasks, config, out_dir, tracker)
        return
    devices = assign_devices(workers, gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
    # CPU workers: one thread each; GPU workers share the cores
    threads = max(1, (os.cpu_count() or 1) // workers) if gpus else 1
    slots = [(device, threads) for device in devices]
    yield from pool_results(tasks, execute_task, (config, out_dir, tracker), slots, setup_worker)
