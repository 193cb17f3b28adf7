"""Benchmark configuration: frozen dataclasses, loaded from YAML and validated as a whole.

Every key and value is checked before any training; all problems are reported in one ValueError.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")
LR_SCALINGS = ("none", "linear")
COMPOSITIONS = ("iid", "label_skew", "outliers", "mixed_corruption")
TRAIN_COMPOSITIONS = ("iid", "label_skew")
EVAL_STATS_MODES = ("running", "batch", "mix", "online", "adabn", "tent")
WANDB_MODES = ("auto", "offline", "online", "disabled")
EXECUTORS = ("local", "submitit")
SHIFT_SOURCES = ("generated", "cifar10c")


@dataclass(frozen=True)
class NormSpec:
    """A normalization layer name plus constructor options, as `normzoo.create` takes them."""

    name: str
    options: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Readable name, e.g. ``group(groups=8)``."""
        if not self.options:
            return self.name
        inner = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.name}({inner})"


@dataclass(frozen=True)
class Composition:
    """How samples are grouped into batches: i.i.d., label-skewed (Dirichlet alpha), k outliers."""

    name: str = "iid"
    alpha: float | None = None
    k: int | None = None

    @property
    def label(self) -> str:
        """The string stored in the results, e.g. ``iid``, ``label_skew(alpha=0.1)``."""
        if self.name == "label_skew":
            return f"label_skew(alpha={self.alpha:g})"
        if self.name == "outliers":
            return f"outliers(k={self.k})"
        return self.name


@dataclass(frozen=True)
class ExperimentSection:
    name: str = "experiment"
    description: str = ""


@dataclass(frozen=True)
class DataSection:
    dataset: str = "synthetic"
    root: str | None = None
    options: dict = field(default_factory=dict)
    val_fraction: float = 0.1


@dataclass(frozen=True)
class ModelSection:
    backbone: str = "small_cnn"
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TrainSection:
    batch_sizes: tuple[int, ...] = (32,)
    compositions: tuple[Composition, ...] = (Composition(),)
    epochs: int = 1
    max_steps: int | None = None
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    lr_scaling: str = "none"
    lr_reference_batch_size: int = 32
    seeds: tuple[int, ...] = (0,)


@dataclass(frozen=True)
class EvalSection:
    test_batch_sizes: tuple[int, ...] = (128,)
    stats_modes: tuple[str, ...] = ("running",)
    mix_prior: float = 16.0
    shifts: tuple[str, ...] = ("clean",)
    severities: tuple[int, ...] = (3,)
    compositions: tuple[Composition, ...] = (Composition(),)
    tent_lr: float = 1e-3
    tent_steps: int = 1
    shift_source: str = "generated"
    shift_root: str | None = None


@dataclass(frozen=True)
class ExecutionSection:
    workers: int | None = None
    wandb: str = "auto"
    wandb_project: str | None = None  # None: $WANDB_PROJECT, else "normzoo"
    wandb_entity: str | None = None  # None: $WANDB_ENTITY, else the login's default entity
    wandb_weights: bool = False  # log each run's kept weights as a W&B model artifact
    executor: str = "local"
    submitit: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    """A whole experiment: what to train, how to evaluate it, and how to execute the grid."""

    experiment: ExperimentSection = ExperimentSection()
    data: DataSection = DataSection()
    model: ModelSection = ModelSection()
    norms: tuple[NormSpec, ...] = (NormSpec("batch"),)
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()
    execution: ExecutionSection = ExecutionSection()

    def to_dict(self) -> dict:
        """Plain nested dict (JSON/YAML-serializable)."""
        return dataclasses.asdict(self)

    def result_dict(self) -> dict:
        """The part of the config that can change a result (not experiment, execution, root)."""
        d = self.to_dict()
        d.pop("experiment")
        d.pop("execution")
        d["data"].pop("root")
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
TOP_LEVEL_KEYS = (*SECTIONS, "norms")


def stable_hash(obj: Any, length: int = 16) -> str:
    """SHA-256 of the canonical JSON of ``obj``, truncated to ``length`` hex digits."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _suggest(word: str, choices: Any) -> str:
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _unknown(kind: str, value: Any, allowed: Any) -> str:
    allowed = list(allowed)
    listing = ", ".join(map(str, allowed))
    return f"unknown {kind} '{value}'{_suggest(value, allowed)}; allowed: {listing}"


def _parse_composition(raw: Any, where: str, allowed: tuple[str, ...], problems: list[str]):
    """Accept ``iid``, ``{name: label_skew, alpha: 0.1}``, ``{name: outliers, k: 2}``."""
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or "name" not in raw:
        problems.append(f"{where}: expected a name or {{name: ..., alpha/k: ...}}, got {raw!r}")
        return None
    unknown_keys = set(raw) - {"name", "alpha", "k"}
    for key in sorted(unknown_keys):
        problems.append(f"{where}: unknown key '{key}'{_suggest(key, ['name', 'alpha', 'k'])}")
    name = str(raw["name"])
    if name not in allowed:
        problems.append(f"{where}: {_unknown('composition', name, allowed)}")
        return None
    alpha, k = raw.get("alpha"), raw.get("k")
    if name == "label_skew":
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha < 0:
            problems.append(f"{where}: label_skew needs alpha >= 0 (0 = one class per batch)")
            return None
        return Composition("label_skew", alpha=float(alpha))
    if name == "outliers":
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            problems.append(f"{where}: outliers needs an integer k >= 1 (outliers per batch)")
            return None
        return Composition("outliers", k=k)
    return Composition(name)  # iid or mixed_corruption: no parameters


def _parse_norm(raw: Any, where: str, problems: list[str]) -> NormSpec | None:
    if isinstance(raw, str):
        return NormSpec(raw)
    if isinstance(raw, dict) and "name" in raw:
        for key in sorted(set(raw) - {"name", "options"}):
            problems.append(f"{where}: unknown key '{key}'{_suggest(key, ['name', 'options'])}")
        options = raw.get("options") or {}
        if not isinstance(options, dict):
            problems.append(f"{where}.options: expected a mapping, got {options!r}")
            options = {}
        return NormSpec(str(raw["name"]), dict(options))
    problems.append(
        f"{where}: expected a norm name or {{name: ..., options: {{...}}}}, got {raw!r}"
    )
    return None


def _as_tuple(value: Any) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def _parse_section(name: str, raw: Any, problems: list[str]):
    cls = SECTIONS[name]
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{name}: expected a mapping, got {raw!r}")
        return cls()
    names = [f.name for f in fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in names:
            problems.append(f"unknown key '{name}.{key}'{_suggest(key, names)}")
            continue
        where = f"{name}.{key}"
        if key == "compositions":
            allowed = TRAIN_COMPOSITIONS if name == "train" else COMPOSITIONS
            parsed = [_parse_composition(c, where, allowed, problems) for c in _as_tuple(value)]
            kwargs[key] = tuple(c for c in parsed if c is not None)
        elif key == "seeds":
            if isinstance(value, int) and not isinstance(value, bool):
                kwargs[key] = tuple(range(value))
            else:
                kwargs[key] = _as_tuple(value)
        elif key in ("options", "submitit"):
            if not isinstance(value or {}, dict):
                problems.append(f"{where}: expected a mapping, got {value!r}")
                continue
            kwargs[key] = dict(value or {})
        elif isinstance(getattr(cls(), key), tuple):
            kwargs[key] = _as_tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def parse_config(raw: dict) -> Config:
    """Build a Config from a nested dict and validate it; one ValueError lists all problems."""
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise ValueError(f"config must be a mapping of sections, got {type(raw).__name__}")
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            problems.append(f"unknown key '{key}'{_suggest(key, TOP_LEVEL_KEYS)}")
    sections = {name: _parse_section(name, raw.get(name), problems) for name in SECTIONS}
    norms_raw = raw.get("norms", ["batch"])
    norms = [_parse_norm(n, f"norms[{i}]", problems) for i, n in enumerate(_as_tuple(norms_raw))]
    config = Config(norms=tuple(n for n in norms if n is not None), **sections)
    from normzoo.bench.validate import validate

    problems.extend(validate(config))
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise ValueError(f"invalid benchmark config ({len(problems)} problem(s)):\n{listing}")
    return config


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one ``--set dotted.key=value`` (value parsed as YAML) to a raw config dict in place."""
    if "=" not in assignment:
        raise ValueError(f"--set expects key=value (e.g. train.epochs=2), got '{assignment}'")
    dotted, text = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    value = yaml.safe_load(text)
    if keys[0] not in TOP_LEVEL_KEYS:
        raise ValueError(
            f"--set: unknown key '{keys[0]}'{_suggest(keys[0], TOP_LEVEL_KEYS)}; "
            f"sections: {', '.join(TOP_LEVEL_KEYS)}"
        )
    if keys[0] in SECTIONS and len(keys) > 1:
        names = [f.name for f in fields(SECTIONS[keys[0]])]
        if keys[1] not in names:
            raise ValueError(
                f"--set: unknown key '{keys[0]}.{keys[1]}'{_suggest(keys[1], names)}; "
                f"keys of '{keys[0]}': {', '.join(names)}"
            )
    node = raw
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config, apply ``--set`` overrides, and validate everything."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"config file '{path}' not found; pass a YAML file such as configs/quick.yaml"
        )
    raw = yaml.safe_load(path.read_text()) or {}
    for assignment in overrides:
        apply_override(raw, assignment)
    return parse_config(raw)
