"""What a W&B run holds, as a dashboard filters and groups it (`normzoo.bench.record.track`):
ids from what was computed (`run_id`, `summary_id`), the group (`setting`), tags, the flat
config of inputs (`run_config`), each condition's summary name (`condition_key`) and the
evaluation table.
"""

from __future__ import annotations

import dataclasses
import json
import re

import pandas as pd

from normzoo.bench.plan.grid import condition_name


def slug(text: str, length: int = 40) -> str:
    """``text`` in the characters W&B ids and artifact names allow (letters, digits, ``-_.``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:length] or "x"


def run_id(run_key: str) -> str:
    """The W&B id of a training run: its run key, so renaming the experiment or adding test
    conditions resumes the same W&B run."""
    return f"run-{run_key}"


def summary_id(config_hash: str) -> str:
    """The W&B id of an experiment's summary run: one per config (results), not per name."""
    return f"summary-{config_hash}"


def setting(experiment: str, run) -> str:
    """The group of a run: the seeds of one (norm label, train batch size, composition)."""
    return f"{experiment}/{run.norm.label}/bs{run.train_batch_size}/{run.train_composition.label}"


def run_tags(run) -> list[str]:
    """Tags a user filters by: norm label, ``bs=<train batch size>``, train composition."""
    return [run.norm.label, f"bs={run.train_batch_size}", run.train_composition.label]


def condition_key(evaluation: dict) -> str:
    """The summary name of a test condition's accuracy: ``test/`` (W&B's panel section) and the
    condition's one name (`condition_name`, as the CLI, store and report spell it), e.g.
    ``test/bs8/batch/contrast-5/iid``."""
    return f"test/{condition_name(evaluation)}"


def _flat(prefix: str, options: dict) -> dict:
    out = {}
    for key, value in options.items():
        if isinstance(value, dict):
            out.update(_flat(f"{prefix}{key}_", value))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def run_config(
    run, config, code_versions: dict | None = None, experiment: str | None = None
) -> dict:
    """A training run's W&B config: its inputs only, one level deep.

    Identity (experiment: ``experiment`` or the config's name; experiment_name; run_key,
    config_hash, setting), data (dataset, ``data_<option>``),
    model (backbone, ``model_<option>``), norm (norm, norm_label, norm_options as JSON,
    ``norm_<option>``, batch_dependent), the train condition (train_batch_size,
    train_composition, seed), every other training hyper-parameter under its own name (lr,
    optimizer, epochs, max_steps, ...), and the code versions.
    """
    from normzoo.registry import is_batch_dependent  # imports torch: start-up time

    experiment = experiment or config.experiment.name
    out = {
        "experiment": experiment,
        "experiment_name": config.experiment.name,
        "run_key": run.key,
        "config_hash": config.hash,
        "setting": setting(experiment, run),
        "dataset": run.dataset,
        **_flat("data_", dict(config.data.options)),
        "val_fraction": config.data.val_fraction,
        "backbone": run.backbone,
        **_flat("model_", dict(config.model.options)),
        "norm": run.norm.name,
        "norm_label": run.norm.label,
        "norm_options": json.dumps(run.norm.options, sort_keys=True),
        **_flat("norm_", dict(run.norm.options)),
        "batch_dependent": is_batch_dependent(run.norm.name),
        "train_batch_size": run.train_batch_size,
        "train_composition": run.train_composition.label,
        "seed": run.seed,
    }
    train = dataclasses.asdict(config.train)
    for plural in ("batch_sizes", "compositions", "seeds"):  # this run's values are above
        train.pop(plural)
    out.update(_flat("", train))
    out.update(code_versions or {})
    return out


def built_config(description: dict) -> dict:
    """What a run's model holds (:func:`normzoo.models.describe`) as flat W&B config keys:
    ``built_parameters``, ``built_norm_layers``, ``built_norm_parameters``,
    ``built_norm_<kind>`` per zoo norm kind and ``built_other_<class>`` per other norm layer."""
    out = {
        f"built_{key}": description[key] for key in ("parameters", "norm_layers", "norm_parameters")
    }
    out.update({f"built_norm_{kind}": n for kind, n in description["norm_kinds"].items()})
    out.update({f"built_other_{cls}": n for cls, n in description["foreign_norm_layers"].items()})
    return out


def evaluation_table(run, experiment: str, evaluations: list[dict]) -> pd.DataFrame:
    """The evaluations of one run with the columns a dashboard splits by (norm, batch sizes,
    seed, setting) and each condition's summary name."""
    frame = pd.DataFrame(evaluations)
    if frame.empty:
        return frame
    front = {
        "run_key": run.key,
        "setting": setting(experiment, run),
        "norm": run.norm.name,
        "norm_label": run.norm.label,
        "train_batch_size": run.train_batch_size,
        "train_composition": run.train_composition.label,
        "seed": run.seed,
    }
    frame = frame.drop(columns=[c for c in front if c in frame.columns])
    frame.insert(0, "condition", [condition_key(e) for e in evaluations])
    for position, (column, value) in enumerate(front.items()):
        frame.insert(position, column, value)
    return frame
