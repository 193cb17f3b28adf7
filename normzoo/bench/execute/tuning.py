"""Run learning-rate selection: train the pending tuning runs, store them, select per cell.

The rule and the grid are `normzoo.bench.plan.tuning`'s; this module feeds it the validation
accuracies of the stored tuning runs (role ``tune``) and trains what it asks for, through any
executor, until every cell has its learning rate. Tuning runs are trained and never evaluated on
the test split, so the selection cannot depend on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

from normzoo.bench.execute.messages import Finished, Task, Trained
from normzoo.bench.execute.pool import WorkerDied
from normzoo.bench.execute.worker import run_row
from normzoo.bench.plan.config import Config
from normzoo.bench.plan.tuning import Cell, TuningState, plan_tuning, scores_from_runs
from normzoo.bench.record.store import Store, now

log = logging.getLogger(__name__)


def stored_scores(store: Store) -> dict[str, float | None]:
    """run key -> validation accuracy of every stored tuning run (None: failed or diverged)."""
    return scores_from_runs(store.runs_frame())


def stored_selection(config: Config, store: Store) -> dict[Cell, float] | None:
    """The selected learning rates from what ``store`` holds; None for a config without
    ``train.lr_grid`` or while tuning runs are missing (read only: nothing is trained)."""
    if config.train.lr_grid is None:
        return None
    return plan_tuning(config, stored_scores(store)).selected


def _store_messages(store: Store, config: Config, messages: Iterable) -> None:
    """Write a tuning round's messages: trained rows, failures, dead workers."""
    for message in messages:
        if isinstance(message, Trained):
            store.write_run(message.row, (), message.curves)
        elif isinstance(message, Finished) and message.error:
            store.mark_failed(message.run_key, message.error)
        elif isinstance(message, WorkerDied):
            row = run_row(message.task.run, config)
            row.update(status="failed", error=message.reason, finished_at=now(), device=None)
            store.write_run(row)


def select_learning_rates(
    config: Config, store: Store, execute: Callable[[list[Task]], Iterator]
) -> dict[Cell, float]:
    """Train the tuning runs the selection needs (``execute(tasks)`` yields worker messages),
    round by round as grids grow at their edges, and return cell -> selected learning rate.

    Stored tuning runs are reused; a failed one is kept (it scores 0), never retried here.
    """
    if config.train.lr_grid is None:
        raise ValueError("select_learning_rates needs train.lr_grid; this config uses train.lr")
    rounds = 2 * config.train.tune_extensions + 1  # the declared grid plus one step per round
    for _ in range(rounds + 1):
        state: TuningState = plan_tuning(config, stored_scores(store))
        if state.selected is not None:
            return state.selected
        log.info("learning-rate selection: training %d tuning run(s)", len(state.pending))
        messages = execute([Task(run, ()) for run in state.pending])
        try:
            _store_messages(store, config, messages)
        finally:
            close = getattr(messages, "close", None)
            if close is not None:
                close()
    raise RuntimeError(
        "learning-rate selection did not finish: tuning runs produced no stored result;"
        " check the log for worker failures and rerun"
    )
