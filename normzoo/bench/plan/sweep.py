"""A W&B sweep over a config's learning-rate grid, run by the same ``normzoo compare``.

The sweep is a grid (``method: grid``) over norm x train batch size x learning rate x seed
(x train composition when a config has several): the config's ``train.lr_grid`` (``[train.lr]``
without one) and ``train.tune_seeds`` (``train.seeds`` without them). Each W&B trial is one
``normzoo compare`` of a single cell: the agent expands ``${args_no_hyphens}`` to bare
``KEY=VALUE`` tokens (``train.lr=0.002``, ``norms=['batch']``), which ``normzoo compare`` reads
as ``--set`` overrides applied after its ``--set`` ones (the trial's values win over the user's
overrides the command repeats); the command itself adds ``train.lr_grid=null`` and
``train.tune_seeds=null`` (the trial trains at the lr it is given) and one cheap test condition
(compare has no train-only mode; the sweep's metric is the validation accuracy the training
logs, ``val/acc``, never a test number). All trials share one output dir and store; ``--wait``
makes agents on one machine take turns on it.

Pure: config in, a sweep mapping out (`write_sweep` saves it as YAML).
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import yaml

from normzoo.bench.plan.config import Config, load_config

# The validation accuracy `normzoo.bench.execute.module.Classifier` logs (W&B key, last value).
SWEEP_METRIC = "val/acc"

# The one test condition a trial is evaluated under (compare always evaluates what it trains).
TRIAL_EVAL = (
    "eval.stats_modes=[running]",
    "eval.shifts=[clean]",
    "eval.compositions=[iid]",
)


def _composition_value(composition: Any) -> dict:
    """A train composition as a YAML mapping (only the parameters it has)."""
    fields = {"name": composition.name, "alpha": composition.alpha, "k": composition.k}
    return {key: value for key, value in fields.items() if value is not None}


def sweep_parameters(config: Config) -> dict[str, dict[str, list]]:
    """The sweep's grid: dotted config key -> ``{"values": [...]}``, each value what ``--set``
    takes for one trial (one-element lists for the config's list keys).

    Raises ValueError when the grid is not a product (a norm restricted by
    ``train_batch_sizes``), since a W&B grid sweep tries every combination.
    """
    restricted = [n.label for n in config.norms if n.train_batch_sizes]
    if restricted:
        raise ValueError(
            f"norms {restricted} run only at some train batch sizes (train_batch_sizes), but a"
            " W&B grid sweep tries every norm at every batch size; sweep them separately with"
            " --set norms=[...] --set train.batch_sizes=[...]"
        )
    train = config.train
    lrs = list(train.lr_grid) if train.lr_grid is not None else [train.lr]
    seeds = list(train.tune_seeds) if train.tune_seeds is not None else list(train.seeds)
    parameters = {
        "norms": {"values": [[norm.label] for norm in config.norms]},
        "train.batch_sizes": {"values": [[size] for size in train.batch_sizes]},
        "train.lr": {"values": lrs},
        "train.seeds": {"values": [[seed] for seed in seeds]},
    }
    if len(train.compositions) > 1:
        values = [[_composition_value(c)] for c in train.compositions]
        parameters["train.compositions"] = {"values": values}
    return parameters


def trial_overrides(config: Config) -> list[str]:
    """The ``--set`` overrides every trial adds to the user's: a fixed lr, one cheap test
    condition (the largest test batch size), and a stable experiment name."""
    return [
        "train.lr_grid=null",
        "train.tune_seeds=null",
        f"eval.test_batch_sizes=[{max(config.eval.test_batch_sizes)}]",
        *TRIAL_EVAL,
        f"experiment.name={config.experiment.name}-sweep",
    ]


def agent_tokens(parameters: dict[str, Any]) -> list[str]:
    """``KEY=VALUE`` as W&B's agent writes ``${args_no_hyphens}`` (``f"{key}={value}"``)."""
    return [f"{key}={value}" for key, value in parameters.items()]


def build_sweep(
    config_arg: str, config_path: str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> dict:
    """The W&B sweep configuration of a config's learning-rate grid.

    ``config_arg`` is the config as the trial command names it (a preset name or a path, as
    the user wrote it: the agent runs the command from its own working dir); ``config_path``
    the file read here; ``overrides`` the user's ``--set`` values, repeated in the command.
    Every trial's config is validated here, so no trial fails on its overrides.
    """
    config = load_config(config_path, overrides)
    parameters = sweep_parameters(config)
    extra = trial_overrides(config)
    names = list(parameters)
    before = logging.root.manager.disable
    logging.disable(logging.WARNING)  # each trial's notes (a narrowed family) once is enough
    try:
        for point in itertools.product(*(parameters[n]["values"] for n in names)):
            trial = agent_tokens(dict(zip(names, point, strict=True)))
            load_config(config_path, [*overrides, *extra, *trial])
    finally:
        logging.disable(before)
    command = ["${env}", "${interpreter}", "-m", "normzoo", "compare", config_arg]
    command.append("${args_no_hyphens}")
    for item in [*overrides, *extra]:
        command += ["--set", item]
    out = f"runs/{config.experiment.name}-sweep"
    command += ["--out", out, "--workers", "1", "--wait"]
    return {
        "name": f"{config.experiment.name}-lr-grid",
        "description": f"lr grid of {config.experiment.name}: norm x train batch size x lr x"
        f" seed, each trial one normzoo compare run scored on validation accuracy (store: {out})",
        "program": "normzoo",
        "method": "grid",
        "metric": {"name": SWEEP_METRIC, "goal": "maximize"},
        "parameters": parameters,
        "command": command,
    }


def write_sweep(sweep: dict, path: str | Path) -> Path:
    """Save a sweep configuration as YAML (the file ``wandb sweep FILE`` reads)."""
    path = Path(path)
    head = {key: value for key, value in sweep.items() if key != "command"}
    text = yaml.safe_dump(head, sort_keys=False, default_flow_style=None, width=100)
    if "command" in sweep:  # one token a line, as W&B's docs write it
        text += yaml.safe_dump({"command": sweep["command"]}, default_flow_style=False)
    path.write_text(text)
    return path
