"""Experiment identity: the name, plus a short hash of what the ``--set`` overrides changed.

The identity keeps results of different configs apart where they are shown together (W&B groups,
artifacts, report titles): a 30-step smoke run of ``quick`` with ``--set train.max_steps=30`` is
``quick-<hash>``, never ``quick``. The name stays a label: output dirs, run keys and W&B run ids
do not depend on it, so adding test conditions with ``--set`` still reuses the trained runs.
A user who names the experiment (``--set experiment.name=...``) gets that name as it is.
"""

from __future__ import annotations

from normzoo.bench.plan.config import Config, stable_hash

HASH_LENGTH = 6


def _flat(value: object, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def _comparable(config: Config) -> dict:
    """What can change a result or the report: `Config.result_dict` and the stats section."""
    return {**config.result_dict(), "stats": config.to_dict()["stats"]}


def changed_values(base: Config, config: Config) -> dict[str, object]:
    """Dotted keys whose value differs from ``base`` to ``config`` (``None`` for a removed key),
    over what can change a result or the report (not the name, the execution section, paths)."""
    old, new = _flat(_comparable(base)), _flat(_comparable(config))
    return {k: new.get(k) for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)}


def names_experiment(overrides: list[str] | tuple[str, ...]) -> bool:
    """Whether the overrides set ``experiment.name``."""
    return any(o.split("=", 1)[0].strip() == "experiment.name" for o in overrides)


def experiment_identity(config: Config, base: Config | None, named: bool = False) -> str:
    """``<name>`` when nothing was changed or the user ``named`` the experiment, else
    ``<name>-<hash>``, the hash (6 hex digits) of `changed_values` from ``base`` to ``config``."""
    name = config.experiment.name
    if named or base is None:
        return name
    changed = changed_values(base, config)
    return f"{name}-{stable_hash(changed, HASH_LENGTH)}" if changed else name
