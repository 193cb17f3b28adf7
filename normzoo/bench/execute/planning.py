"""Plan an invocation against the store: which runs to train, which stored models to evaluate under
which conditions, and which training tasks stack (K seeds of one grid cell as one task).

A run's plan depends only on the config and what the store holds (statuses, evaluated
conditions and their fingerprints, recorded versions, verified weights), so a killed grid
resumes to the results of an uninterrupted one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from normzoo.bench.execute.evaluate import condition_fingerprint
from normzoo.bench.execute.messages import Task
from normzoo.bench.execute.train.stacked_model import stack_support
from normzoo.bench.execute.tuning import stored_selection
from normzoo.bench.execute.weights import WeightsError, verify_weights, weights_path
from normzoo.bench.plan.config import Config
from normzoo.bench.plan.grid import Run, TestCondition, expand_conditions, expand_runs
from normzoo.bench.plan.schema import VERSION_COLUMNS
from normzoo.bench.record.provenance import code_versions
from normzoo.bench.record.store import EVAL_KEY, Store

log = logging.getLogger(__name__)


def grid_runs(config: Config, store: Store) -> list[Run]:
    """The compared runs, with the learning rates selected by the stored tuning runs (a config
    with ``train.lr_grid`` whose tuning is incomplete gets ``train.lr`` as a placeholder)."""
    return expand_runs(config, stored_selection(config, store))


def model_lines(config: Config, plan: Plan) -> list[str]:
    """One line per norm to be trained: what its model holds (:func:`normzoo.models.describe`:
    parameters, zoo norm layers by kind), built once here for the console."""
    from normzoo.data import dataset_info
    from normzoo.models import build_model, describe, describe_line

    try:
        info = dataset_info(config.data.dataset, config.data.options, config.data.root)
    except Exception as error:  # noqa: BLE001 - the console line never stops a grid
        return [f"model {config.model.backbone}: not described here ({error})"]
    norms = {run.norm.label: run.norm for task in plan.tasks if task.train for run in task.runs}
    lines = []
    for label, norm in norms.items():
        try:
            model = build_model(
                config.model.backbone,
                norm.name,
                info.num_classes,
                info.channels,
                norm.options,
                **config.model.options,
            )
            built = describe_line(describe(model))
        except Exception as error:  # the run itself records the failure; this line only informs
            built = f"not built here ({type(error).__name__}: {error})"
        lines.append(f"model {config.model.backbone} with {label}: {built}")
    return lines


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
    (`normzoo.bench.execute.train.stack`).

    A run's stack and slot are a function of the config alone: the stackable runs of each cell,
    in grid (seed) order, cut into stacks of ``execution.stack``. A stack trains whole and keeps
    the results of its runs that are due (``keep``), so a run trains the same way whatever else
    is stored (an interrupted grid resumes to the uninterrupted results). A run stored ok from a
    stack whose weights are lost is retrained as it was recorded (its stack size and slot, the
    other slots holding copies of it) and reproduces its weights; runs that cannot stack
    (`stack_support`) stay alone.
    """
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
