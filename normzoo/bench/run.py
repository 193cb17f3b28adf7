"""Execute the grid: train each run once, keep its weights, evaluate it under every test condition.

The parent plans `Task`s from the store (train a run, or evaluate a stored model under the
conditions it lacks), hands them to an executor (`normzoo.bench.execute.worker`) and writes
each message into the store as it arrives: `Trained` (one transaction), `Evaluated` (one
transaction per computed condition), `Finished`. Only the parent writes, so nothing is lost or
duplicated; a kill loses at most the work in progress. A dead worker costs only its run:
recorded failed with the signal that killed it, retried once in a fresh worker, then left for
``--retry-failed``.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from normzoo.bench.execute.devices import default_workers, gpu_count
from normzoo.bench.execute.messages import Task
from normzoo.bench.execute.planning import Plan, grid_runs, model_lines, plan_grid
from normzoo.bench.execute.tuning import select_learning_rates
from normzoo.bench.execute.weights import (
    CHECKPOINTS_DIR,
    WEIGHTS_DIR,
    checkpoint_path,
    remove_orphaned_partials,
    weights_path,
)
from normzoo.bench.execute.worker import local_results
from normzoo.bench.execute.writer import Summary, Writer, catch_up_wandb, final_state
from normzoo.bench.plan.config import Config
from normzoo.bench.plan.grid import Run
from normzoo.bench.record.outdir import OutOfSpaceError, claim
from normzoo.bench.record.store import STORE_NAME, Store

log = logging.getLogger(__name__)


class Interrupted(BaseException):
    """SIGINT or SIGTERM reached the parent; the invocation stops (exit status 128 + signal)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.summary: Summary | None = None

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


@contextmanager
def interrupt_on_signals():
    """Within the block, SIGINT and SIGTERM raise `Interrupted` (in Lightning too: it composes
    existing SIGTERM handlers and re-raises what is not a KeyboardInterrupt). A second signal
    during the clean-up exits at once (workers die with the parent)."""

    def second(signum, frame):
        os._exit(128 + signum)

    def first(signum, frame):
        signal.signal(signal.SIGINT, second)
        signal.signal(signal.SIGTERM, second)
        raise Interrupted(signum)

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, first)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_grid(
    config: Config,
    out_dir: str | Path,
    workers: int | None = None,
    tracker=None,
    retry_failed: bool = False,
    show_progress: bool = True,
    rerun_other_versions: bool = False,
    workers_per_gpu: int = 1,
    executor=None,
    console=None,
) -> Summary:
    """Train and evaluate what the store lacks, writing each unit of work as it arrives.

    ``executor(tasks, config, out_dir) -> Iterator[message]`` replaces the local one (submitit
    when ``execution.executor`` says so). A run whose worker dies is recorded failed and retried
    once. Raises `Interrupted` (with ``.summary``) on SIGINT/SIGTERM inside
    `interrupt_on_signals`. ``console``: the rich Console of the CLI's log handler; the progress
    bar draws on it, so log lines print above the bar instead of through it.
    """
    out_dir = Path(out_dir)
    store = _open_store(out_dir)
    if config.train.lr_grid is not None:  # tuning runs first: they decide the compared run keys
        tune = executor or _local_executor(config, workers, workers_per_gpu)
        select_learning_rates(config, store, lambda tasks: tune(tasks, config, str(out_dir)))
    runs = _compared_runs(config, store)
    plan = plan_grid(config, out_dir, store, retry_failed, rerun_other_versions)
    claim(out_dir, _claims(plan, out_dir))
    _remove_stale_checkpoints(out_dir, store, plan)
    remove_orphaned_partials(out_dir)
    planned = {run.key for task in plan.tasks for run in task.runs}
    summary = Summary(total=len(runs), skipped=len(runs) - len(planned))
    log.info(plan.line())
    for line in model_lines(config, plan):
        log.info(line)
    executor = _executor(config, executor, tracker, workers, workers_per_gpu, len(plan.tasks))
    writer = Writer(store, config, summary, tracker, runs)
    start = time.perf_counter()
    try:
        _execute(plan, executor, writer, config, out_dir, store, show_progress, console)
        catch_up_wandb(writer, store, runs)
    except OutOfSpaceError:
        store.close()
        raise
    except Interrupted as interrupt:
        summary.seconds = time.perf_counter() - start
        remove_orphaned_partials(out_dir)  # the workers are gone: what they were writing
        final_state(summary, store, runs, config, out_dir)
        store.close()
        interrupt.summary = summary
        raise
    summary.seconds = time.perf_counter() - start
    remove_orphaned_partials(out_dir)
    final_state(summary, store, runs, config, out_dir)
    store.close()
    return summary


def _open_store(out_dir: Path) -> Store:
    """The output dir's store, after claiming the files this invocation creates (for --fresh)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    new_dirs = [d for d in (WEIGHTS_DIR, CHECKPOINTS_DIR) if not os.path.lexists(out_dir / d)]
    claim(out_dir, [STORE_NAME, f"{STORE_NAME}-wal", f"{STORE_NAME}-shm", *new_dirs])
    return Store(out_dir)


def _compared_runs(config: Config, store: Store) -> dict[str, Run]:
    """The grid's runs by key; stored runs of the grid take this config's experiment name."""
    runs = {run.key: run for run in grid_runs(config, store)}
    relabelled = store.relabel(runs, config.experiment.name)
    if relabelled:
        log.info(
            "%d stored run(s) of this grid carried another experiment name: now labelled '%s'"
            " (the name is a label, not part of a run's identity)",
            relabelled,
            config.experiment.name,
        )
    return runs


def _executor(config: Config, executor, tracker, workers, workers_per_gpu: int, tasks: int):
    """The executor of the grid's tasks: the given one, submitit, or local workers (no more than
    tasks); with a tracker that logs live, runs log to W&B where they train."""
    gpus = gpu_count()
    workers = workers or config.execution.workers or default_workers(gpus, workers_per_gpu)
    workers = max(1, min(workers, tasks or 1))
    if executor is None:
        if config.execution.executor == "submitit":
            executor = submitit_results
        else:
            executor = functools.partial(local_results, workers=workers, gpus=gpus)
    if (
        tracker is not None
        and getattr(tracker, "enabled", False)
        and hasattr(tracker, "train_logger")
    ):
        executor = functools.partial(executor, tracker=tracker)  # runs log live where they train
    return executor


def _execute(plan: Plan, executor, writer: Writer, config, out_dir, store, show_progress, console):
    """Run the plan's tasks, storing each message; runs whose worker died are retried once, each
    in a fresh worker."""
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    disable = not show_progress or not plan.tasks
    with Progress(*columns, console=console, disable=disable) as progress:
        bar = progress.add_task("runs", total=len(plan.tasks))
        tasks = plan.tasks
        for attempt in (1, 2):
            writer.died.clear()
            results = executor(tasks, config, str(out_dir))
            try:
                for message in results:
                    if writer.handle(message):
                        progress.advance(bar)
            finally:
                close = getattr(results, "close", None)
                if close is not None:  # stop the workers now, not at garbage collection
                    close()
            if not writer.died or attempt == 2:
                break
            retry = plan_grid(config, out_dir, store, only=set(writer.died))
            tasks = retry.tasks
            log.warning("retrying %d run(s) whose worker died, each in a fresh worker", len(tasks))
            progress.update(bar, total=len(plan.tasks) + len(tasks))
    writer.died.clear()


def _claims(plan: Plan, out_dir: Path) -> list[str]:
    """The files the plan's training tasks will write, relative to ``out_dir`` (for --fresh)."""
    paths = []
    for task in plan.tasks:
        if task.train:
            for run in task.runs:
                paths += [weights_path(out_dir, run.key), checkpoint_path(out_dir, run.key)]
            if task.stack:
                paths.append(
                    checkpoint_path(out_dir, f"stack-{task.stack[0].key}-{len(task.stack)}")
                )
    return [path.relative_to(out_dir).as_posix() for path in paths]


def _local_executor(config: Config, workers: int | None, workers_per_gpu: int):
    """The local executor of the tuning runs (submitit configs use theirs)."""
    if config.execution.executor == "submitit":
        return submitit_results
    gpus = gpu_count()
    workers = workers or config.execution.workers or default_workers(gpus, workers_per_gpu)
    return functools.partial(local_results, workers=workers, gpus=gpus)


def _remove_stale_checkpoints(out_dir: Path, store: Store, plan: Plan) -> None:
    """Remove the checkpoints of runs whose training is stored and not planned again (a parent
    killed between storing a run and removing its checkpoint leaves one); a failed run keeps its
    checkpoint for ``--retry-failed``."""
    training = {run.key for task in plan.tasks if task.train for run in task.runs}
    statuses = store.statuses()
    for path in (out_dir / CHECKPOINTS_DIR).glob("*.ckpt"):
        key = path.stem
        if key not in training and statuses.get(key) in ("ok", "diverged"):
            path.unlink(missing_ok=True)


def grid_status(config: Config, out_dir: str | Path) -> Summary:
    """The state of the grid in the store (nothing run): failed runs, missing evaluations."""
    with Store(out_dir, read_only=True) as store:
        runs = {run.key: run for run in grid_runs(config, store)}
        summary = Summary(total=len(runs), skipped=len(runs))
        final_state(summary, store, runs, config, out_dir)
    return summary


def submitit_results(tasks: list[Task], config: Config, out_dir: str, tracker=None) -> Iterator:
    """Tasks as submitit jobs (SLURM or local), stored exactly once (`bench.execute.cluster`)."""
    try:  # submitit: an optional dependency (normzoo[cluster])
        from normzoo.bench.execute.cluster import submitit_results as cluster_results
    except ImportError as error:
        raise ValueError(
            "execution.executor=submitit needs the optional dependency:"
            " pip install 'normzoo[cluster]'"
        ) from error
    yield from cluster_results(tasks, config, out_dir, tracker)
