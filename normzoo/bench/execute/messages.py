"""What flows between the parent and the executors: a `Task` in; `Trained`, `Evaluated`,
`Finished` out (with `TaskDone` and `WorkerDied` from the pool), and a stored run's `RunResult`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from normzoo.bench.plan.grid import Run, TestCondition


@dataclass(frozen=True)
class Task:
    """Train ``run`` (when ``train``) and evaluate it under ``conditions``.

    A stacked task (``stack``: runs in slot order, ``run`` the first of those it keeps) trains the
    runs of ``stack`` as one model (`normzoo.bench.execute.train.stack`) and keeps the results of
    the slots in ``keep`` (empty: all); a run retrained on its own is retrained in its recorded slot
    of a stack of its recorded size, the other slots holding copies of it.
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
