"""Learning-rate selection on the validation split: the grid, the tuning runs, the rule.

Each cell (norm, train batch size, train composition) tries the same declared grid
``train.lr_grid`` with every seed of ``train.tune_seeds`` (disjoint from the compared seeds).
The rule: the lr with the highest mean validation accuracy over the tune seeds wins; a run that
failed or diverged scores 0; ties (equal means) go to the smaller lr. When the winner is the
largest (smallest) value of the cell's grid, the grid grows by one step beyond that edge (the
declared grid's own ratio at that edge; x3 for a grid of one value) and the new value is tried,
at most ``train.tune_extensions`` times per edge; the winner at the last allowed step is kept.
Only validation accuracy enters: the test split is never read (selection runs on tuning runs
that are trained and never evaluated). The selected lr is part of each compared run's key.

Everything here is pure: scores come in as ``run key -> validation accuracy``
(`normzoo.bench.execute.tuning` runs the pending runs and reads the store).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd

from normzoo.bench.plan.config import Config, TrainSection
from normzoo.bench.plan.grid import Run, make_run

# A cell that gets its own learning rate: (norm label, train batch size, composition label).
Cell = tuple[str, int, str]

SINGLE_VALUE_STEP = 3.0  # the extension factor of a grid of one value


def effective_lr(train: TrainSection, train_batch_size: int, lr: float | None = None) -> float:
    """The learning rate a run trains with: ``lr`` when selected, else ``train.lr`` under the
    config's scaling rule (linear: Goyal et al. 2017, lr proportional to the batch size)."""
    if lr is not None:
        return lr
    if train.lr_scaling == "linear":
        return train.lr * train_batch_size / train.lr_reference_batch_size
    return train.lr


def cells(config: Config) -> list[Cell]:
    """The cells of a config, in grid order (a norm restricted to some batch sizes only there)."""
    found = []
    for composition in config.train.compositions:
        for batch_size in config.train.batch_sizes:
            for norm in config.norms:
                if norm.train_batch_sizes and batch_size not in norm.train_batch_sizes:
                    continue
                found.append((norm.label, batch_size, composition.label))
    return found


def tune_run(config: Config, cell: Cell, lr: float, seed: int) -> Run:
    """The tuning run of ``cell`` at ``lr`` and ``seed`` (role ``tune``)."""
    label, batch_size, composition_label = cell
    norm = next(n for n in config.norms if n.label == label)
    composition = next(c for c in config.train.compositions if c.label == composition_label)
    return make_run(config, norm, batch_size, composition, seed, lr, role="tune")


def scores_from_runs(runs: pd.DataFrame) -> dict[str, float | None]:
    """run key -> validation accuracy of every tuning run in a runs frame (the store's, or its
    CSV export); None for a failed or diverged one, or one without a validation accuracy."""
    if runs.empty or "role" not in runs:
        return {}
    tune = runs[runs["role"] == "tune"]
    return {
        key: float(val) if status == "ok" and pd.notna(val) else None
        for key, status, val in zip(
            tune["run_key"], tune["status"], tune["val_accuracy"], strict=True
        )
    }


def tuning_run_keys(config: Config, state: TuningState) -> set[str]:
    """The keys of every tuning run ``state``'s grids call for (done or pending)."""
    return {
        tune_run(config, cell, lr, seed).key
        for cell, tuning in state.cells.items()
        for lr in tuning.grid
        for seed in config.train.tune_seeds
    }


def best_lr(means: Mapping[float, float]) -> float:
    """The lr with the highest mean validation accuracy; equal means go to the smaller lr."""
    ranked = sorted(means, key=lambda lr: (-round(means[lr], 12), lr))
    return ranked[0]


def _steps(grid: tuple[float, ...]) -> tuple[float, float]:
    """(factor below the smallest, factor above the largest) value of a declared grid."""
    values = sorted(grid)
    if len(values) == 1:
        return SINGLE_VALUE_STEP, SINGLE_VALUE_STEP
    return values[1] / values[0], values[-1] / values[-2]


@dataclass
class CellTuning:
    """One cell's tuning so far: the values tried, their mean scores, the selection."""

    cell: Cell
    grid: tuple[float, ...]
    means: dict[float, float] = field(default_factory=dict)
    selected: float | None = None  # None while runs are pending


@dataclass
class TuningState:
    """Where selection stands: the runs still needed, each cell's grid, the selected lrs."""

    pending: list[Run]
    cells: dict[Cell, CellTuning]

    @property
    def selected(self) -> dict[Cell, float] | None:
        """cell -> selected lr, or None while any cell still needs runs."""
        if self.pending:
            return None
        return {cell: t.selected for cell, t in self.cells.items()}


def _tune_cell(config: Config, cell: Cell, scores: Mapping[str, float | None]) -> tuple:
    """(CellTuning, pending runs) of one cell: grow the grid while the best sits at an edge."""
    train = config.train
    down, up = _steps(train.lr_grid)
    grid = sorted(train.lr_grid)
    below = above = 0
    while True:
        runs = {lr: [tune_run(config, cell, lr, seed) for seed in train.tune_seeds] for lr in grid}
        pending = [run for lr in grid for run in runs[lr] if run.key not in scores]
        tuning = CellTuning(cell, tuple(grid))
        if pending:
            return tuning, pending
        for lr in grid:  # a failed or diverged run (score None) scores 0
            values = [scores[run.key] or 0.0 for run in runs[lr]]
            tuning.means[lr] = sum(values) / len(values)
        best = best_lr(tuning.means)
        if best == grid[-1] and above < train.tune_extensions:
            grid, above = [*grid, grid[-1] * up], above + 1
        elif best == grid[0] and below < train.tune_extensions and len(grid) > 1:
            grid, below = [grid[0] / down, *grid], below + 1
        else:
            tuning.selected = best
            return tuning, []


def plan_tuning(config: Config, scores: Mapping[str, float | None]) -> TuningState:
    """The state of learning-rate selection given the tuning runs done so far.

    ``scores``: run key -> validation accuracy of every finished tuning run (None for a failed or
    diverged one); a key absent is a run not done. A grid of one value is both edges: it grows
    upwards first (x3), then downwards if its value still wins.
    """
    if config.train.lr_grid is None:
        raise ValueError("plan_tuning needs train.lr_grid; this config trains with train.lr")
    state = TuningState([], {})
    for cell in cells(config):
        tuning, pending = _tune_cell(config, cell, scores)
        state.cells[cell] = tuning
        state.pending += pending
    return state


def tuning_table(config: Config, runs: pd.DataFrame) -> pd.DataFrame:
    """Validation accuracy vs learning rate per norm, train batch size and composition.

    ``runs``: the store's runs frame (any superset of the tuning runs). One row per (cell, lr)
    tried: ``norm`` (label), ``train_batch_size``, ``train_composition``, ``lr``, ``seeds`` (tune
    runs stored), ``failed`` (failed or diverged among them), ``val_accuracy`` (mean, failures
    as 0, the selection score), ``val_accuracy_sd``, ``train_accuracy`` (mean over ok runs) and
    ``selected`` (the cell's chosen lr; False everywhere in a cell still tuning).
    """
    by_key = runs.set_index("run_key") if len(runs) else None
    scores = {}
    if by_key is not None:
        for key, row in by_key.iterrows():
            if row.get("role", "compare") == "tune":
                scores[key] = row["val_accuracy"] if row["status"] == "ok" else None
    state = plan_tuning(config, scores)
    rows = []
    for cell, tuning in state.cells.items():
        for lr in tuning.grid:
            stored = [tune_run(config, cell, lr, s).key for s in config.train.tune_seeds]
            stored = [k for k in stored if k in scores]
            frame = by_key.loc[stored] if stored else pd.DataFrame(columns=["status"])
            ok = frame[frame["status"] == "ok"] if stored else frame
            values = [scores[k] or 0.0 for k in stored]
            rows.append(
                {
                    "norm": cell[0],
                    "train_batch_size": cell[1],
                    "train_composition": cell[2],
                    "lr": lr,
                    "seeds": len(stored),
                    "failed": len(stored) - len(ok),
                    "val_accuracy": pd.Series(values, dtype=float).mean(),
                    "val_accuracy_sd": pd.Series(values, dtype=float).std(),
                    "train_accuracy": pd.to_numeric(ok.get("train_accuracy"), "coerce").mean()
                    if len(ok)
                    else float("nan"),
                    "selected": tuning.selected == lr,
                }
            )
    return pd.DataFrame(rows)
