"""What runs in a worker: one `Task` (train a run and/or evaluate it), streamed as messages.

`execute_task` is a generator of `Trained`, `Evaluated` (one per computed condition) and
`Finished`; executors run it where they like and hand the messages to the parent, which alone
writes the store (`normzoo.bench.execute.writer`). An executor is a function
``(tasks, config, out_dir) -> Iterator[message]`` that also yields `TaskDone` after each task
and `WorkerDied` for a task whose process died: `in_process_results`, `local_results`
(spawned workers, GPUs round-robin); `normzoo.bench.run` picks the submitit one.

Every run records provenance (`code_versions`, `device_name`); its weights are kept and
verified (`normzoo.bench.execute.weights`), so evaluating a stored run never retrains it. A full
disk (ENOSPC) is not a failure of the run: it is reported as `Trained` with ``no_space`` and the
parent stops the grid, keeping what is stored.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file

from normzoo.bench.execute.devices import assign_devices, setup_worker
from normzoo.bench.execute.evaluate import evaluate_run
from normzoo.bench.execute.messages import Evaluated, Finished, Task, Trained
from normzoo.bench.execute.pool import TaskDone, pool_results
from normzoo.bench.execute.weights import (
    checkpoint_path,
    no_space,
    save_weights,
    verify_weights,
    weights_path,
)
from normzoo.bench.plan.config import Config
from normzoo.bench.plan.grid import Run, TestCondition, computed_condition
from normzoo.bench.plan.tuning import effective_lr
from normzoo.bench.record.provenance import code_versions, device_name
from normzoo.bench.record.store import config_json, now
from normzoo.models import has_batch_layers

log = logging.getLogger(__name__)


def _datamodule(run: Run, config: Config):
    # Lightning loads here, in the worker: the parent imports this module for its executors
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

    # Lightning loads here, in the worker: the parent imports this module for its executors
    from normzoo.bench.execute.train.module import build_run_model

    verify_weights(path, run.key, sha256)
    model = build_run_model(run, config, datamodule)
    model.load_state_dict(load_file(str(path)))
    return model.eval()


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
    # Lightning loads here, in the worker: the parent imports this module for its executors
    from normzoo.bench.execute.train.module import DivergedError, train_run

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
            yield _trained(run, outcome, datamodule, config, row, path)
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

    tracker, logger, path = tracking
    start = time.perf_counter()
    evaluations: list[dict] = []
    failures: list[tuple[list[TestCondition], Exception]] = []
    groups: dict[TestCondition, list[TestCondition]] = {}
    try:
        batch_dependent = has_batch_layers(model)
        largest = max(config.eval.test_batch_sizes)
        for condition in conditions:
            computed = computed_condition(condition, batch_dependent, largest)
            groups.setdefault(computed, []).append(condition)
    except Exception as error:
        log.debug("evaluating %s failed:\n%s", run.name, traceback.format_exc())
        failures.append((list(conditions), error))
        groups = {}
    # a group that fails leaves the others to be evaluated and stored: its conditions stay
    # pending, re-evaluated from the stored weights with --retry-failed
    for group in groups.values():
        try:
            rows = evaluate_run(model, datamodule, group, config.eval)
        except Exception as error:
            log.debug("evaluating %s failed:\n%s", run.name, traceback.format_exc())
            failures.append((group, error))
            continue
        for evaluation in rows:
            evaluation["run_key"] = run.key
        evaluations += rows
        yield Evaluated(run.key, rows)
    error_text = _evaluation_error(failures, len(conditions))
    if error_text is not None:
        row.update(status="failed", error=error_text)
    seconds = time.perf_counter() - start
    row.update(eval_seconds=seconds, finished_at=now())
    logged_rows = [{k: v for k, v in e.items() if k != "fingerprint"} for e in evaluations]
    logged = _finish_logger(tracker, logger, run, row, logged_rows, path)  # as the store exports
    yield Finished(run.key, seconds, error_text, wandb_logged=logged)


def _evaluation_error(failures: list, total: int) -> str | None:
    """The run's error text for evaluations that failed (None if none did): how many of the
    ``total`` conditions, and the first error with the first of its conditions."""
    if not failures:
        return None
    group, error = failures[0]
    failed = sum(len(conditions) for conditions, _ in failures)
    first = group[0].label if group else "?"
    stored = ", the others are stored" if failed < total else ""
    return (
        f"evaluation: {type(error).__name__}: {error} (condition {first}; {failed} of {total}"
        f" conditions failed{stored})"
    )


def _trained(run: Run, outcome, datamodule, config: Config, row: dict, path: Path) -> Trained:
    """Keep a freshly trained model: its weights file (hash returned in the message), its
    validation accuracy, time and training fit (`measure.training_fit`) in ``row``."""
    from normzoo.bench.execute.train.measure import training_fit  # worker-side, as above

    digest = save_weights(outcome.model, path, run.key)
    row.update(val_accuracy=outcome.val_accuracy, train_seconds=outcome.seconds)
    row.update(training_fit(outcome.model, datamodule, run, config))
    return Trained(run.key, dict(row), outcome.curves, weights_sha256=digest)


def _execute_stacked(task: Task, config: Config, out_dir: str, tracker=None) -> Iterator:
    """Train a stacked task's runs as one model, then store and evaluate each kept run as
    `execute_task` does for a run trained alone. W&B gets each run from the parent once it is
    stored (no live logging: the K runs train as one). If the stack cannot train (a model that
    does not fold, or an error inside the stacked step such as a batch layer rejecting one
    model's non-finite batch), each kept run is trained alone instead."""
    # Lightning loads here, in the worker: the parent imports this module for its executors
    from normzoo.bench.execute.train.module import DivergedError
    from normzoo.bench.execute.train.stack import train_stack

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
            trained = _trained(run, outcome, datamodules[slot], config, row, path)
        except OSError as error:
            if not no_space(error):
                raise
            row.update(status="failed", error=f"{type(error).__name__}: {error}")
            yield Trained(run.key, row, no_space=True)
            return
        yield trained
        tracking = (tracker, None, path)
        yield from _evaluate(
            run, outcome.model, datamodules[slot], task.conditions, config, row, tracking
        )


# ---- executors: (tasks, config, out_dir) -> Iterator[message] ---------------------------------


def in_process_results(tasks: list[Task], config: Config, out_dir: str, tracker=None) -> Iterator:
    """Run the tasks one after the other in this process (no start-up cost)."""

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
