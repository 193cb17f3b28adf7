"""Dataset registry: one ``load(name)`` returning uint8 tensors and their channel statistics."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from normzoo.data.files import load_cifar10, load_mnist
from normzoo.data.synthetic import load_synthetic

DATASETS = ("synthetic", "cifar10", "mnist")
_SYNTHETIC_OPTIONS = (
    "difficulty",
    "train_size",
    "test_size",
    "image_size",
    "seed",
    "num_classes",
    "cache",
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

    Options: synthetic takes ``train_size=20000, test_size=5000, image_size=32, seed=0,
    num_classes=10, cache=True, difficulty="hard"`` ("easy": no distractor, little clutter
    and noise — the quick benchmark's preset); cifar10 and mnist take none.
    """
    key = name.lower().replace("-", "").replace("_", "")
    if key == "synthetic":
        unknown = sorted(set(opts) - set(_SYNTHETIC_OPTIONS))
        if unknown:
            raise ValueError(f"unknown synthetic options {unknown}; allowed {_SYNTHETIC_OPTIONS}")
        train_x, train_y, test_x, test_y = load_synthetic(**opts)
        num_classes = opts.get("num_classes", 10)
    elif key in ("cifar10", "mnist"):
        if opts:
            raise ValueError(f"dataset {name!r} takes no options, got {sorted(opts)}")
        reader = load_cifar10 if key == "cifar10" else load_mnist
        train_x, train_y, test_x, test_y = reader(root)
        num_classes = 10
    else:
        raise ValueError(f"unknown dataset {name!r}; known datasets are {DATASETS}")
    mean, std = channel_stats(train_x)
    return ImageSplits(key, train_x, train_y, test_x, test_y, num_classes, mean, std)
