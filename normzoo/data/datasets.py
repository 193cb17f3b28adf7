"""Dataset registry: one ``load(name)`` returning uint8 images and their channel statistics.

The built-in datasets (``synthetic``, ``cifar10``, ``mnist``) load whole into memory as uint8
tensors; the sources users bring (``imagefolder``, ``torchvision:<Class>``,
``datamodule:<package.module>:<Class>``, see ``normzoo.data.sources``) load as lazy
`ImageStore` splits that decode a batch at a time.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from normzoo.data.files import load_cifar10, load_mnist
from normzoo.data.stores import ImageStore
from normzoo.data.synthetic import CLASS_NAMES, DIFFICULTIES, load_synthetic

DATASETS = ("synthetic", "cifar10", "mnist")
# Dataset names users complete: ``imagefolder``, ``torchvision:<Class>``, ``datamodule:<path>``.
SOURCES = ("imagefolder", "torchvision", "datamodule")
DATASET_WORDS = (
    "synthetic, cifar10, mnist, imagefolder, torchvision:ClassName (e.g. torchvision:CIFAR100) or "
    "datamodule:package.module:ClassName (a LightningDataModule)"
)


@dataclass(frozen=True)
class DatasetInfo:
    """What is known of a dataset without loading it: image shape, split sizes, classes."""

    name: str
    channels: int
    image_size: int
    train_size: int  # the train split, validation share included (unless val_size is given)
    test_size: int
    num_classes: int
    val_size: int | None = None  # a separate validation split (an ImageFolder's val/ folder)


def fit_size(info: DatasetInfo, val_fraction: float) -> int:
    """Training images a run fits on: the train split less its validation share, or all of it
    when the dataset has its own validation split."""
    if info.val_size is not None:
        return info.train_size
    return int(info.train_size * (1 - val_fraction))


@dataclass(frozen=True)
class DatasetOption:
    """One option of ``load(name, **options)``: its default and the values it accepts."""

    default: Any
    allowed: str  # the accepted values, in words, for error messages
    accepts: Callable[[Any], bool]


def _int_at_least(low: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _numbers(v: Any) -> bool:
    return (
        isinstance(v, (list, tuple))
        and len(v) in (1, 3)
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
    )


def _fraction(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1)


# Options shared by the sources users bring (all decode lazily, see normzoo.data.sources).
_STATS_OPTIONS = {
    "mean": DatasetOption(None, "a list of per-channel numbers (with std)", _numbers),
    "std": DatasetOption(
        None, "a list of per-channel numbers > 0 (with mean)", lambda v: _numbers(v) and min(v) > 0
    ),
    "stats_images": DatasetOption(
        None,
        "an integer >= 1 or null (all train images)",
        lambda v: v is None or _int_at_least(1)(v),
    ),
    "seed": DatasetOption(0, "an integer >= 0", _int_at_least(0)),
}
_PIXEL_OPTIONS = {
    "image_size": DatasetOption(32, "an integer >= 8 (pixels per side)", _int_at_least(8)),
    "channels": DatasetOption(3, "1 (grayscale) or 3 (RGB)", lambda v: v in (1, 3)),
    "test_fraction": DatasetOption(None, "a number in (0, 1) or null", _fraction),
}


def _mapping(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) for k in v)


# The one table of datasets: fixed facts of the real ones, options (with defaults) of each.
_REAL = {
    "cifar10": DatasetInfo("cifar10", 3, 32, 50_000, 10_000, 10),
    "mnist": DatasetInfo("mnist", 1, 28, 60_000, 10_000, 10),
}
DATASET_OPTIONS: dict[str, dict[str, DatasetOption]] = {
    "synthetic": {
        "train_size": DatasetOption(20_000, "an integer >= 1", _int_at_least(1)),
        "test_size": DatasetOption(5_000, "an integer >= 1", _int_at_least(1)),
        "image_size": DatasetOption(32, "an integer >= 8 (pixels per side)", _int_at_least(8)),
        "seed": DatasetOption(0, "an integer >= 0", _int_at_least(0)),
        "num_classes": DatasetOption(
            len(CLASS_NAMES),
            f"an integer in 1..{len(CLASS_NAMES)}",
            lambda v: _int_at_least(1)(v) and v <= len(CLASS_NAMES),
        ),
        "cache": DatasetOption(True, "true or false", lambda v: isinstance(v, bool)),
        "difficulty": DatasetOption(
            "hard", f"one of {', '.join(sorted(DIFFICULTIES))}", lambda v: v in DIFFICULTIES
        ),
    },
    "cifar10": {},
    "mnist": {},
    "imagefolder": {
        **_PIXEL_OPTIONS,
        **_STATS_OPTIONS,
        "on_bad_image": DatasetOption("error", "error or skip", lambda v: v in ("error", "skip")),
    },
    "torchvision": {
        **_PIXEL_OPTIONS,
        **_STATS_OPTIONS,
        "init_args": DatasetOption({}, "a mapping of constructor arguments", _mapping),
    },
    "datamodule": {
        **_STATS_OPTIONS,
        "init_args": DatasetOption({}, "a mapping of constructor arguments", _mapping),
    },
}


def dataset_key(name: str) -> str:
    """The canonical name of dataset ``name``: a built-in (case, '-' and '_' ignored),
    ``imagefolder``, ``torchvision:<Class>`` or ``datamodule:<package.module>:<Class>`` (the class
    as written); ValueError if it is none of them. Nothing is imported or read."""
    text = str(name).strip()
    prefix, colon, rest = text.partition(":")
    family = prefix.lower().replace("-", "").replace("_", "")
    if colon and family in ("torchvision", "datamodule") and rest:
        if family == "datamodule" and rest.count(":") != 1:
            raise ValueError(
                f"dataset {name!r}: write a LightningDataModule as "
                "datamodule:package.module:ClassName"
            )
        return f"{family}:{rest}"
    if not colon and family in (*DATASETS, "imagefolder"):
        return family
    hint = difflib.get_close_matches(family, [*DATASETS, *SOURCES], n=1, cutoff=0.5)
    did_you = f" (did you mean '{hint[0]}'?)" if hint else ""
    raise ValueError(f"unknown dataset {name!r}{did_you}; use {DATASET_WORDS}")


def dataset_family(name: str) -> str:
    """The options table ``name`` uses: a built-in name, or one of ``SOURCES``."""
    return dataset_key(name).partition(":")[0]


def check_options(name: str, options: dict) -> list[str]:
    """Problems of ``options`` for dataset ``name`` (empty when ``load`` accepts them)."""
    table = DATASET_OPTIONS[dataset_family(name)]
    problems = []
    unknown = [key for key in options if key not in table]
    if unknown:
        accepted = ", ".join(table) if table else "none (it takes no options)"
        hint = difflib.get_close_matches(str(unknown[0]), list(table), n=1, cutoff=0.5)
        did_you = f" (did you mean '{hint[0]}'?)" if hint else ""
        problems.append(f"unknown {name} options {unknown}{did_you}; accepted: {accepted}")
    for key, value in options.items():
        if key in table and not table[key].accepts(value):
            problems.append(f"{name} option {key}={value!r} not allowed; use {table[key].allowed}")
    if ("mean" in options) != ("std" in options):
        problems.append(f"{name} options mean and std go together; give both or neither")
    elif "mean" in options and not problems:
        lengths = {len(options["mean"]), len(options["std"])}
        channels = options.get("channels", 3)
        if dataset_family(name) != "datamodule" and lengths != {channels}:
            problems.append(
                f"{name} options mean/std need {channels} values (one per channel), got "
                f"{len(options['mean'])} and {len(options['std'])}"
            )
    return problems


def resolved_options(name: str, options: dict) -> dict:
    """``options`` with the defaults of dataset ``name`` filled in."""
    return {k: o.default for k, o in DATASET_OPTIONS[dataset_family(name)].items()} | options


def _load_source(key: str, root, options: dict):
    """A user's dataset (see ``normzoo.data.sources``): its lazy splits and train statistics."""
    from normzoo.data import sources

    family, _, rest = key.partition(":")
    options = resolved_options(key, options)
    if family == "imagefolder":
        return sources.load_imagefolder(root, options)
    if family == "torchvision":
        return sources.load_torchvision(rest, root, options)
    return sources.load_datamodule(rest, options)


def dataset_info(
    name: str, options: dict | None = None, root: str | os.PathLike | None = None
) -> DatasetInfo:
    """Shape, sizes and classes of dataset ``name`` with ``options``, without loading it.

    An ImageFolder tree is listed (no image decoded), a torchvision dataset or a datamodule is
    built (its labels read); each raises a one-line error naming what is wrong (missing root,
    empty class folder, classes differing between splits, unknown class, failing import, no
    labels)."""
    key = dataset_key(name)
    options = dict(options or {})
    problems = check_options(key, options)
    if problems:
        raise ValueError("; ".join(problems))
    if key in _REAL:
        return _REAL[key]
    if dataset_family(key) in SOURCES:
        return _source_info(key, root, options)
    resolved = {k: o.default for k, o in DATASET_OPTIONS[key].items()} | options
    return DatasetInfo(
        key,
        3,
        resolved["image_size"],
        resolved["train_size"],
        resolved["test_size"],
        resolved["num_classes"],
    )


def _source_info(key: str, root, options: dict) -> DatasetInfo:
    from normzoo.data import sources

    family, _, rest = key.partition(":")
    options = resolved_options(key, options)
    if family == "imagefolder":
        listing = sources.list_folder(root, options["test_fraction"], options["seed"])
        val_size = len(listing.val[1]) if listing.val else None
        sizes = (len(listing.train[1]), len(listing.test[1]), len(listing.classes))
        return DatasetInfo(key, options["channels"], options["image_size"], *sizes, val_size)
    source, _, _ = _load_source(key, root, {**options, "mean": (0.0,), "std": (1.0,)})
    _, channels, height, _ = source.train.shape
    val_size = None if source.val is None else len(source.val)
    sizes = (len(source.train_labels), len(source.test_labels), len(source.classes))
    return DatasetInfo(key, channels, height, *sizes, val_size)


@dataclass(frozen=True)
class ImageSplits:
    """Train (and val) and test images of one dataset: uint8 (N, C, H, W) tensors in memory, or
    lazy `ImageStore` splits that decode on demand (the sources users bring)."""

    name: str
    train_images: torch.Tensor | ImageStore
    train_labels: torch.Tensor
    test_images: torch.Tensor | ImageStore
    test_labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]  # per-channel mean of the train images scaled to [0, 1]
    std: tuple[float, ...]
    val_images: torch.Tensor | ImageStore | None = None  # a separate validation split
    val_labels: torch.Tensor | None = None


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 images scaled to [0, 1], exactly."""
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 (N, C, H, W), got {images.dtype}")
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for channel in range(images.shape[1]):
        counts = torch.bincount(images[:, channel].reshape(-1), minlength=256).double()
        mean = (counts * values).sum() / counts.sum()
        var = (counts * (values - mean) ** 2).sum() / counts.sum()
        means.append(float(mean))
        stds.append(float(var.clamp_min(1e-12).sqrt()))
    return tuple(means), tuple(stds)


def load(name: str, root: str | os.PathLike | None = None, **opts) -> ImageSplits:
    """Load dataset ``name`` (one of ``DATASETS``); real datasets are read from ``root``.

    Options are those of ``DATASET_OPTIONS[name]``: synthetic takes ``train_size=20000,
    test_size=5000, image_size=32, seed=0, num_classes=10, cache=True, difficulty="hard"``
    ("easy": no distractor, little clutter and noise — the quick benchmark's preset); cifar10
    and mnist take none. ``imagefolder``, ``torchvision:<Class>`` and ``datamodule:<path>``
    load lazily (``normzoo.data.sources``); ``root`` is where their files are.
    """
    key = dataset_key(name)
    problems = check_options(key, opts)
    if problems:
        raise ValueError("; ".join(problems))
    if dataset_family(key) in SOURCES:
        source, mean, std = _load_source(key, root, opts)
        return ImageSplits(
            key,
            source.train,
            source.train_labels,
            source.test,
            source.test_labels,
            len(source.classes),
            mean,
            std,
            source.val,
            source.val_labels,
        )
    if key == "synthetic":
        resolved = {k: o.default for k, o in DATASET_OPTIONS[key].items()} | opts
        train_x, train_y, test_x, test_y = load_synthetic(**resolved)
        num_classes = resolved["num_classes"]
    else:
        reader = load_cifar10 if key == "cifar10" else load_mnist
        train_x, train_y, test_x, test_y = reader(root)
        num_classes = _REAL[key].num_classes
    mean, std = channel_stats(train_x)
    return ImageSplits(key, train_x, train_y, test_x, test_y, num_classes, mean, std)
