"""Expand a Config into runs (train conditions x norms x seeds) and test conditions, stable keys.

Train once, evaluate many: a run's key hashes everything that can change the trained model (data,
backbone, norm and options, training hyper-parameters, its batch size, composition and seed) and
nothing else, so a changed training config never reuses a stale model, while adding test
conditions (the eval section) keeps every trained run; evaluations are keyed by (run key, test
condition). The experiment name, the execution section and the data root are not part of the key.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from normzoo.bench.plan.config import (
    TUNING_KEYS,
    Composition,
    Config,
    EvalSection,
    NormSpec,
    StatsMode,
    stable_hash,
)
from normzoo.bench.plan.schema import BATCHWISE_MODES, PER_SAMPLE_MODES


@dataclass(frozen=True)
class Run:
    """One training run: a train condition, a norm, a seed."""

    key: str
    dataset: str
    backbone: str
    norm: NormSpec
    train_batch_size: int
    train_composition: Composition
    seed: int
    lr: float | None = None  # a selected or tuning learning rate (None: the config's train.lr)
    role: str = "compare"  # or "tune": a learning-rate selection run (schema.RUN_ROLES)

    @property
    def name(self) -> str:
        """Readable name, e.g. ``group-bs8-s0`` (composition appended when not iid)."""
        base = f"{self.norm.label}-bs{self.train_batch_size}-s{self.seed}"
        if self.train_composition.name != "iid":
            base += f"-{self.train_composition.label}"
        if self.role == "tune":
            base += f"-lr{self.lr:g}"
        return base

    def columns(self, experiment: str) -> dict:
        """The identifying columns of the runs table."""
        return {
            "run_key": self.key,
            "experiment": experiment,
            "dataset": self.dataset,
            "backbone": self.backbone,
            "norm": self.norm.name,
            "norm_options": stable_json(self.norm.options),
            "train_batch_size": self.train_batch_size,
            "train_composition": self.train_composition.label,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class TestCondition:
    """One evaluation of a trained run: test batch size, stats mode, shift, severity, batching."""

    __test__ = False  # not a pytest test class

    test_batch_size: int
    stats_mode: StatsMode  # a plain mode name is taken as StatsMode(name)
    shift: str
    severity: int
    composition: Composition

    def __post_init__(self) -> None:
        if isinstance(self.stats_mode, str):
            object.__setattr__(self, "stats_mode", StatsMode(self.stats_mode))

    @property
    def label(self) -> str:
        """The condition's name, e.g. ``bs8/batch/fog-3/iid`` (see `condition_name`)."""
        return condition_name(self.columns())

    def columns(self) -> dict:
        """The identifying columns of the evaluations table."""
        return {
            "test_batch_size": self.test_batch_size,
            "stats_mode": self.stats_mode.label,
            "shift": self.shift,
            "severity": self.severity,
            "test_composition": self.composition.label,
        }


def condition_name(columns: dict) -> str:
    """The one name of a test condition, from its stored columns (`TestCondition.columns`, an
    evaluation row): ``bs<test batch size>/<stats mode>/<shift>[-<severity>]/<composition>``,
    e.g. ``bs8/batch/fog-3/iid``, ``bs128/running/clean/iid``. The CLI, the store's
    ``computed_as``, the report and W&B (``test/<name>``) all spell it with this function."""
    shift = columns["shift"]
    if shift != "clean":
        shift = f"{shift}-{columns['severity']}"
    return (
        f"bs{columns['test_batch_size']}/{columns['stats_mode']}/{shift}/"
        f"{columns['test_composition']}"
    )


def stable_json(obj) -> str:
    """JSON with sorted keys, the form stored in the results."""
    return json.dumps(obj, sort_keys=True)


def run_key(
    config: Config,
    norm: NormSpec,
    batch_size: int,
    composition: Composition,
    seed: int,
    lr: float | None = None,
) -> str:
    """Stable hash of one trained model: covers training only (see the module docstring).

    ``lr``: the learning rate selected (or tried) for this run; it replaces ``train.lr`` in the
    key, and the tuning keys are never part of it (a fixed-lr config keeps its keys)."""
    result = config.result_dict()
    train = result["train"]
    for plural in ("batch_sizes", "compositions", "seeds", *TUNING_KEYS):
        train.pop(plural, None)
    if lr is not None:
        train["lr"] = lr
    train.update(batch_size=batch_size, composition=dataclasses.asdict(composition), seed=seed)
    return stable_hash(
        {
            "data": result["data"],
            "model": result["model"],
            "norm": {"name": norm.name, "options": norm.options},  # not its batch restriction
            "train": train,
        }
    )


def expand_runs(config: Config, lrs: dict | None = None) -> list[Run]:
    """All runs of the grid; seeds outermost so an interrupted grid has complete pairs early.

    ``lrs`` maps a cell ``(norm label, train batch size, composition label)`` to its selected
    learning rate (`normzoo.bench.plan.tuning`); a cell not in it trains with ``train.lr``.
    """
    lrs = lrs or {}
    runs = []
    for seed in config.train.seeds:
        for composition in config.train.compositions:
            for batch_size in config.train.batch_sizes:
                for norm in config.norms:
                    if norm.train_batch_sizes and batch_size not in norm.train_batch_sizes:
                        continue
                    lr = lrs.get((norm.label, batch_size, composition.label))
                    runs.append(make_run(config, norm, batch_size, composition, seed, lr))
    return runs


def make_run(
    config: Config,
    norm: NormSpec,
    train_batch_size: int,
    composition: Composition,
    seed: int,
    lr: float | None = None,
    role: str = "compare",
) -> Run:
    """The run of one grid point, keyed by what changes training (`run_key`)."""
    return Run(
        key=run_key(config, norm, train_batch_size, composition, seed, lr),
        dataset=config.data.dataset,
        backbone=config.model.backbone,
        norm=norm,
        train_batch_size=train_batch_size,
        train_composition=composition,
        seed=seed,
        lr=lr,
        role=role,
    )


def _shifts(ev, composition: Composition) -> list[tuple[str, int]]:
    if composition.name == "mixed_corruption":  # every sample of a batch its own corruption
        return [("mixed", severity) for severity in ev.severities]
    return [
        (shift, severity)
        for shift in ev.shifts
        for severity in ((0,) if shift == "clean" else ev.severities)
    ]


def expand_conditions(config: Config) -> list[TestCondition]:
    """All test conditions of a config (`expand_test_conditions` of its eval section)."""
    return expand_test_conditions(config.eval)


def expand_test_conditions(ev: EvalSection) -> list[TestCondition]:
    """All test conditions; clean data has severity 0; outliers(k) only for test batch sizes > k;
    ``mixed_corruption`` batches (shift ``mixed``: each sample a different corruption) once per
    severity. ``normzoo evaluate`` expands its grid with this too."""
    conditions = []
    for batch_size in ev.test_batch_sizes:
        for composition in ev.compositions:
            if composition.name == "outliers" and batch_size <= composition.k:
                continue
            for shift, severity in _shifts(ev, composition):
                for mode in ev.condition_modes:  # mix once per prior of a sweep
                    conditions.append(TestCondition(batch_size, mode, shift, severity, composition))
    return conditions


def computed_condition(
    condition: TestCondition, batch_dependent: bool, per_sample_batch_size: int
) -> TestCondition:
    """The condition that is actually computed for ``condition`` (identical result by construction).

    Without batch-dependent layers every stats mode is the same computation as ``running``. Under
    ``running`` each prediction depends on its own input only, so the test batch size and a
    label-skewed batch order (which permutes the same test set) do not change it: computed once at
    ``per_sample_batch_size`` with i.i.d. batches. Under ``batch`` and ``mix`` a prediction depends
    on its own batch only, so with batches of one sample the batch order (label skew) does not
    matter either. ``online``, ``adabn`` and ``tent`` carry state from batch to batch (AdaBN's
    PreciseBN pass normalizes with batch statistics, so it depends on the batches too), and
    outliers change the inputs: those never merge.
    """
    mode = condition.stats_mode if batch_dependent else StatsMode("running")
    composition = condition.composition
    if composition.name == "outliers":
        return dataclasses.replace(condition, stats_mode=mode)
    # A point of a mix prior sweep is not merged (as before the modes were typed): only the
    # stats modes named in the vocabulary, at the configured prior, are.
    per_sample = mode.prior is None and mode.name in PER_SAMPLE_MODES
    batchwise = mode.prior is None and mode.name in BATCHWISE_MODES
    if composition.name == "label_skew" and (
        per_sample or (batchwise and condition.test_batch_size == 1)
    ):
        composition = Composition()
    if per_sample:
        return TestCondition(
            per_sample_batch_size, mode, condition.shift, condition.severity, composition
        )
    return dataclasses.replace(condition, stats_mode=mode, composition=composition)


def grid_summary(config: Config) -> dict:
    """Counts for the CLI: runs, recorded evaluations per run, computed evaluations in total."""
    from normzoo.registry import is_batch_dependent

    runs = expand_runs(config)
    conditions = expand_conditions(config)
    largest = max(config.eval.test_batch_sizes)
    unique_bd = {computed_condition(c, True, largest) for c in conditions}
    unique_bi = {computed_condition(c, False, largest) for c in conditions}
    computed = sum(  # per run: a norm may be restricted to some train batch sizes
        len(unique_bd) if is_batch_dependent(run.norm.name) else len(unique_bi) for run in runs
    )
    return {
        "runs": len(runs),
        "conditions_per_run": len(conditions),
        "evaluations_recorded": len(runs) * len(conditions),
        "evaluations_computed": computed,
        "computed_per_batch_dependent_run": len(unique_bd),
        "computed_per_batch_independent_run": len(unique_bi),
    }
