"""Datasets (embedded synthetic + real on-disk loaders), corruptions, batch-composition shifts."""

from normzoo.data.corruptions import CORRUPTIONS, corrupt
from normzoo.data.datasets import DATASETS, ImageSplits, channel_stats, load
from normzoo.data.files import data_root, load_cifar10, load_cifar10c, load_mnist
from normzoo.data.module import TEST_COMPOSITIONS, TRAIN_COMPOSITIONS, NormzooDataModule
from normzoo.data.shifts import (
    IGNORE_INDEX,
    LabelSkewedBatchSampler,
    corrupt_mixed,
    inject_outliers,
    mixed_corruption_ids,
    outlier_positions,
)
from normzoo.data.synthetic import CLASS_NAMES as SYNTHETIC_CLASS_NAMES
from normzoo.data.synthetic import cache_dir

__all__ = [
    "CORRUPTIONS",
    "DATASETS",
    "IGNORE_INDEX",
    "SYNTHETIC_CLASS_NAMES",
    "TEST_COMPOSITIONS",
    "TRAIN_COMPOSITIONS",
    "ImageSplits",
    "LabelSkewedBatchSampler",
    "NormzooDataModule",
    "cache_dir",
    "channel_stats",
    "corrupt",
    "corrupt_mixed",
    "data_root",
    "inject_outliers",
    "load",
    "load_cifar10",
    "load_cifar10c",
    "load_mnist",
    "mixed_corruption_ids",
    "outlier_positions",
]
