"""Validation rules of a benchmark config, as data, and the checks that combine fields.

``FIELD_RULES`` maps every scalar or list field (``section.key``) to a :class:`Rule`; one loop
(:func:`check_field`) applies them while the config is parsed, so a value is checked once, the
same way everywhere, and every problem is reported with its field. :func:`check_combinations`
then checks what depends on several fields (norms against the backbone, batch sizes against the
dataset, shifts against their source, dataset files on disk). This module knows the config only
through attribute names; it never imports ``normzoo.bench.plan.config`` (which imports it).
"""

from __future__ import annotations

import difflib
import importlib.util
import math
from dataclasses import dataclass
from typing import Any

from normzoo.bench.plan import schema
from normzoo.data.datasets import DATASETS

MAX_NAME_LENGTH = 100  # experiment names become directory, W&B group and file names


def suggest(word: Any, choices: Any) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or an empty string."""
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def unknown(kind: str, value: Any, allowed: Any) -> str:
    """``unknown <kind> 'value' (did you mean ...); allowed: ...``."""
    listing = ", ".join(map(str, allowed))
    return f"unknown {kind} '{value}'{suggest(value, allowed)}; allowed: {listing}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Rule:
    """What one config field accepts.

    ``kind``: ``int`` (an integral float such as ``3e4`` is taken as the int), ``number``,
    ``choice`` (one of ``choices``; ``noun`` names it in errors), ``name`` (an experiment name),
    ``text``, ``bool``, ``mapping``. Bounds: ``low``/``high``, exclusive when ``open_low`` /
    ``open_high``; NaN is never accepted, infinity only with ``infinite``. ``optional``: null
    allowed. ``many``: a non-empty list of such values (a single value is taken as a list of one);
    ``listable``: one value, or a non-empty list of them (stored as a tuple); ``distinct``: a list
    without repeats. ``hint``: appended to the error (what to use instead).
    """

    kind: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    infinite: bool = False
    choices: tuple = ()
    noun: str = ""
    optional: bool = False
    many: bool = False
    listable: bool = False
    distinct: bool = False
    hint: str = ""

    def describe(self) -> str:
        """The accepted values in words, e.g. ``an integer >= 1``."""
        if self.kind in ("int", "number"):
            what = "an integer" if self.kind == "int" else "a number"
            low = "" if self.low is None else f"{'>' if self.open_low else '>='} {self.low:g}"
            high = "" if self.high is None else f"{'<' if self.open_high else '<='} {self.high:g}"
            if low and high:
                left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
                what += f" in {left}{self.low:g}, {self.high:g}{right}"
            elif low or high:
                what += f" {low or high}"
            if self.infinite:
                what += " (or .inf)"
        elif self.kind == "name":
            what = f"a name of 1..{MAX_NAME_LENGTH} printable characters without '/'"
        elif self.kind == "mapping":
            what = "a mapping {key: value}"
        elif self.kind == "bool":
            what = "true or false"
        else:
            what = "text"
        if self.listable:
            what += f" or a non-empty list of {'distinct ' if self.distinct else ''}such values"
        if self.many:
            what = f"a non-empty list of {'distinct ' if self.distinct else ''}values, each {what}"
        if self.optional:
            what += " or null"
        return what

    def check_one(self, value: Any) -> tuple[Any, bool]:
        """(value as stored, accepted?) for a single value."""
        if self.kind == "choice":
            return value, isinstance(value, str) and value in self.choices
        if self.kind == "text":
            return value, isinstance(value, str)
        if self.kind == "mapping":
            return value, isinstance(value, dict)
        if self.kind == "bool":
            return value, isinstance(value, bool)
        if self.kind == "name":
            ok = (
                isinstance(value, str)
                and 0 < len(value) <= MAX_NAME_LENGTH
                and value.isprintable()
                and "/" not in value
                and "\\" not in value
                and not value.startswith(".")
                and value.strip() == value
            )
            return value, ok
        if not _is_number(value) or math.isnan(value):
            return value, False
        if math.isinf(value):
            return value, self.infinite and self.kind == "number" and value > 0
        if self.kind == "int":
            if not float(value).is_integer():
                return value, False
            value = int(value)
        ok = (self.low is None or (value > self.low if self.open_low else value >= self.low)) and (
            self.high is None or (value < self.high if self.open_high else value <= self.high)
        )
        return value, ok

    def check(self, where: str, value: Any) -> tuple[Any, str | None]:
        """(value as stored, problem or None) for the field ``where``."""
        if value is None and self.optional:
            return None, None
        if self.many or (self.listable and isinstance(value, (list, tuple))):
            values = list(value) if isinstance(value, (list, tuple)) else [value]
            checked = [self.check_one(v) for v in values]
            stored = tuple(v for v, _ in checked)
            ok = bool(values) and all(ok for _, ok in checked)
            if ok and self.distinct and len(set(stored)) != len(stored):
                ok = False
            if not ok and self.kind == "choice" and values:
                bad = [v for v, good in checked if not good]
                if bad:
                    return stored, f"{where}: {unknown(self.noun, bad[0], self.choices)}"
            shown = list(value) if isinstance(value, (list, tuple)) else value
            return stored, None if ok else f"{where}={shown!r} must be {self.describe()}{self.hint}"
        stored, ok = self.check_one(value)
        if ok:
            return stored, None
        if self.kind == "choice":
            return stored, f"{where}: {unknown(self.noun, value, self.choices)}"
        return stored, f"{where}={value!r} must be {self.describe()}{self.hint}"


def _int(low: int = 1, **kw: Any) -> Rule:
    return Rule("int", low=low, **kw)


def _choice(choices: tuple, noun: str, **kw: Any) -> Rule:
    return Rule("choice", choices=choices, noun=noun, **kw)


# Every field of the config and what it accepts (compositions and norms are parsed separately,
# shifts depend on eval.shift_source and are checked in `check_combinations`).
FIELD_RULES: dict[str, Rule] = {
    "experiment.name": Rule("name"),
    "experiment.description": Rule("text"),
    "data.dataset": _choice(DATASETS, "dataset"),
    "data.root": Rule("text", optional=True),
    "data.options": Rule("mapping"),
    "data.download": Rule("bool", hint=" (opt-in download of cifar10/mnist/CIFAR-10-C)"),
    "data.val_fraction": Rule("number", low=0, high=1, open_low=True, open_high=True),
    "model.backbone": Rule("text"),
    "model.options": Rule("mapping"),
    "train.batch_sizes": _int(many=True),
    "train.epochs": _int(),
    "train.max_steps": _int(optional=True, hint=" (null: epochs decide)"),
    "train.optimizer": _choice(schema.OPTIMIZERS, "optimizer"),
    "train.lr": Rule("number", low=0, open_low=True),
    "train.momentum": Rule("number", low=0, high=1, open_high=True),
    "train.weight_decay": Rule("number", low=0),
    "train.schedule": _choice(schema.SCHEDULES, "schedule"),
    "train.lr_scaling": _choice(schema.LR_SCALINGS, "lr scaling"),
    "train.lr_reference_batch_size": _int(),
    "train.seeds": _int(0, many=True, distinct=True, hint=" (or a count n: seeds 0..n-1)"),
    "eval.test_batch_sizes": _int(many=True),
    "eval.stats_modes": _choice(schema.EVAL_STATS_MODES, "stats mode", many=True),
    "eval.mix_prior": Rule(
        "number",
        low=0,
        infinite=True,
        listable=True,
        distinct=True,
        hint=" (pseudo-samples: 0 = batch, .inf = running; a list sweeps them)",
    ),
    "eval.shifts": Rule("text", many=True, hint="; use [clean]"),
    "eval.severities": _int(1, high=5, many=True),
    "eval.tent_lr": Rule("number", low=0, open_low=True),
    "eval.tent_steps": _int(),
    "eval.shift_source": _choice(schema.SHIFT_SOURCES, "shift source"),
    "eval.shift_root": Rule("text", optional=True),
    "execution.workers": _int(optional=True, hint=" (null: all cores)"),
    "execution.wandb": _choice(schema.WANDB_MODES, "W&B mode"),
    "execution.wandb_project": Rule("text", optional=True, hint=" (null: $WANDB_PROJECT)"),
    "execution.wandb_entity": Rule("text", optional=True, hint=" (null: $WANDB_ENTITY)"),
    "execution.wandb_weights": Rule("bool"),
    "execution.executor": _choice(schema.EXECUTORS, "executor"),
    "execution.submitit": Rule("mapping"),
    "execution.ddp_devices": _int(hint=" (processes per run; 1: no DDP)"),
    "execution.checkpoint_every_epochs": _int(0, hint=" (0: no mid-run checkpoints)"),
    "execution.stack": _int(hint=" (most seeds of a cell trained as one; 1: each alone)"),
}


def check_field(where: str, value: Any) -> tuple[Any, str | None]:
    """(value as stored, problem or None) of field ``where`` (``section.key``) by its rule."""
    return FIELD_RULES[where].check(where, value)


def check_norm(name: str, options: dict, channels: int = 32) -> str | None:
    """Problem of one norm's options by the layer's own validation, or None.

    Builds the layer with ``normzoo.create`` and runs two training steps and one eval step on a
    small random batch, so options the constructor accepts but that break the layer (a negative
    ``eps``, a ``momentum`` that makes running statistics invalid) are caught here, before any
    training, rather than as NaN results or a traceback later.
    """
    import torch

    import normzoo

    try:
        layer = normzoo.create(name, channels, **options)
        x = torch.randn(4, channels, 4, 4, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            outputs = [layer.train()(x), layer.train()(x), layer.eval()(x)]
    except (ValueError, TypeError, RuntimeError) as error:
        return str(error)
    if not all(torch.isfinite(out).all() for out in outputs):
        return (
            f"options {options} make the layer output NaN/inf on a small random batch "
            "(eps must be > 0, momentum in [0, 1])"
        )
    return None


def check_combinations(config: Any) -> list[str]:
    """Problems that involve several fields of a parsed config (all fields already valid)."""
    import normzoo.data
    from normzoo.models import build_model, check_backbone, has_spatial_dims
    from normzoo.registry import is_batch_dependent

    problems: list[str] = []
    data, train, ev = config.data, config.train, config.eval
    info = None
    option_problems = normzoo.data.check_options(data.dataset, data.options)
    problems += [f"data.options: {p}" for p in option_problems]
    if not option_problems:
        info = normzoo.data.dataset_info(data.dataset, data.options)
    corruptions = normzoo.data.CORRUPTIONS
    if ev.shift_source == "cifar10c":
        corruptions = normzoo.data.CIFAR10C_CORRUPTIONS
        if any(c.name == "mixed_corruption" for c in ev.compositions):
            problems.append("eval.compositions mixed_corruption needs eval.shift_source=generated")
        if data.dataset != "cifar10":
            problems.append(
                f"eval.shift_source=cifar10c needs data.dataset=cifar10 (got '{data.dataset}')"
            )
    allowed_shifts = (schema.CLEAN, *corruptions)
    for shift in ev.shifts:
        if shift not in allowed_shifts:
            problems.append(f"eval.shifts: {unknown('corruption', shift, allowed_shifts)}")
    for i, composition in enumerate(train.compositions):
        if composition.name == "classes":
            bad = [b for b in train.batch_sizes if b % composition.k]
            if bad:
                problems.append(
                    f"train.compositions[{i}] classes(k={composition.k}) needs train batch sizes"
                    f" divisible by k (k classes, batch/k samples each); {bad} are not"
                )
            if info is not None and composition.k > info.num_classes:
                problems.append(
                    f"train.compositions[{i}] classes(k={composition.k}) needs k <= "
                    f"{info.num_classes} (the classes of {data.dataset})"
                )
    backbone = config.model.backbone
    try:
        check_backbone(backbone)
    except ValueError as error:
        problems.append(f"model.backbone: {error}")
        backbone = None
    channels = info.channels if info is not None else 3
    for i, norm in enumerate(config.norms):
        where = f"norms[{i}] '{norm.label}'"
        extra = sorted(set(norm.train_batch_sizes or ()) - set(train.batch_sizes))
        if extra:
            problems.append(
                f"{where}: train_batch_sizes {extra} are not in train.batch_sizes "
                f"{list(train.batch_sizes)}; a norm can only be restricted to some of them"
            )
        if norm.name == "instance" and backbone and not has_spatial_dims(backbone):
            problems.append(
                f"norms[{i}]: instance norm needs spatial dims but backbone '{backbone}' normalizes"
                " (N, C) features; use a convolutional backbone or drop instance"
            )
            continue
        if is_batch_dependent(norm.name) and 1 in (norm.train_batch_sizes or train.batch_sizes):
            problems.append(
                f"norms[{i}]: train batch size 1 cannot train batch-dependent norm '{norm.label}'"
                " (batch statistics of a single sample); drop batch size 1 or this norm"
            )
        width = 32  # channels for the layer check when no backbone could be built
        if backbone:  # the options against every channel width of the backbone
            try:
                model = build_model(
                    backbone, norm.name, 10, channels, norm.options, **config.model.options
                )
            except (ValueError, TypeError) as error:
                problems.append(f"{where} with backbone '{backbone}': {error}")
                continue
            width = next(
                (m.num_features for m in model.modules() if hasattr(m, "num_features")), width
            )
        problem = check_norm(norm.name, norm.options, width)
        if problem is not None:
            problems.append(f"{where}: {problem}")
    if info is not None:
        n_fit = int(info.train_size * (1 - data.val_fraction))
        for b in train.batch_sizes:
            if b > n_fit:
                problems.append(f"train batch size {b} is larger than the training split ({n_fit})")
        for b in ev.test_batch_sizes:
            if b > info.test_size:
                problems.append(
                    f"test batch size {b} is larger than the test set ({info.test_size})"
                )
    for composition in ev.compositions:
        if composition.name == "outliers" and max(ev.test_batch_sizes) <= composition.k:
            problems.append(
                f"eval.compositions outliers(k={composition.k}) needs a test batch size >"
                f" {composition.k}; largest is {max(ev.test_batch_sizes)}"
            )
    ex = config.execution
    if ex.executor == "submitit" and importlib.util.find_spec("submitit") is None:
        problems.append(
            "execution.executor=submitit needs the optional dependency:"
            " pip install 'normzoo[cluster]'"
        )
    elif ex.executor == "submitit":
        problems.extend(check_submitit_options(ex.submitit))
    if isinstance(ex.ddp_devices, int) and ex.ddp_devices > 1:
        odd = [b for b in train.batch_sizes if isinstance(b, int) and b % ex.ddp_devices]
        if odd:
            problems.append(
                f"train.batch_sizes {odd} cannot be split over execution.ddp_devices="
                f"{ex.ddp_devices} processes; use batch sizes divisible by it"
            )
    return problems


def check_files(config: Any) -> list[str]:
    """Problems with the dataset files a config reads (missing, unreadable); none for synthetic."""
    import normzoo.data

    cifar10c = ()
    if config.eval.shift_source == "cifar10c":
        cifar10c = tuple(s for s in config.eval.shifts if s != schema.CLEAN)
    problems = []
    try:
        normzoo.data.check_files(config.data.dataset, config.data.root)
    except OSError as error:
        problems.append(f"data: {error}")
    if cifar10c:
        root = config.eval.shift_root if config.eval.shift_root is not None else config.data.root
        try:
            normzoo.data.check_files("cifar10c", root, cifar10c)
        except OSError as error:
            problems.append(f"eval.shift_root: {error}")
    return problems


def download_missing(config: Any) -> None:
    """With ``data.download: true``, fetch the real datasets a config reads that are missing
    (checksum-verified, see ``normzoo.data.download``); never called otherwise."""
    if not config.data.download:
        return
    from normzoo.data.download import download

    if config.data.dataset in ("cifar10", "mnist"):
        download(config.data.dataset, config.data.root)
    if config.eval.shift_source == "cifar10c":
        root = config.eval.shift_root if config.eval.shift_root is not None else config.data.root
        download("cifar10c", root)


def check_submitit_options(options: dict) -> list[str]:
    """Problems with an ``execution.submitit`` mapping (empty list when it is valid)."""
    problems = []
    for key, value in options.items():
        where = f"execution.submitit.{key}"
        if key not in schema.SUBMITIT_OPTIONS:
            problems.append(f"unknown key '{where}'; allowed: {', '.join(schema.SUBMITIT_OPTIONS)}")
        elif key in schema.SUBMITIT_INTS and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            problems.append(f"{where}={value!r} must be an integer >= 1")
        elif key == "gpus_per_task" and value < 0:
            problems.append(f"{where}={value!r} must be >= 0")
        elif key == "mem_gb" and (not isinstance(value, (int, float)) or value <= 0):
            problems.append(f"{where}={value!r} must be a positive number of GB")
        elif key == "cluster" and value not in schema.SUBMITIT_CLUSTERS:
            problems.append(
                f"{where}='{value}' is not one of {', '.join(schema.SUBMITIT_CLUSTERS)}"
            )
        elif key in ("partition", "account", "qos") and not isinstance(value, str):
            problems.append(f"{where}={value!r} must be a string")
        elif key == "setup" and not (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            problems.append(f"{where} must be a list of shell lines")
        elif key == "additional" and not isinstance(value, dict):
            problems.append(f"{where} must be a mapping of sbatch options")
    return problems
