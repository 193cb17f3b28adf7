"""The parent's side of execution: executor messages into the store, W&B kept up to date, and
the invocation's `Summary`.

Only the parent writes: `Trained` is one transaction, `Evaluated` one per computed condition,
`Finished` closes a run; a `WorkerDied` records each of the task's unfinished runs failed with
the signal that killed it. A full disk raises `OutOfSpaceError` (what is stored stays). W&B
trouble never stops the grid: a run not logged is retried on the next invocation.
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import time
from dataclasses import dataclass, field

from normzoo.bench.execute.messages import Evaluated, Finished, RunResult, Trained
from normzoo.bench.execute.planning import plan_grid
from normzoo.bench.execute.pool import TaskDone, WorkerDied
from normzoo.bench.execute.weights import checkpoint_path, no_space, weights_path
from normzoo.bench.execute.worker import run_row
from normzoo.bench.plan.config import Config
from normzoo.bench.plan.grid import Run
from normzoo.bench.record.outdir import OutOfSpaceError
from normzoo.bench.record.store import Store, now

log = logging.getLogger(__name__)


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


class Writer:
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


def catch_up_wandb(writer: Writer, store: Store, runs: dict) -> None:
    """Log the stored runs of this grid that are not in W&B yet (a kill before logging, or
    W&B trouble last time)."""
    if writer.tracker is None or not getattr(writer.tracker, "enabled", True):
        return
    missing = [k for k in store.not_in_wandb(runs) if k not in writer.wandb_failed]
    if missing:
        log.info("logging %d stored run(s) to W&B that are not there yet", len(missing))
    for key in missing:
        writer.log_to_wandb(runs[key])


def final_state(summary: Summary, store: Store, runs: dict, config: Config, out_dir) -> None:
    plan = plan_grid(config, out_dir, store)  # failed runs are counted as errors instead
    summary.pending_evaluations = plan.evaluations_pending
    statuses = store.statuses()
    rows = {key: store.run_row(key) for key in runs if statuses.get(key) in ("failed", "diverged")}
    summary.errors = [
        f"{runs[key].name}: {row['status']}: {row['error']}" for key, row in rows.items()
    ]
    versions = store.versions()
    summary.versions = sorted({versions[k] for k in runs if k in versions}, key=str)
