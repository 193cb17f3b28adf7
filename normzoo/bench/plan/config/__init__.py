"""Benchmark configuration: YAML at the edge, typed models inside, every problem reported at once.

The package is the typed config: ``sections`` (the frozen pydantic models), ``fields`` (field
types and error wording), ``specs`` (norm, composition and stats-mode specs), ``stats_section``
(the declared primary family), ``overrides`` (YAML reading and ``--set``) and ``validate`` (the
checks that combine fields). :func:`load_config` reads a YAML file, applies ``--set
dotted.key=value`` overrides and :func:`parse_config` validates the whole config into the models
(re-exported here): every field by its type, the norms by the registry, the ``stats:`` section,
then the combined checks. All problems are reported in one ValueError, one line each; the CLI
turns it into exit 2.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from normzoo.bench.plan.config import fields
from normzoo.bench.plan.config.overrides import (
    apply_override,
    overridden_backbone,
    overridden_norms,
    parse_norms,
    read_yaml,
)
from normzoo.bench.plan.config.sections import (
    SECTIONS,
    TOP_LEVEL_KEYS,
    TUNING_KEYS,
    Config,
    DataSection,
    EvalSection,
    ExecutionSection,
    ExperimentSection,
    ModelSection,
    TrainSection,
    stable_hash,
)
from normzoo.bench.plan.config.specs import Composition, NormSpec, StatsMode
from normzoo.bench.plan.config.stats_section import StatsSection, parse_stats
from normzoo.bench.plan.config.validate import check_combinations

__all__ = [
    "SECTIONS",
    "TOP_LEVEL_KEYS",
    "TUNING_KEYS",
    "Composition",
    "Config",
    "DataSection",
    "EvalSection",
    "ExecutionSection",
    "ExperimentSection",
    "ModelSection",
    "NormSpec",
    "StatsMode",
    "StatsSection",
    "TrainSection",
    "apply_override",
    "load_config",
    "parse_config",
    "read_yaml",
    "stable_hash",
]

# The schema of the spec a section field holds a list of (what its parameters accept).
_NESTED = {"compositions": TypeAdapter(Composition).json_schema()}


@cache
def _adapter(cls: type) -> tuple[TypeAdapter, dict]:
    adapter = TypeAdapter(cls)
    return adapter, adapter.json_schema()


def _parse_section(name: str, raw: Any, problems: list[str]) -> Any:
    """A section's model from its mapping; invalid fields keep their defaults (reported)."""
    cls = SECTIONS[name]
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{name}: expected a mapping, got {raw!r}")
        return cls()
    adapter, schema = _adapter(cls)
    try:
        return adapter.validate_python(raw)
    except ValidationError as error:
        problems += fields.problems(error, name, raw, schema, _NESTED)
        bad = {err["loc"][0] for err in error.errors() if err["loc"]}
    try:  # the rest of the config is still checked, with defaults for the bad fields
        return adapter.validate_python({k: v for k, v in raw.items() if k not in bad})
    except ValidationError:
        return cls()


def _grid_values(train: TrainSection, ev: EvalSection) -> dict[str, list[str]]:
    """The values each grid column takes, as text (what ``stats.primary`` conditions name)."""
    severities = [str(v) for v in ev.severities]
    return {
        "train_batch_size": [str(v) for v in train.batch_sizes],
        "test_batch_size": [str(v) for v in ev.test_batch_sizes],
        "stats_mode": [m.label for m in ev.condition_modes],
        "shift": list(ev.shifts),
        "severity": ["0", *severities] if "clean" in ev.shifts else severities,
    }


def parse_config(raw: Any, removed_norms: Sequence[NormSpec] = ()) -> Config:
    """Build a Config from a nested dict and validate it; one ValueError lists all problems.

    ``removed_norms``: norms an override took out of the grid; ``stats.primary`` entries that
    name them are dropped with a logged note instead of failing.
    """
    if not isinstance(raw, dict):
        raise ValueError(
            f"config must be a mapping of sections ({', '.join(TOP_LEVEL_KEYS)}), "
            f"got {type(raw).__name__}"
        )
    problems = [
        f"unknown key '{key}'{fields.suggest(key, TOP_LEVEL_KEYS)}"
        for key in raw
        if key not in TOP_LEVEL_KEYS
    ]
    sections = {name: _parse_section(name, raw.get(name), problems) for name in SECTIONS}
    norms = parse_norms(raw.get("norms", ["batch"]), problems)
    ev = sections["eval"]
    stats, stats_problems = parse_stats(
        raw.get("stats"),
        norms,
        sorted({*ev.stats_modes, *(m.label for m in ev.condition_modes)}),
        _grid_values(sections["train"], ev),
        removed_norms,
    )
    problems.extend(stats_problems)
    config = Config(norms=norms, stats=stats, **sections)
    problems.extend(check_combinations(config))
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise ValueError(f"invalid benchmark config ({len(problems)} problem(s)):\n{listing}")
    return config


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
    written = copy.deepcopy(raw)  # the file as written, before the overrides
    for assignment in overrides:
        apply_override(raw, assignment)
    removed = overridden_norms(written, raw)
    overridden_backbone(written, raw)
    return parse_config(raw, removed)
