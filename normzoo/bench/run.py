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
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from normzoo.bench.execute.evaluate import condition_fingerprint
from normzoo.bench.execute.tuning import select_learning_rates, stored_selection
from normzoo.bench.execute.worker import (
    CHECKPOINTS_DIR,
    WEIGHTS_DIR,
    Evaluated,
    Finished,
    RunResult,
    Task,
    TaskDone,
    Trained,
    WeightsError,
    WorkerDied,
    checkpoint_path,
    default_workers,
    gpu_count,
    local_results,
    no_space,
    run_row,
    verify_weights,
    weights_path,
)
from normzoo.bench.plan.config import Config
from normzoo.bench.plan.grid import Run, TestCondition, expand_conditions, expand_runs
from normzoo.bench.record.outdir import OutOfSpaceError
from normzoo.bench.record.provenance import code_versions
from normzoo.bench.record.store import EVAL_KEY, STORE_NAME, VERSION_COLUMNS, Store, now

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


# ---- planning: what the store lacks ----------------------------------------------------------


def grid_runs(config: Config, store: Store) -> list[Run]:
    """The compared runs, with the learning rates selected by the stored tuning runs (a config
    with ``train.lr_grid`` whose tuning is incomplete gets ``train.lr`` as a placeholder)."""
    return expand_runs(config, stored_selection(config, store))


def condition_key(condition: TestCondition) -> tuple:
    """A test condition as stored: the values of `EVAL_KEY`."""
    columns = condition.columns()
    return tuple(columns[c] for c in EVAL_KEY)


@dataclass
class Plan:
    """What an invocation has to do for a grid, from what its store holds."""

    tasks: list[Task]
    runs: int
    conditions: int
    runs_stored: int = 0
    evaluations_stored: int = 0
    evaluations_pending: int = 0
    kept_failed: int = 0  # failed/diverged runs not retried (no --retry-failed)
    other_versions: int = 0  # stored runs made by other code or library versions

    @property
    def to_train(self) -> int:
        return sum(len(t.runs) for t in self.tasks if t.train)

    @property
    def to_evaluate(self) -> int:
        return sum(len(t.runs) for t in self.tasks if not t.train)

    def line(self) -> str:
        return (
            f"store: {self.runs_stored} of {self.runs} runs and {self.evaluations_stored} of"
            f" {self.runs * self.conditions} evaluations stored; pending: {self.to_train} runs to"
            f" train, {self.to_evaluate} to evaluate from stored weights,"
            f" {self.evaluations_pending} evaluations"
            + (f"; {self.kept_failed} failed/diverged kept" if self.kept_failed else "")
            + (f"; {self.other_versions} made by other versions" if self.other_versions else "")
        )


def plan_grid(
    config: Config,
    out_dir: str | Path,
    store: Store,
    retry_failed: bool = False,
    rerun_other_versions: bool = False,
    only: set[str] | None = None,
) -> Plan:
    """Tasks for every run of the grid (or of ``only``) whose training or evaluations are missing.

    A stored ok run with weights is only evaluated under the conditions it lacks, or whose stored
    fingerprint (`condition_fingerprint`: mix prior, TENT settings, ...) differs from the
    config's; without weights it is retrained. Failed runs with weights (evaluation failed) are
    re-evaluated, others retrained. Weights that fail `verify_weights` (damaged, truncated,
    another run's) are never evaluated: the run is retrained, with a warning.
    """
    runs, conditions = grid_runs(config, store), expand_conditions(config)
    statuses, evaluated, versions = store.statuses(), store.evaluated(), store.versions()
    current = tuple(code_versions()[c] for c in VERSION_COLUMNS)
    fingerprints = {c: condition_fingerprint(c, config.eval) for c in conditions}
    plan = Plan([], len(runs), len(conditions))
    for run in runs:
        status = statuses.get(run.key)
        done = evaluated.get(run.key, {})
        pending = tuple(c for c in conditions if done.get(condition_key(c), 0) != fingerprints[c])
        if status is not None:
            plan.runs_stored += 1
            plan.evaluations_stored += len(conditions) - len(pending)
            plan.other_versions += versions[run.key] != current
        if only is not None and run.key not in only:
            continue
        has_weights = weights_path(out_dir, run.key).exists()
        retry = retry_failed or only is not None
        if status is None or (rerun_other_versions and versions[run.key] != current):
            task = Task(run, tuple(conditions))
        elif status == "ok" and not pending:
            continue
        elif status in ("failed", "diverged") and not retry:
            plan.kept_failed += 1
            continue
        elif has_weights and status != "diverged" and _intact(out_dir, run, store):
            task = Task(run, pending, train=False, weights_sha256=store.weights_hash(run.key))
        else:
            if status == "ok" and not has_weights:  # damaged ones were named by _intact
                log.warning("weights of %s are missing: retraining it", run.name)
            task = Task(run, tuple(conditions))
        plan.tasks.append(task)
        plan.evaluations_pending += len(task.conditions)
    plan.tasks = stack_tasks(plan.tasks, config, store, out_dir)
    return plan


def _intact(out_dir: str | Path, run: Run, store: Store) -> bool:
    """Whether a stored run's weights file verifies (hash and run key); warns when not."""
    try:
        verify_weights(weights_path(out_dir, run.key), run.key, store.weights_hash(run.key))
    except WeightsError as error:
        log.warning(
            "%s: %s; retraining run %s (never evaluated from this file)", run.name, error, run.name
        )
        return False
    return True


def stack_tasks(tasks: list[Task], config: Config, store: Store, out_dir: str | Path) -> list[Task]:
    """Group training tasks of one grid cell (runs that differ only by seed) into stacked tasks
    (`normzoo.bench.execute.stack`).

    A run's stack and slot are a function of the config alone: the stackable runs of each cell,
    in grid (seed) order, cut into stacks of ``execution.stack``. A stack trains whole and keeps
    the results of its runs that are due (``keep``), so a run trains the same way whatever else
    is stored (an interrupted grid resumes to the uninterrupted results). A run stored ok from a
    stack whose weights are lost is retrained as it was recorded (its stack size and slot, the
    other slots holding copies of it) and reproduces its weights; runs that cannot stack
    (`stack_support`) stay alone.
    """
    from normzoo.bench.execute.stack import stack_support

    statuses = store.statuses()
    recorded: dict[str, tuple[int, int]] = {}  # run key -> (stack size, slot) to reproduce
    for task in tasks:
        key = task.run.key
        if task.train and statuses.get(key) == "ok" and not weights_path(out_dir, key).exists():
            row = store.run_row(key)
            if row["stack_size"] > 1:
                recorded[key] = (row["stack_size"], row["stack_slot"])
    due = {task.run.key for task in tasks if task.train and task.run.key not in recorded}
    cells: dict[tuple, list[Run]] = {}
    for run in grid_runs(config, store):  # tuned configs: the selected learning rates
        if stack_support(config, run) is None:
            cell = (run.norm.label, run.train_batch_size, run.train_composition.label)
            cells.setdefault(cell, []).append(run)
    size = config.execution.stack
    stack_of: dict[str, tuple[Run, ...]] = {}
    for runs in cells.values():
        for i in range(0, len(runs), size):
            for run in runs[i : i + size]:
                stack_of[run.key] = tuple(runs[i : i + size])
    out: list[Task] = []
    placed: set[str] = set()
    for task in tasks:
        run = task.run
        if run.key in recorded:
            size, slot = recorded[run.key]
            out.append(Task(run, task.conditions, stack=(run,) * size, keep=(slot,)))
        elif not task.train or len(stack_of.get(run.key, ())) < 2:
            out.append(task)
        elif run.key not in placed:  # the stack takes the place of its first due run
            stack = stack_of[run.key]
            keep = tuple(i for i, r in enumerate(stack) if r.key in due and r.key not in placed)
            placed.update(stack[i].key for i in keep)
            out.append(
                Task(
                    stack[keep[0]],
                    task.conditions,
                    stack=stack,
                    keep=keep if len(keep) < len(stack) else (),
                )
            )
    return out


# ---- the grid --------------------------------------------------------------------------------


@dataclass
class Summary:
    """What an invocation did, and the state of the grid in the store afterwards."""

    total: int
    skipped: int = 0
    outcomes: dict[str, str] = field(default_factory=dict)  # run key -> final status here
    trained: set[str] = field(default_factory=set)  # run keys trained ok here
    evaluations: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)  # failed/diverged runs of the whole grid
    pending_evaluations: int = 0
    versions: list[tuple] = field(default_factory=list)  # distinct versions in the grid's runs

    def _count(self, status: str) -> int:
        return sum(s == status for s in self.outcomes.values())

    @property
    def ok(self) -> int:
        return self._count("ok")

    @property
    def failed(self) -> int:
        return self._count("failed")

    @property
    def diverged(self) -> int:
        return self._count("diverged")

    @property
    def not_finished(self) -> int:
        return self.total - self.skipped - len(self.outcomes)

    @property
    def exit_status(self) -> int:
        """0 when every run of the grid is ok and fully evaluated, else 1."""
        return 0 if not self.errors and not self.pending_evaluations else 1

    def line(self) -> str:
        trained = sum(s == "ok" and k in self.trained for k, s in self.outcomes.items())
        return (
            f"{self.ok} finished ({trained} trained, {self.ok - trained} evaluated from stored"
            f" weights), {self.failed} failed, {self.diverged} diverged,"
            f" {self.skipped} skipped (already in the store), {self.not_finished} not finished"
            f" of {self.total} runs; {self.evaluations} evaluations written in {self.seconds:.0f}s"
        )


def _died_row(run: Run, config: Config, reason: str) -> dict:
    row = run_row(run, config)
    row.update(status="failed", error=reason, finished_at=now(), device=None)
    return row


class _Writer:
    """Writes executor messages into the store and keeps the summary and W&B up to date."""

    def __init__(self, store: Store, config: Config, summary: Summary, tracker, runs: dict) -> None:
        self.store, self.config, self.summary, self.tracker = store, config, summary, tracker
        self.out_dir = store.path.parent
        self.runs = runs  # run key -> Run
        self.died: set[str] = set()
        self.finished: set[str] = set()  # runs whose task ended for them (a stack goes on)
        self.wandb_failed: set[str] = set()  # not retried until the next invocation

    def handle(self, message) -> bool:
        """Store one message; True when a task ended (for the progress bar). A full disk raises
        `OutOfSpaceError` (what is stored stays)."""
        try:
            return self._handle(message)
        except sqlite3.OperationalError as error:
            if "full" in str(error) or no_space(error):
                raise self.out_of_space(error) from None
            raise
        except OSError as error:
            if no_space(error):
                raise self.out_of_space(error) from None
            raise

    def out_of_space(self, error: BaseException) -> OutOfSpaceError:
        stored = sum(status == "ok" for status in self.store.statuses().values())
        return OutOfSpaceError(
            f"no space left on the device of {self.out_dir} ({error}); {stored} finished run(s)"
            " are kept in the store: free some space and rerun the same command to resume"
        )

    def _handle(self, message) -> bool:
        if isinstance(message, Trained):
            if message.no_space:
                raise self.out_of_space(message.row["error"])
            self.store.write_run(message.row, (), message.curves, message.weights_sha256)
            checkpoint_path(self.out_dir, message.run_key).unlink(missing_ok=True)  # stored now
            run = self.runs[message.run_key]
            if message.row["status"] == "ok":
                self.summary.trained.add(run.key)
            else:
                self._ended(run, message.row["status"], message.row["error"], message.wandb_logged)
        elif isinstance(message, Evaluated):
            self.store.write_evaluations(message.rows)
            self.summary.evaluations += len(message.rows)
        elif isinstance(message, Finished):
            run = self.runs[message.run_key]
            if message.error:
                self.store.mark_failed(run.key, message.error)
                self._ended(run, "failed", message.error, message.wandb_logged)
            else:
                self.store.update_run(
                    run.key,
                    status="ok",
                    error=None,
                    eval_seconds=message.eval_seconds,
                    finished_at=now(),
                )
                self._ended(run, "ok", None, message.wandb_logged)
        elif isinstance(message, WorkerDied):
            if message.exitcode in (-signal.SIGTERM, -signal.SIGINT):
                time.sleep(0.5)  # a signal to the whole group reaches this process too: let it
            reason = message.reason
            for run in message.task.runs:  # a stacked task: each of its runs
                if run.key in self.finished:  # stored and evaluated before the worker died
                    continue
                if self.store.statuses().get(run.key) == "ok":  # trained, died while evaluating
                    self.store.mark_failed(run.key, reason)
                else:
                    self.store.write_run(_died_row(run, self.config, reason))
                self.died.add(run.key)
                self._ended(run, "failed", reason, wandb_logged=None)
                log.warning("%s: %s", run.name, reason)
            return True
        return isinstance(message, TaskDone)

    def _ended(self, run: Run, status: str, error: str | None, wandb_logged: bool | None) -> None:
        """A run's task ended; ``wandb_logged``: W&B has it all (None: a retry follows)."""
        self.summary.outcomes[run.key] = status
        if wandb_logged is not None:
            self.finished.add(run.key)
        log.info("%s: %s%s", run.name, status, f" ({error})" if error and status != "ok" else "")
        if wandb_logged:
            self.store.mark_wandb_logged(run.key)
        elif wandb_logged is not None:
            self.log_to_wandb(run)

    def log_to_wandb(self, run: Run) -> None:
        """The W&B hook: log a stored run, mark it logged; W&B errors never stop the grid."""
        if self.tracker is None or not getattr(self.tracker, "enabled", True):
            return
        row = self.store.run_row(run.key)
        evaluations = self.store.evaluation_rows(run.key)
        curves = self.store.curves_frame([run.key]).to_dict("records")
        weights = weights_path(self.out_dir, run.key)
        result = RunResult(run, row, evaluations, curves, weights if weights.exists() else None)
        try:
            logged = self.tracker.log_run(result)
        except Exception as error:  # W&B trouble must not lose or stop work
            self.wandb_failed.add(run.key)
            log.warning(
                "W&B logging of %s failed (%s: %s); it is retried on the next invocation",
                run.name,
                type(error).__name__,
                error,
            )
            return
        if logged is not False:  # True, or a tracker that returns nothing
            self.store.mark_wandb_logged(run.key)


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
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from normzoo.bench.record.outdir import claim

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    new_dirs = [d for d in (WEIGHTS_DIR, CHECKPOINTS_DIR) if not os.path.lexists(out_dir / d)]
    claim(out_dir, [STORE_NAME, f"{STORE_NAME}-wal", f"{STORE_NAME}-shm", *new_dirs])
    store = Store(out_dir)
    if config.train.lr_grid is not None:  # tuning runs first: they decide the compared run keys
        tune = executor or _local_executor(config, workers, workers_per_gpu)
        select_learning_rates(config, store, lambda tasks: tune(tasks, config, str(out_dir)))
    runs = {run.key: run for run in grid_runs(config, store)}
    relabelled = store.relabel(runs, config.experiment.name)
    if relabelled:
        log.info(
            "%d stored run(s) of this grid carried another experiment name: now labelled '%s'"
            " (the name is a label, not part of a run's identity)",
            relabelled,
            config.experiment.name,
        )
    plan = plan_grid(config, out_dir, store, retry_failed, rerun_other_versions)
    claim(out_dir, _claims(plan, out_dir))
    _remove_stale_checkpoints(out_dir, store, plan)
    planned = {run.key for task in plan.tasks for run in task.runs}
    summary = Summary(total=len(runs), skipped=len(runs) - len(planned))
    log.info(plan.line())
    gpus = gpu_count()
    workers = workers or config.execution.workers or default_workers(gpus, workers_per_gpu)
    workers = max(1, min(workers, len(plan.tasks) or 1))
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
    writer = _Writer(store, config, summary, tracker, runs)
    start = time.perf_counter()
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    try:
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
                log.warning(
                    "retrying %d run(s) whose worker died, each in a fresh worker", len(tasks)
                )
                progress.update(bar, total=len(plan.tasks) + len(tasks))
        writer.died.clear()
        _catch_up_wandb(writer, store, runs)
    except OutOfSpaceError:
        store.close()
        raise
    except Interrupted as interrupt:
        summary.seconds = time.perf_counter() - start
        _final_state(summary, store, runs, config, out_dir)
        store.close()
        interrupt.summary = summary
        raise
    summary.seconds = time.perf_counter() - start
    _final_state(summary, store, runs, config, out_dir)
    store.close()
    return summary


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
        _final_state(summary, store, runs, config, out_dir)
    return summary


def _catch_up_wandb(writer: _Writer, store: Store, runs: dict) -> None:
    """Log the stored runs of this grid that are not in W&B yet (a kill before logging, or
    W&B trouble last time)."""
    if writer.tracker is None or not getattr(writer.tracker, "enabled", True):
        return
    missing = [k for k in store.not_in_wandb(runs) if k not in writer.wandb_failed]
    if missing:
        log.info("logging %d stored run(s) to W&B that are not there yet", len(missing))
    for key in missing:
        writer.log_to_wandb(runs[key])


def _final_state(summary: Summary, store: Store, runs: dict, config: Config, out_dir) -> None:
    plan = plan_grid(config, out_dir, store)  # failed runs are counted as errors instead
    summary.pending_evaluations = plan.evaluations_pending
    statuses = store.statuses()
    rows = {key: store.run_row(key) for key in runs if statuses.get(key) in ("failed", "diverged")}
    summary.errors = [
        f"{runs[key].name}: {row['status']}: {row['error']}" for key, row in rows.items()
    ]
    versions = store.versions()
    summary.versions = sorted({versions[k] for k in runs if k in versions}, key=str)


def submitit_results(tasks: list[Task], config: Config, out_dir: str, tracker=None) -> Iterator:
    """Tasks as submitit jobs (SLURM or local), stored exactly once (`bench.execute.cluster`)."""
    try:
        from normzoo.bench.execute.cluster import submitit_results as cluster_results
    except ImportError as error:
        raise ValueError(
            "execution.executor=submitit needs the optional dependency:"
            " pip install 'normzoo[cluster]'"
        ) from error
    yield from cluster_results(tasks, config, out_dir, tracker)
