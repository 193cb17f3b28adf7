"""The checks of a benchmark config that combine fields, run after every field is typed.

A field's own type, bounds and allowed values are declared on the config models
(``normzoo.bench.plan.config.sections``); :func:`check_combinations` then checks what depends on
several fields (norms against the backbone, batch sizes against the dataset, shifts against
their source), each rule a small named function returning its problems, one line each.
:func:`check_files` checks the dataset files on disk. This module knows the config only through
attribute names; it never imports ``normzoo.bench.plan.config`` (which imports it).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from normzoo.bench.plan import schema
from normzoo.bench.plan.config.fields import suggest, unknown

__all__ = [
    "check_combinations",
    "check_files",
    "check_norm",
    "download_missing",
    "suggest",
    "unknown",
]


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

    data = config.data
    problems = [
        f"data.options: {p}" for p in normzoo.data.check_options(data.dataset, data.options)
    ]
    info = None
    downloads = data.download and data.dataset.startswith("torchvision:")
    if not problems and not downloads:  # a dataset still to download is checked after it
        try:  # a user's dataset is listed or built here: a missing root fails before training
            info = normzoo.data.dataset_info(data.dataset, data.options, data.root)
        except (ValueError, TypeError, OSError) as error:
            problems.append(f"data: {error}")
    problems += _shifts(config)
    problems += _train_compositions(config, info)
    problems += _norms(config, info)
    problems += _batch_sizes(config, info)
    problems += _execution(config)
    problems += check_tuning(config.train)
    return problems


def check_tuning(train: Any) -> list[str]:
    """Problems of learning-rate selection: a grid needs its own seeds, disjoint from the
    compared ones, and selects the lr itself (no scaling rule on top)."""
    if train.lr_grid is None:
        if train.tune_seeds is not None:
            return ["train.tune_seeds is set without train.lr_grid; add a grid or drop tune_seeds"]
        return []
    problems = []
    if not train.tune_seeds:
        problems.append("train.lr_grid needs train.tune_seeds (seeds of the tuning runs)")
    else:
        shared = sorted(set(train.tune_seeds) & set(train.seeds))
        if shared:
            problems.append(
                f"train.tune_seeds {shared} are also in train.seeds; tuning runs must use seeds"
                " the comparison does not (e.g. tune_seeds: [100, 101])"
            )
    if train.lr_scaling != "none":
        problems.append(
            f"train.lr_grid selects the lr per norm and train batch size; set train.lr_scaling"
            f" to none (got {train.lr_scaling})"
        )
    return problems


def _shifts(config: Any) -> list[str]:
    """Shift names against their source; CIFAR-10-C needs cifar10 and no mixed batches."""
    import normzoo.data

    data, ev = config.data, config.eval
    problems = []
    corruptions = normzoo.data.CORRUPTIONS
    if ev.shift_source == "cifar10c":
        corruptions = normzoo.data.CIFAR10C_CORRUPTIONS
        if any(c.name == "mixed_corruption" for c in ev.compositions):
            problems.append("eval.compositions mixed_corruption needs eval.shift_source=generated")
        if data.dataset != "cifar10":
            problems.append(
                f"eval.shift_source=cifar10c needs data.dataset=cifar10 (got '{data.dataset}')"
            )
    allowed = (schema.CLEAN, *corruptions)
    problems += [
        f"eval.shifts: {unknown('corruption', s, allowed)}" for s in ev.shifts if s not in allowed
    ]
    return problems


def _train_compositions(config: Any, info: Any) -> list[str]:
    """``classes(k)``: k divides every train batch size and is at most the dataset's classes."""
    train, problems = config.train, []
    for i, composition in enumerate(train.compositions):
        if composition.name != "classes":
            continue
        bad = [b for b in train.batch_sizes if b % composition.k]
        if bad:
            problems.append(
                f"train.compositions[{i}] classes(k={composition.k}) needs train batch sizes"
                f" divisible by k (k classes, batch/k samples each); {bad} are not"
            )
        if info is not None and composition.k > info.num_classes:
            problems.append(
                f"train.compositions[{i}] classes(k={composition.k}) needs k <= "
                f"{info.num_classes} (the classes of {config.data.dataset})"
            )
    return problems


def _norms(config: Any, info: Any) -> list[str]:
    """Each norm against the train batch sizes and the backbone it is built into."""
    from normzoo.models import check_backbone

    backbone = config.model.backbone
    problems = []
    try:
        check_backbone(backbone)
    except ValueError as error:
        problems.append(f"model.backbone: {error}")
        backbone = None
    for i, norm in enumerate(config.norms):
        problems += _norm(config, i, norm, backbone, info)
    return problems


def _norm(config: Any, i: int, norm: Any, backbone: str | None, info: Any) -> list[str]:
    from normzoo.models import build_model, has_spatial_dims, is_library_backbone
    from normzoo.registry import is_batch_dependent

    train, where, problems = config.train, f"norms[{i}] '{norm.label}'", []
    extra = sorted(set(norm.train_batch_sizes or ()) - set(train.batch_sizes))
    if extra:
        problems.append(
            f"{where}: train_batch_sizes {extra} are not in train.batch_sizes "
            f"{list(train.batch_sizes)}; a norm can only be restricted to some of them"
        )
    if norm.name == "instance" and backbone and not has_spatial_dims(backbone):
        return [
            *problems,
            f"norms[{i}]: instance norm needs spatial dims but backbone '{backbone}' normalizes"
            " (N, C) features; use a convolutional backbone or drop instance",
        ]
    if is_batch_dependent(norm.name) and 1 in (norm.train_batch_sizes or train.batch_sizes):
        problems.append(
            f"norms[{i}]: train batch size 1 cannot train batch-dependent norm '{norm.label}'"
            " (batch statistics of a single sample); drop batch size 1 or this norm"
        )
    width = 32  # channels for the layer check when no backbone could be built
    if backbone:  # the options against every channel width of the backbone
        channels = info.channels if info is not None else 3
        try:
            model = build_model(
                backbone, norm.name, 10, channels, norm.options, **config.model.options
            )
        except (ValueError, TypeError) as error:
            return [*problems, f"{where} with backbone '{backbone}': {error}{_fix(norm, error)}"]
        width = next((m.num_features for m in model.modules() if hasattr(m, "num_features")), width)
        if info is not None and is_library_backbone(backbone):
            problem = check_forward(model, channels, info.image_size)
            if problem is not None:
                return [*problems, f"{where} with backbone '{backbone}': {problem}"]
        if info is not None:
            problems += check_test_batch_of_one(config, model, channels, info.image_size, where)
    problem = check_norm(norm.name, norm.options, width)
    return problems if problem is None else [*problems, f"{where}: {problem}"]


def check_forward(model: Any, channels: int, image_size: int) -> str | None:
    """Problem of a library or user model on the dataset's images, or None: one eval forward
    pass of two random images, so a model that cannot take the data's size or channels (a ViT
    built for another image size, a norm that does not fit the model's layout) fails here, in
    one line, rather than after the runs start."""
    import torch

    x = torch.randn(2, channels, image_size, image_size, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as error:  # a user's model may raise anything
        text = " ".join(str(error).split())
        return (
            f"forward pass on {image_size}x{image_size} images with {channels} channels failed "
            f"({type(error).__name__}: {text}); fit model.options to the data (e.g. image_size "
            "for torchvision ViTs, img_size for timm's)"
        )
    if not isinstance(out, torch.Tensor) or out.shape != (2, 10):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return (
            f"the model returns {shape} for 2 images, not logits of shape (2, num_classes); "
            "return class scores from forward"
        )
    return None


def check_test_batch_of_one(
    config: Any, model: Any, channels: int, image_size: int, where: str
) -> list[str]:
    """Each stats mode of ``eval.stats_modes`` the model cannot run at test batch 1 (batch
    statistics of a layer that sees one value per channel), when 1 is a test batch size: found
    by applying the mode to one random image, before any run trains."""
    import torch

    from normzoo.models import has_batch_layers

    if 1 not in config.eval.test_batch_sizes or not has_batch_layers(model):
        return []
    x = torch.randn(1, channels, image_size, image_size, generator=torch.Generator().manual_seed(0))
    problems = []
    for spec in config.eval.condition_modes:
        problem = batch_of_one_problem(model, spec.name, config.eval, x, spec.prior)
        if problem is not None:
            problems.append(
                f"{where}: stats mode '{spec.label}' cannot be evaluated at test batch size 1 "
                f"on {image_size}x{image_size} images ({problem}); drop 1 from "
                f"eval.test_batch_sizes or '{spec.label}' from eval.stats_modes, or give larger "
                "images (data.options.image_size)"
            )
    return problems


def batch_of_one_problem(
    model: Any, mode: str, ev: Any, x: Any, prior: float | None = None
) -> str | None:
    """Why ``model`` cannot be evaluated under stats mode ``mode`` at test batch 1, or None: the
    mode applied as the benchmark's ``evaluate_condition`` applies it, to the one image ``x``
    (shape ``(1, C, H, W)``), on a copy. Batch statistics of one sample need more than one value per
    channel: a layer fed 1x1 maps (a ResNet's last stage on small images) has no batch variance
    there, so ``batch``, ``adabn``, ``tent`` and an unbiased or zero-prior ``mix`` cannot run."""
    import copy

    import torch

    from normzoo.testtime import Tent, adapt, stats_mode

    model = copy.deepcopy(model).eval()
    try:
        with torch.no_grad():
            if mode == "adabn":
                adapt(model, [x], method="adabn")
            elif mode == "tent":
                Tent(model, lr=ev.tent_lr, steps=1)(x)
            elif mode != "running":
                if mode == "mix" and prior is None:
                    prior = ev.mix_prior
                with stats_mode(model, mode, prior=prior):
                    model(x)
    except ValueError as error:
        return " ".join(str(error).split())
    return None


def _fix(norm: Any, error: Exception) -> str:
    """How to fix a norm whose default options do not fit the backbone (group's 32 groups)."""
    if norm.name == "group" and "groups" not in norm.options and "group_size" not in norm.options:
        return (
            "; give group norm options that fit, e.g. 'group(groups=8)' or "
            "{name: group, options: {groups: 8}}"
        )
    return ""


def _batch_sizes(config: Any, info: Any) -> list[str]:
    """Batch sizes against the dataset's splits; outliers(k) needs a test batch larger than k."""
    ev, problems = config.eval, []
    if info is not None:
        from normzoo.data import fit_size

        n_fit = fit_size(info, config.data.val_fraction)
        problems += [
            f"train batch size {b} is larger than the training split ({n_fit})"
            for b in config.train.batch_sizes
            if b > n_fit
        ]
        problems += [
            f"test batch size {b} is larger than the test set ({info.test_size})"
            for b in ev.test_batch_sizes
            if b > info.test_size
        ]
    for composition in ev.compositions:
        if composition.name == "outliers" and max(ev.test_batch_sizes) <= composition.k:
            problems.append(
                f"eval.compositions outliers(k={composition.k}) needs a test batch size >"
                f" {composition.k}; largest is {max(ev.test_batch_sizes)}"
            )
    return problems


def _execution(config: Any) -> list[str]:
    """The executor's optional dependency and options; DDP splits every train batch evenly."""
    ex, problems = config.execution, []
    if ex.executor == "submitit" and importlib.util.find_spec("submitit") is None:
        problems.append(
            "execution.executor=submitit needs the optional dependency:"
            " pip install 'normzoo[cluster]'"
        )
    elif ex.executor == "submitit":
        problems.extend(check_submitit_options(ex.submitit))
    if ex.ddp_devices > 1:
        odd = [b for b in config.train.batch_sizes if b % ex.ddp_devices]
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
        if config.data.dataset.partition(":")[0] in normzoo.data.SOURCES:
            # every image decoded once (cached by the files' sizes and times), so an unreadable
            # one stops the grid here, not a run halfway
            normzoo.data.load(config.data.dataset, config.data.root, **config.data.options)
    except (OSError, ValueError, TypeError) as error:
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
    if config.data.dataset.startswith("torchvision:"):
        from normzoo.data.sources import download_source

        download_source(
            config.data.dataset.partition(":")[2], config.data.root, config.data.options
        )
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
