"""Execute the grid: each run trains and evaluates in a worker; the parent writes the store.

Local default: a process pool (spawn, one torch thread per worker). ``execution.executor:
submitit`` sends each run to a SLURM cluster through submitit (optional dependency). Either way
workers return results and only the parent writes, so nothing is lost or duplicated.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from normzoo.bench.config import Config
from normzoo.bench.grid import Run, TestCondition, expand_conditions, expand_runs
from normzoo.bench.store import Store, config_json, now
from normzoo.bench.track import Tracker

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a worker returns: the run row, its evaluation rows, and its training curves
    (``wandb_logged``: the worker's W&B run already holds all of it)."""

    run: Run
    row: dict
    evaluations: list[dict] = field(default_factory=list)
    curves: list[dict] = field(default_factory=list)
    wandb_logged: bool = False

    @property
    def status(self) -> str:
        return self.row["status"]


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


def execute_run(
    run: Run, config: Config, conditions: list[TestCondition], tracker: Tracker | None = None
) -> RunResult:
    """Train one run and evaluate it under every condition; never raises (errors become rows).

    With a tracker the run logs live to its own W&B run, which also receives the results.
    """
    from normzoo.bench.evaluate import evaluate_run
    from normzoo.bench.module import DivergedError, train_run

    row = {
        **run.columns(config.experiment.name),
        "status": "ok",
        "error": None,
        "val_accuracy": None,
        "train_seconds": None,
        "eval_seconds": None,
        "config_hash": config.hash,
        "config_json": config_json(config.to_dict()),
        "started_at": now(),
    }
    result = RunResult(run, row)
    logger = _train_logger(tracker, run, config)
    try:
        datamodule = _datamodule(run, config)
        outcome = train_run(run, config, datamodule, [logger] if logger else [])
        row.update(val_accuracy=outcome.val_accuracy, train_seconds=outcome.seconds)
        result.curves = outcome.curves
        start = time.perf_counter()
        result.evaluations = evaluate_run(outcome.model, datamodule, conditions, config.eval)
        row["eval_seconds"] = time.perf_counter() - start
    except DivergedError as error:
        row.update(status="diverged", error=str(error))
        result.evaluations = []
    except Exception as error:  # one failing run must never stop the grid
        log.debug("run %s failed:\n%s", run.name, traceback.format_exc())
        row.update(status="failed", error=f"{type(error).__name__}: {error}")
        result.evaluations = []
    row["finished_at"] = now()
    for evaluation in result.evaluations:
        evaluation["run_key"] = run.key
    if tracker is not None:
        result.wandb_logged = tracker.finish_run(logger, run, row, result.evaluations)
    return result


def _train_logger(tracker: Tracker | None, run: Run, config: Config):
    """The run's WandbLogger, or None (disabled, or W&B failed: the parent logs it later)."""
    if tracker is None:
        return None
    try:
        return tracker.train_logger(run, config)
    except Exception as error:  # W&B trouble never stops training
        log.warning("W&B init for %s failed (%s); logging it after the run", run.name, error)
        return None


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)


def _local_results(
    tasks: list[Run], config: Config, workers: int, tracker: Tracker | None
) -> Iterator[RunResult]:
    conditions = expand_conditions(config)
    if workers == 1:  # in-process: no start-up cost, same single-threaded computation
        _init_worker()
        for run in tasks:
            yield execute_run(run, config, conditions, tracker)
        return
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker)
    try:
        futures = [pool.submit(execute_run, run, config, conditions, tracker) for run in tasks]
        for future in as_completed(futures):
            try:
                yield future.result()
            except BrokenProcessPool as error:  # a worker died (killed, OOM): rerun on resume
                log.error("a worker process died (%s); unfinished runs will rerun on resume", error)
                return
    finally:  # on Ctrl-C or an error in the parent, do not wait for the queued runs
        pool.shutdown(wait=False, cancel_futures=True)


def _submitit_results(
    tasks: list[Run], config: Config, out_dir: Path, tracker: Tracker | None
) -> Iterator[RunResult]:
    try:
        import submitit
    except ImportError as error:
        raise ValueError(
            "execution.executor=submitit needs the optional dependency:"
            " pip install 'normzoo[cluster]'"
        ) from error
    executor = submitit.AutoExecutor(folder=out_dir / "submitit")
    executor.update_parameters(**config.execution.submitit)
    conditions = expand_conditions(config)
    jobs = executor.map_array(
        execute_run,
        tasks,
        [config] * len(tasks),
        [conditions] * len(tasks),
        [tracker] * len(tasks),
    )
    for job in submitit.helpers.as_completed(jobs):
        yield job.result()


@dataclass
class Summary:
    """What an invocation did."""

    total: int
    skipped: int = 0
    ok: int = 0
    failed: int = 0
    diverged: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def not_finished(self) -> int:
        return self.total - self.skipped - self.ok - self.failed - self.diverged

    def line(self) -> str:
        return (
            f"{self.ok} finished, {self.failed} failed, {self.diverged} diverged, "
            f"{self.skipped} skipped (already in the store), {self.not_finished} not finished "
            f"of {self.total} runs in {self.seconds:.0f}s"
        )


def default_workers() -> int:
    """One worker per CPU core."""
    return os.cpu_count() or 1


def run_grid(
    config: Config,
    out_dir: str | Path,
    workers: int | None = None,
    tracker: Tracker | None = None,
    retry_failed: bool = False,
    show_progress: bool = True,
) -> Summary:
    """Run every run of the grid that the store does not hold yet, writing each as it finishes."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    out_dir = Path(out_dir)
    runs = expand_runs(config)
    store = Store(out_dir)
    recorded = store.statuses()
    redo = ("failed", "diverged") if retry_failed else ()
    tasks = [r for r in runs if r.key not in recorded or recorded[r.key] in redo]
    summary = Summary(total=len(runs), skipped=len(runs) - len(tasks))
    if summary.skipped:
        log.info("resuming: %d of %d runs already in %s", summary.skipped, len(runs), store.path)
    workers = max(1, min(workers or config.execution.workers or default_workers(), len(tasks) or 1))
    start = time.perf_counter()
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not show_progress or not tasks, transient=False) as progress:
        bar = progress.add_task("runs", total=len(runs), completed=summary.skipped)
        if config.execution.executor == "submitit":
            results = _submitit_results(tasks, config, out_dir, tracker)
        else:
            results = _local_results(tasks, config, workers, tracker)
        for done, result in enumerate(results, start=1):
            store.write_run(result.row, result.evaluations, result.curves)
            setattr(summary, result.status, getattr(summary, result.status) + 1)
            if result.status != "ok":
                summary.errors.append(f"{result.run.name}: {result.status}: {result.row['error']}")
            if tracker is not None and tracker.enabled and not result.wandb_logged:
                tracker.log_stored_run(result.run, result.row, result.evaluations, result.curves)
            elapsed = time.perf_counter() - start
            eta = elapsed / done * (len(tasks) - done)
            log.info(
                "[%d/%d] %s: %s val_acc=%s (%.1fs train) ETA %.0fs",
                summary.skipped + done,
                len(runs),
                result.run.name,
                result.status,
                _fmt(result.row["val_accuracy"]),
                result.row["train_seconds"] or 0.0,
                eta,
            )
            progress.advance(bar)
    summary.seconds = time.perf_counter() - start
    store.close()
    return summary


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"
