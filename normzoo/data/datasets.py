"""Dataset registry: one ``load(name)`` returning uint8 tensors and their channel statistics."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from normzoo.data.files import load_cifar10, load_mnist
from normzoo.data.synthetic import CLASS_NAMES, DIFFICULTIES, load_synthetic

DATASETS = ("synthetic", "cifar10", "mnist")


@dataclass(frozen=True)
class DatasetInfo:
    """What is known of a dataset without loading it: image shape, split sizes, classes."""

    name: str
    channels: int
    image_size: int
    train_size: int  # the train split, validation share included
    test_size: int
    num_classes: int


@dataclass(frozen=True)
class DatasetOption:
    """One option of ``load(name, **options)``: its default and the values it accepts."""

    default: Any
    allowed: str  # the accepted values, in words, for error messages
    accepts: Callable[[Any], bool]


def _int_at_least(low: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


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
}


def dataset_key(name: str) -> str:
    """The table's key of ``name`` (case, '-' and '_' ignored); ValueError if unknown."""
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets are {', '.join(DATASETS)}")
    return key


def check_options(name: str, options: dict) -> list[str]:
    """Problems of ``options`` for dataset ``name`` (empty when ``load`` accepts them)."""
    table = DATASET_OPTIONS[dataset_key(name)]
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
    return problems


def dataset_info(name: str, options: dict | None = None) -> DatasetInfo:
    """Shape, sizes and classes of dataset ``name`` with ``options``, without loading it."""
    key = dataset_key(name)
    options = dict(options or {})
    problems = check_options(key, options)
    if problems:
        raise ValueError("; ".join(problems))
    if key in _REAL:
        return _REAL[key]
    resolved = {k: o.default for k, o in DATASET_OPTIONS[key].items()} | options
    return DatasetInfo(
        key,
        3,
        resolved["image_size"],
        resolved["train_size"],
        resolved["test_size"],
        resolved["num_classes"],
    )


@dataclass(frozen=True)
class ImageSplits:
    """Train and test images of one dataset, kept as uint8 (N, C, H, W) in memory."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]  # per-channel mean of the train images scaled to [0, 1]
    std: tuple[float, ...]


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
    and mnist take none.
    """
    key = dataset_key(name)
    problems = check_options(key, opts)
    if problems:
        raise ValueError("; ".join(problems))
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
