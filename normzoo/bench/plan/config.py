"""Benchmark configuration: frozen dataclasses, loaded from YAML and validated as a whole.

Every key and value is checked before any training (the rules are data, in
``normzoo.bench.plan.validate``); all problems are reported in one ValueError, one line each.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from normzoo.bench.plan import schema
from normzoo.bench.plan.specs import Composition, NormSpec
from normzoo.bench.plan.stats_section import StatsSection, parse_stats
from normzoo.bench.plan.validate import Rule, check_combinations, check_field, suggest, unknown


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
    download: bool = False  # opt in: fetch a missing real dataset (never changes a result)


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
    mix_prior: float | tuple[float, ...] = 16.0  # a list sweeps it: one stats mode per prior
    shifts: tuple[str, ...] = ("clean",)
    severities: tuple[int, ...] = (3,)
    compositions: tuple[Composition, ...] = (Composition(),)
    tent_lr: float = 1e-3
    tent_steps: int = 1
    shift_source: str = "generated"
    shift_root: str | None = None

    @property
    def condition_modes(self) -> tuple[str, ...]:
        """The stats modes of the test conditions: ``mix`` becomes one ``mix(prior=N)`` per prior
        when ``mix_prior`` is a list (Schneider et al. 2020 sweep N from 0 = batch statistics to
        inf = running statistics)."""
        if not isinstance(self.mix_prior, tuple):
            return self.stats_modes
        modes: list[str] = []
        for mode in self.stats_modes:
            modes += [schema.mix_mode(p) for p in self.mix_prior] if mode == "mix" else [mode]
        return tuple(modes)


@dataclass(frozen=True)
class ExecutionSection:
    workers: int | None = None
    wandb: str = "auto"
    wandb_project: str | None = None  # None: $WANDB_PROJECT, else "normzoo"
    wandb_entity: str | None = None  # None: $WANDB_ENTITY, else the login's default entity
    wandb_weights: bool = False  # log each run's kept weights as a W&B model artifact
    executor: str = "local"
    submitit: dict = field(default_factory=dict)
    ddp_devices: int = 1  # processes per run (Lightning DDP, zoo batch layers synced)
    # a resumable checkpoint of a run in training every N epochs (0: none); see bench/checkpoint.py
    checkpoint_every_epochs: int = 1
    # most runs of one grid cell (seeds) trained together as one stacked model (1: each alone);
    # see bench/execute/stack.py for where stacking applies
    stack: int = 16


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
    stats: StatsSection = StatsSection()  # the declared primary family (never changes results)

    def to_dict(self) -> dict:
        """Plain nested dict (JSON/YAML-serializable)."""
        return dataclasses.asdict(self)

    def result_dict(self) -> dict:
        """The part of the config that can change a result (not experiment, execution, root)."""
        d = self.to_dict()
        d.pop("experiment")
        d.pop("execution")
        d.pop("stats")
        d["data"].pop("root")
        d["data"].pop("download")
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


class _Loader(yaml.SafeLoader):
    """YAML 1.1 safe loading, with numbers read as people write them (and YAML 1.2 reads them).

    YAML 1.1 reads ``1e-3`` and ``3e4`` as strings (it wants a dot and a signed exponent); here
    any decimal with an exponent is a float.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def read_yaml(text: str, source: str) -> Any:
    """Parse YAML ``text``; a syntax error becomes one ValueError with ``source``:line:column."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(f"{where}: invalid YAML: {problem}") from None


def _parse_composition(raw: Any, where: str, allowed: tuple[str, ...], problems: list[str]):
    """Accept ``iid``, ``{name: label_skew, alpha: 0.1}``, ``{name: outliers|classes, k: 2}``."""
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or "name" not in raw:
        problems.append(f"{where}: expected a name or {{name: ..., alpha/k: ...}}, got {raw!r}")
        return None
    for key in sorted(set(raw) - {"name", "alpha", "k"}, key=str):
        problems.append(f"{where}: unknown key '{key}'{suggest(key, ['name', 'alpha', 'k'])}")
    name = raw["name"]
    if name not in allowed:
        problems.append(f"{where}: {unknown('composition', name, allowed)}")
        return None
    alpha, k = raw.get("alpha"), raw.get("k")
    if name == "label_skew":
        alpha, problem = check_field_value(f"{where}.alpha", alpha, "number", low=0)
        if problem:
            problems.append(f"{problem} (Dirichlet concentration; 0 = one class per batch)")
            return None
        return Composition("label_skew", alpha=float(alpha))
    if name in ("outliers", "classes"):
        k, problem = check_field_value(f"{where}.k", k, "int", low=1)
        if problem:
            what = "outliers per batch" if name == "outliers" else "classes per batch"
            problems.append(f"{problem} ({what})")
            return None
        return Composition(name, k=k)
    return Composition(name)  # iid or mixed_corruption: no parameters


def check_field_value(where: str, value: Any, kind: str, **bounds: Any) -> tuple[Any, str | None]:
    """Check a value that has no entry in the rule table (a composition's parameter)."""
    return Rule(kind, **bounds).check(where, value)


def _parse_norms(raw: Any, problems: list[str]) -> tuple[NormSpec, ...]:
    """Norms with canonical names; an alias of a norm listed before is a problem, not a merge."""
    from normzoo.registry import available, canonical_name

    norms: list[NormSpec] = []
    written: dict[str, tuple[int, str]] = {}  # label -> (index, name as written)
    items = raw if isinstance(raw, (list, tuple)) else [raw]
    if not items:
        problems.append("norms is empty; list at least one norm (e.g. batch, group)")
    for i, item in enumerate(items):
        where = f"norms[{i}]"
        sizes = None
        if isinstance(item, dict) and "name" in item:
            keys = ["name", "options", "train_batch_sizes"]
            for key in sorted(set(item) - set(keys), key=str):
                problems.append(f"{where}: unknown key '{key}'{suggest(key, keys)}")
            name, options = item["name"], item.get("options") or {}
            if not isinstance(options, dict):
                problems.append(f"{where}.options: expected a mapping, got {options!r}")
                continue
            if item.get("train_batch_sizes") is not None:
                sizes, problem = check_field_value(
                    f"{where}.train_batch_sizes", item["train_batch_sizes"], "int", low=1, many=True
                )
                if problem:
                    problems.append(problem)
                    continue
        elif isinstance(item, str):
            name, options = item, {}
        else:
            problems.append(
                f"{where}: expected a norm name or {{name: ..., options: {{...}}}}, got {item!r}"
            )
            continue
        try:
            spec = NormSpec(canonical_name(name), dict(options), sizes)
        except (ValueError, TypeError):
            problems.append(f"{where}: {unknown('norm', name, available())}")
            continue
        if spec.label in written:
            first, first_name = written[spec.label]
            problems.append(
                f"{where} '{name}' names the same layer as norms[{first}] '{first_name}' (both "
                f"are '{spec.label}'); list each norm once"
            )
            continue
        written[spec.label] = (i, name)
        norms.append(spec)
    return tuple(norms)


def _parse_section(name: str, raw: Any, problems: list[str]):
    """A section's dataclass from its mapping; invalid fields keep their defaults (reported)."""
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
            problems.append(f"unknown key '{name}.{key}'{suggest(key, names)}")
            continue
        where = f"{name}.{key}"
        if key == "compositions":
            allowed = schema.TRAIN_COMPOSITIONS if name == "train" else schema.TEST_COMPOSITIONS
            items = value if isinstance(value, (list, tuple)) else [value]
            if not items:
                problems.append(f"{where} is empty; use [iid]")
                continue
            parsed = [
                _parse_composition(c, f"{where}[{i}]", allowed, problems)
                for i, c in enumerate(items)
            ]
            if all(c is not None for c in parsed):
                kwargs[key] = tuple(parsed)
            continue
        if key == "seeds" and isinstance(value, (int, float)) and not isinstance(value, bool):
            count, problem = check_field_value(where, value, "int", low=1)
            if problem:
                problems.append(f"{problem} (a count n means seeds 0..n-1)")
                continue
            value = list(range(count))
        stored, problem = check_field(where, value)
        if problem:
            problems.append(problem)
        else:
            kwargs[key] = dict(stored) if isinstance(stored, dict) else stored
    return cls(**kwargs)


def _grid_values(train: TrainSection, ev: EvalSection) -> dict[str, list[str]]:
    """The values each grid column takes, as text (what ``stats.primary`` conditions name)."""
    severities = [str(v) for v in ev.severities]
    return {
        "train_batch_size": [str(v) for v in train.batch_sizes],
        "test_batch_size": [str(v) for v in ev.test_batch_sizes],
        "stats_mode": list(ev.condition_modes),
        "shift": list(ev.shifts),
        "severity": ["0", *severities] if "clean" in ev.shifts else severities,
    }


def parse_config(raw: Any) -> Config:
    """Build a Config from a nested dict and validate it; one ValueError lists all problems."""
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise ValueError(
            f"config must be a mapping of sections ({', '.join(TOP_LEVEL_KEYS)}), "
            f"got {type(raw).__name__}"
        )
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            problems.append(f"unknown key '{key}'{suggest(key, TOP_LEVEL_KEYS)}")
    sections = {name: _parse_section(name, raw.get(name), problems) for name in SECTIONS}
    norms = _parse_norms(raw.get("norms", ["batch"]), problems)
    stats, stats_problems = parse_stats(
        raw.get("stats"),
        norms,
        sorted({*sections["eval"].stats_modes, *sections["eval"].condition_modes}),
        _grid_values(sections["train"], sections["eval"]),
    )
    problems.extend(stats_problems)
    config = Config(norms=norms, stats=stats, **sections)
    problems.extend(check_combinations(config))
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
    value = read_yaml(text, f"--set {dotted.strip()}")
    if keys[0] not in TOP_LEVEL_KEYS:
        raise ValueError(
            f"--set: unknown key '{keys[0]}'{suggest(keys[0], TOP_LEVEL_KEYS)}; "
            f"sections: {', '.join(TOP_LEVEL_KEYS)}"
        )
    if keys[0] in SECTIONS and len(keys) > 1:
        names = [f.name for f in fields(SECTIONS[keys[0]])]
        if keys[1] not in names:
            raise ValueError(
                f"--set: unknown key '{keys[0]}.{keys[1]}'{suggest(keys[1], names)}; "
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
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"config file '{path}' cannot be read: {error}") from None
    raw = read_yaml(text, str(path))
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a config is a mapping of sections, got {type(raw).__name__}")
    for assignment in overrides:
        apply_override(raw, assignment)
    return parse_config(raw)
