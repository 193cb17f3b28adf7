"""Semantic checks of a parsed Config: known names, values in range, possible combinations."""

from __future__ import annotations

import importlib.util
import inspect
import logging

from normzoo.bench.config import (
    EVAL_STATS_MODES,
    EXECUTORS,
    LR_SCALINGS,
    OPTIMIZERS,
    SCHEDULES,
    SHIFT_SOURCES,
    WANDB_MODES,
    Config,
    _unknown,
)

log = logging.getLogger(__name__)

# Split sizes of the real datasets (train includes the validation fraction).
KNOWN_SIZES = {"cifar10": (50_000, 10_000), "mnist": (60_000, 10_000)}


def dataset_sizes(dataset: str, options: dict) -> tuple[int, int] | None:
    """(train, test) set sizes without loading the data, or None when they cannot be known."""
    if dataset in KNOWN_SIZES:
        return KNOWN_SIZES[dataset]
    if dataset == "synthetic":
        try:
            from normzoo.data.synthetic import load_synthetic
        except ImportError:
            return None
        defaults = {
            name: p.default
            for name, p in inspect.signature(load_synthetic).parameters.items()
            if p.default is not inspect.Parameter.empty
        }
        train = options.get("train_size", defaults.get("train_size"))
        test = options.get("test_size", defaults.get("test_size"))
        if isinstance(train, int) and isinstance(test, int):
            return train, test
    return None


def _is_int(value, low: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_names(config: Config, problems: list[str]) -> None:
    import normzoo
    import normzoo.data
    from normzoo.models import check_backbone

    if config.data.dataset not in normzoo.data.DATASETS:
        problems.append(
            f"data.dataset: {_unknown('dataset', config.data.dataset, normzoo.data.DATASETS)}"
        )
    try:
        check_backbone(config.model.backbone)
    except ValueError as error:
        problems.append(f"model.backbone: {error}")
    available = normzoo.available()
    for i, norm in enumerate(config.norms):
        if not _is_alias(norm.name):
            problems.append(f"norms[{i}]: {_unknown('norm', norm.name, available)}")
    corruptions = normzoo.data.CORRUPTIONS
    if config.eval.shift_source == "cifar10c":
        from normzoo.data.files import CIFAR10C_CORRUPTIONS as corruptions
    allowed_shifts = ("clean", *corruptions)
    for shift in config.eval.shifts:
        if shift not in allowed_shifts:
            problems.append(f"eval.shifts: {_unknown('corruption', shift, allowed_shifts)}")
    for mode in config.eval.stats_modes:
        if mode not in EVAL_STATS_MODES:
            problems.append(f"eval.stats_modes: {_unknown('stats mode', mode, EVAL_STATS_MODES)}")


def _is_alias(name: str) -> bool:
    from normzoo.registry import is_batch_dependent

    try:
        is_batch_dependent(name)
    except (ValueError, KeyError):
        return False
    return True


def _check_values(config: Config, problems: list[str]) -> None:
    name = config.experiment.name
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        problems.append(f"experiment.name: {name!r} must be a non-empty name without '/'")
    if not _is_number(config.data.val_fraction) or not 0 < config.data.val_fraction < 1:
        problems.append(f"data.val_fraction={config.data.val_fraction!r} must be in (0, 1)")
    train, ev, ex = config.train, config.eval, config.execution
    if not train.batch_sizes or not all(_is_int(b) for b in train.batch_sizes):
        problems.append(f"train.batch_sizes={list(train.batch_sizes)} must be integers >= 1")
    if not train.compositions:
        problems.append("train.compositions is empty; use [iid]")
    if not _is_int(train.epochs):
        problems.append(f"train.epochs={train.epochs!r} must be an integer >= 1")
    if train.max_steps is not None and not _is_int(train.max_steps):
        problems.append(f"train.max_steps={train.max_steps!r} must be null or an integer >= 1")
    if train.optimizer not in OPTIMIZERS:
        problems.append(f"train.optimizer: {_unknown('optimizer', train.optimizer, OPTIMIZERS)}")
    if train.schedule not in SCHEDULES:
        problems.append(f"train.schedule: {_unknown('schedule', train.schedule, SCHEDULES)}")
    if train.lr_scaling not in LR_SCALINGS:
        problems.append(
            f"train.lr_scaling: {_unknown('lr scaling', train.lr_scaling, LR_SCALINGS)}"
        )
    if not _is_number(train.lr) or train.lr <= 0:
        problems.append(f"train.lr={train.lr!r} must be a number > 0")
    if not _is_number(train.momentum) or not 0 <= train.momentum < 1:
        problems.append(f"train.momentum={train.momentum!r} must be in [0, 1)")
    if not _is_number(train.weight_decay) or train.weight_decay < 0:
        problems.append(f"train.weight_decay={train.weight_decay!r} must be >= 0")
    if not _is_int(train.lr_reference_batch_size):
        problems.append("train.lr_reference_batch_size must be an integer >= 1")
    seeds = train.seeds
    if not seeds or not all(_is_int(s, 0) for s in seeds) or len(set(seeds)) != len(seeds):
        problems.append(f"train.seeds={list(seeds)} must be a count or distinct integers >= 0")
    if not ev.test_batch_sizes or not all(_is_int(b) for b in ev.test_batch_sizes):
        problems.append(f"eval.test_batch_sizes={list(ev.test_batch_sizes)} must be integers >= 1")
    if not ev.stats_modes:
        problems.append("eval.stats_modes is empty; use [running]")
    if not ev.shifts:
        problems.append("eval.shifts is empty; use [clean]")
    if not ev.compositions:
        problems.append("eval.compositions is empty; use [iid]")
    mixed = any(c.name == "mixed_corruption" for c in ev.compositions)
    if (mixed or any(s != "clean" for s in ev.shifts)) and (
        not ev.severities or not all(_is_int(s) and s <= 5 for s in ev.severities)
    ):
        problems.append(f"eval.severities={list(ev.severities)} must be integers in 1..5")
    if not _is_number(ev.mix_prior) or ev.mix_prior <= 0:
        problems.append(f"eval.mix_prior={ev.mix_prior!r} must be > 0 (pseudo-samples)")
    if not _is_number(ev.tent_lr) or ev.tent_lr <= 0:
        problems.append(f"eval.tent_lr={ev.tent_lr!r} must be > 0")
    if not _is_int(ev.tent_steps):
        problems.append(f"eval.tent_steps={ev.tent_steps!r} must be an integer >= 1")
    if ev.shift_source not in SHIFT_SOURCES:
        problems.append(
            f"eval.shift_source: {_unknown('shift source', ev.shift_source, SHIFT_SOURCES)}"
        )
    elif ev.shift_source == "cifar10c" and any(
        c.name == "mixed_corruption" for c in ev.compositions
    ):
        problems.append("eval.compositions mixed_corruption needs eval.shift_source=generated")
    elif ev.shift_source == "cifar10c" and config.data.dataset != "cifar10":
        problems.append(
            f"eval.shift_source=cifar10c needs data.dataset=cifar10 (got '{config.data.dataset}')"
        )
    if ex.workers is not None and not _is_int(ex.workers):
        problems.append(f"execution.workers={ex.workers!r} must be null (all cores) or >= 1")
    if ex.wandb not in WANDB_MODES:
        problems.append(f"execution.wandb: {_unknown('W&B mode', ex.wandb, WANDB_MODES)}")
    if ex.executor not in EXECUTORS:
        problems.append(f"execution.executor: {_unknown('executor', ex.executor, EXECUTORS)}")
    elif ex.executor == "submitit" and importlib.util.find_spec("submitit") is None:
        problems.append(
            "execution.executor=submitit needs the optional dependency:"
            " pip install 'normzoo[cluster]'"
        )


def _check_combinations(config: Config, problems: list[str]) -> None:
    from normzoo.models import build_model, check_backbone, has_spatial_dims
    from normzoo.registry import is_batch_dependent

    ev = config.eval
    backbone = config.model.backbone
    try:
        check_backbone(backbone)
    except ValueError:
        return  # already reported
    batch_sizes_ok = all(_is_int(b) for b in config.train.batch_sizes)
    for i, norm in enumerate(config.norms):
        if not _is_alias(norm.name):
            continue  # already reported as unknown
        canonical = norm.name.lower().replace("-", "_")
        if canonical in ("instance", "in") and not has_spatial_dims(backbone):
            problems.append(
                f"norms[{i}]: instance norm needs spatial dims but backbone '{backbone}' normalizes"
                " (N, C) features; use a convolutional backbone or drop instance"
            )
            continue
        if batch_sizes_ok and is_batch_dependent(norm.name) and 1 in config.train.batch_sizes:
            problems.append(
                f"norms[{i}]: train batch size 1 cannot train batch-dependent norm '{norm.label}'"
                " (batch statistics of a single sample); drop batch size 1 or this norm"
            )
        try:  # building the model checks the norm options against the backbone's channel widths
            build_model(backbone, norm.name, 10, 3, norm.options, **config.model.options)
        except (ValueError, TypeError) as error:
            problems.append(f"norms[{i}] '{norm.label}' with backbone '{backbone}': {error}")
    sizes = dataset_sizes(config.data.dataset, config.data.options)
    if sizes is not None:
        n_train, n_test = sizes
        n_fit = int(n_train * (1 - config.data.val_fraction))
        for b in config.train.batch_sizes:
            if _is_int(b) and b > n_fit:
                problems.append(f"train batch size {b} is larger than the training split ({n_fit})")
        for b in ev.test_batch_sizes:
            if _is_int(b) and b > n_test:
                problems.append(f"test batch size {b} is larger than the test set ({n_test})")
    outlier_ks = [c.k for c in ev.compositions if c.name == "outliers"]
    if outlier_ks and ev.test_batch_sizes and all(_is_int(b) for b in ev.test_batch_sizes):
        for k in outlier_ks:
            if max(ev.test_batch_sizes) <= k:
                problems.append(
                    f"eval.compositions outliers(k={k}) needs a test batch size > {k};"
                    f" largest is {max(ev.test_batch_sizes)}"
                )


def validate(config: Config) -> list[str]:
    """All problems of a structurally parsed config (empty list when it is valid)."""
    problems: list[str] = []
    _check_values(config, problems)
    _check_names(config, problems)
    _check_combinations(config, problems)
    return problems
