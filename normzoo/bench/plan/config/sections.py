"""The config's models: typed, frozen pydantic dataclasses, one per section, and ``Config``.

Each section is a pydantic dataclass whose fields carry their type, default, allowed values,
bounds and a description (the JSON schema and ``docs/config.md`` are generated from them, see
``normzoo.bench.plan.reference``). ``normzoo.bench.plan.config.parse_config`` validates every
section, the norms, the ``stats:`` section and the checks that combine fields
(``normzoo.bench.plan.config.validate``) and raises one ValueError listing every problem, one line
each, with did-you-mean suggestions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, WithJsonSchema, field_validator
from pydantic.dataclasses import dataclass

from normzoo.bench.plan import schema
from normzoo.bench.plan.config.fields import Flag, Name, choice, integer, many, number, unknown
from normzoo.bench.plan.config.specs import FROZEN, Composition, NormSpec, StatsMode, custom_error
from normzoo.bench.plan.config.stats_section import StatsSection
from normzoo.data.datasets import DATASET_WORDS, dataset_key


def _hint(text: str) -> dict:
    return {"x-hint": text}


# The train keys of learning-rate selection (what tunes the lr, not what trains a model).
TUNING_KEYS = ("lr_grid", "tune_seeds", "tune_extensions")


@dataclass(frozen=True, config=FROZEN)
class ExperimentSection:
    """What the experiment is called (a label: never part of a run's identity)."""

    name: Name = Field("experiment", description="experiment name (output, W&B group, report)")
    description: str = Field("", description="free text shown in the report")


def _dataset_name(value: Any) -> str:
    """A dataset name as `normzoo.data.dataset_key` spells it; nothing is imported or read."""
    if not isinstance(value, str):
        raise custom_error(f"{{where}}={value!r} must be {DATASET_WORDS}")
    try:
        return dataset_key(value)
    except ValueError as error:
        raise custom_error(f"{{where}}: {error}") from None


DatasetName = Annotated[
    str,
    BeforeValidator(_dataset_name),
    WithJsonSchema({"type": "string", "x-words": DATASET_WORDS}),
]


@dataclass(frozen=True, config=FROZEN)
class DataSection:
    """The dataset runs train and test on."""

    dataset: DatasetName = Field("synthetic", description="dataset name (see docs/data.md)")
    root: str | None = Field(
        None, description="directory of the dataset files or ImageFolder tree (null: default)"
    )
    options: dict = Field(
        default_factory=dict,
        description="dataset options (size, difficulty; image_size, test_fraction, init_args...)",
    )
    val_fraction: number(gt=0, lt=1) = Field(
        0.1, description="share of the training set held out for validation"
    )
    download: Flag = Field(
        False,
        description="opt in: fetch a missing real dataset (never changes a result)",
        json_schema_extra=_hint(
            " (opt-in download of cifar10/mnist/CIFAR-10-C/torchvision:<Class>)"
        ),
    )


@dataclass(frozen=True, config=FROZEN)
class ModelSection:
    """The backbone every norm is trained in."""

    backbone: str = Field(
        "small_cnn",
        description="small_cnn, resnet_tiny, mlp, timm:<name>, torchvision:<name> or "
        "package.module:factory (called with num_classes, in_channels, norm_layer, options)",
    )
    options: dict = Field(
        default_factory=dict,
        description="backbone options (e.g. widths; constructor keywords of a library model)",
    )


def _composition(value: Any) -> Any:
    """``iid`` or ``{name: label_skew, alpha: 0.1}`` -> the fields of a Composition."""
    if isinstance(value, str):
        return {"name": value}
    if not isinstance(value, (dict, Composition)):
        raise custom_error(
            f"{{where}}: expected a name or {{name: ..., alpha/k: ...}}, got {value!r}"
        )
    return value


Compositions = tuple[Annotated[Composition, BeforeValidator(_composition)], ...]


def _check_compositions(values: Any, allowed: tuple[str, ...]) -> Any:
    if isinstance(values, (list, tuple)) and not values:
        raise custom_error("{where} is empty; use [iid]")
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    for i, value in enumerate(values):
        name = value.get("name") if isinstance(value, dict) else getattr(value, "name", value)
        if isinstance(name, str) and name not in allowed:
            raise custom_error(f"{{where}}[{i}]: {unknown('composition', name, allowed)}")
    return values


@dataclass(frozen=True, config=FROZEN)
class TrainSection:
    """How each run is trained; lists expand to the grid (batch sizes, compositions, seeds)."""

    batch_sizes: many(integer(ge=1)) = Field((32,), description="train batch sizes (grid)")
    compositions: Compositions = Field(
        (Composition(),),
        description=f"train batch compositions (grid): {', '.join(schema.TRAIN_COMPOSITIONS)}",
    )
    epochs: integer(ge=1) = Field(1, description="passes over the training split")
    max_steps: integer(ge=1) | None = Field(
        None,
        description="stop after this many steps",
        json_schema_extra=_hint(" (null: epochs decide)"),
    )
    optimizer: choice(schema.OPTIMIZERS, "optimizer") = Field("sgd", description="optimizer")
    lr: number(gt=0) = Field(0.05, description="learning rate (at lr_reference_batch_size)")
    momentum: number(ge=0, lt=1) = Field(0.9, description="SGD momentum / AdamW beta1")
    weight_decay: number(ge=0) = Field(5e-4, description="weight decay")
    schedule: choice(schema.SCHEDULES, "schedule") = Field("cosine", description="lr schedule")
    lr_scaling: choice(schema.LR_SCALINGS, "lr scaling") = Field(
        "none", description="lr rule across batch sizes (linear: lr * batch / reference)"
    )
    lr_reference_batch_size: integer(ge=1) = Field(
        32, description="the batch size lr is given at (linear scaling)"
    )
    seeds: many(integer(ge=0), distinct=True) = Field(
        (0,),
        description="seeds (grid; pairs across norms); a count n means 0..n-1",
        json_schema_extra=_hint(" (or a count n: seeds 0..n-1)"),
    )

    lr_grid: many(number(gt=0), distinct=True) | None = Field(
        None,
        description="learning rates to select from on the validation split, per norm and train"
        " batch size (normzoo.bench.plan.tuning); null: train.lr for every run",
    )
    tune_seeds: many(integer(ge=0), distinct=True) | None = Field(
        None, description="seeds of the tuning runs, disjoint from train.seeds"
    )
    tune_extensions: integer(ge=0) = Field(
        2, description="grid steps added at most per edge when the best lr sits on it"
    )

    @field_validator("compositions", mode="before")
    @classmethod
    def _compositions(cls, value: Any) -> Any:
        return _check_compositions(value, schema.TRAIN_COMPOSITIONS)

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_count(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not (value >= 1 and float(value).is_integer()):
                raise custom_error(
                    f"{{where}}={value!r} must be an integer >= 1 (a count n means seeds 0..n-1)"
                )
            return list(range(int(value)))
        return value


_PRIOR = number(ge=0, infinite=True)


@dataclass(frozen=True, config=FROZEN)
class EvalSection:
    """The test conditions every trained run is evaluated under (lists expand to the grid)."""

    test_batch_sizes: many(integer(ge=1)) = Field((128,), description="test batch sizes (grid)")
    stats_modes: many(choice(schema.EVAL_STATS_MODES, "stats mode")) = Field(
        ("running",), description="test-time statistics or adaptation methods (grid)"
    )
    mix_prior: _PRIOR | many(_PRIOR, distinct=True) = Field(
        16.0,
        description="mix: pseudo-samples of the source statistics; a list sweeps them",
        json_schema_extra=_hint(" (pseudo-samples: 0 = batch, .inf = running; a list sweeps them)"),
    )
    shifts: many(str) = Field(
        ("clean",),
        description="clean and corruption names (grid)",
        json_schema_extra=_hint("; use [clean]"),
    )
    severities: many(integer(ge=1, le=5)) = Field((3,), description="corruption severities")
    compositions: Compositions = Field(
        (Composition(),),
        description=f"test batch compositions (grid): {', '.join(schema.TEST_COMPOSITIONS)}",
    )
    tent_lr: number(gt=0) = Field(1e-3, description="TENT learning rate")
    tent_steps: integer(ge=1) = Field(1, description="TENT updates per test batch")
    shift_source: choice(schema.SHIFT_SOURCES, "shift source") = Field(
        "generated", description="corruptions generated on the fly, or read from CIFAR-10-C"
    )
    shift_root: str | None = Field(None, description="CIFAR-10-C directory (null: data.root)")

    @field_validator("compositions", mode="before")
    @classmethod
    def _compositions(cls, value: Any) -> Any:
        return _check_compositions(value, schema.TEST_COMPOSITIONS)

    @property
    def condition_modes(self) -> tuple[StatsMode, ...]:
        """The stats modes of the test conditions: ``mix`` becomes one ``mix(prior=N)`` per prior
        when ``mix_prior`` is a list (Schneider et al. 2020 sweep N from 0 = batch statistics to
        inf = running statistics)."""
        modes: list[StatsMode] = []
        for mode in self.stats_modes:
            if mode == schema.MIX and isinstance(self.mix_prior, tuple):
                modes += [StatsMode(mode, prior) for prior in self.mix_prior]
            else:
                modes.append(StatsMode(mode))
        return tuple(modes)


@dataclass(frozen=True, config=FROZEN)
class ExecutionSection:
    """How the grid is executed (never changes a result)."""

    workers: integer(ge=1) | None = Field(
        None, description="parallel runs", json_schema_extra=_hint(" (null: all cores)")
    )
    wandb: choice(schema.WANDB_MODES, "W&B mode") = Field(
        "auto", description="auto: online when logged in, else offline"
    )
    wandb_project: str | None = Field(
        None, description="W&B project", json_schema_extra=_hint(" (null: $WANDB_PROJECT)")
    )
    wandb_entity: str | None = Field(
        None, description="W&B entity", json_schema_extra=_hint(" (null: $WANDB_ENTITY)")
    )
    wandb_weights: Flag = Field(False, description="log kept weights as a W&B model artifact")
    executor: choice(schema.EXECUTORS, "executor") = Field("local", description="where runs run")
    submitit: dict = Field(default_factory=dict, description="submitit options (SLURM)")
    ddp_devices: integer(ge=1) = Field(
        1,
        description="processes per run (Lightning DDP, zoo batch layers synced)",
        json_schema_extra=_hint(" (processes per run; 1: no DDP)"),
    )
    checkpoint_every_epochs: integer(ge=0) = Field(
        1,
        description="a resumable checkpoint every N epochs (0: none)",
        json_schema_extra=_hint(" (0: no mid-run checkpoints)"),
    )
    stack: integer(ge=1) = Field(
        16,
        description="the most seeds of one grid cell trained together as one stacked model "
        "(bench/execute/train/stack.py; each run's result equals training it alone);"
        " 1: every run alone",
    )


@dataclass(frozen=True, config=FROZEN)
class Config:
    """A whole experiment: what to train, how to evaluate it, and how to execute the grid."""

    experiment: ExperimentSection = Field(default_factory=ExperimentSection)
    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    norms: tuple[NormSpec, ...] = Field(
        (NormSpec("batch"),), description="norms to compare: names, aliases or labels (grid)"
    )
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    execution: ExecutionSection = Field(default_factory=ExecutionSection)
    stats: StatsSection = Field(
        default_factory=StatsSection,
        description="the declared primary family (never changes results)",
    )

    def to_dict(self) -> dict:
        """Plain nested dict (JSON/YAML-serializable)."""
        return dataclasses.asdict(self)

    def result_dict(self) -> dict:
        """The part of the config that can change a result (not experiment, execution, root)."""
        d = self.to_dict()
        for key in ("experiment", "execution", "stats"):
            d.pop(key)
        d["data"].pop("root")
        d["data"].pop("download")
        if d["train"]["lr_grid"] is None:  # a fixed lr: the hash of configs before tuning existed
            for key in TUNING_KEYS:
                d["train"].pop(key)
        return d

    @property
    def hash(self) -> str:
        """Hash of everything that affects results; equal hashes give equal results."""
        return stable_hash(self.result_dict())


SECTIONS = {
    "experiment": ExperimentSection,
    "data": DataSection,
    "model": ModelSection,
    "train": TrainSection,
    "eval": EvalSection,
    "execution": ExecutionSection,
}
TOP_LEVEL_KEYS = (*SECTIONS, "norms", "stats")


def stable_hash(obj: Any, length: int = 16) -> str:
    """SHA-256 of the canonical JSON of ``obj``, truncated to ``length`` hex digits."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
