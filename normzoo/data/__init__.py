"""Datasets (embedded synthetic, real on-disk loaders, lazy sources users bring: ImageFolder,
torchvision classes, LightningDataModules), corruptions, batch-composition shifts.

Everything here is plain torch/numpy. ``NormzooDataModule`` (the Lightning face of these loaders,
in ``normzoo.data.module``) is imported on first use, so ``import normzoo.data`` does not import
Lightning.
"""

from normzoo.data.corruptions import CORRUPTIONS, corrupt
from normzoo.data.datasets import (
    DATASET_OPTIONS,
    DATASET_WORDS,
    DATASETS,
    SOURCES,
    DatasetInfo,
    ImageSplits,
    channel_stats,
    check_options,
    dataset_info,
    dataset_key,
    fit_size,
    load,
)
from normzoo.data.files import (
    CIFAR10C_CORRUPTIONS,
    check_files,
    data_root,
    load_cifar10,
    load_cifar10c,
    load_mnist,
)
from normzoo.data.shifts import (
    IGNORE_INDEX,
    TEST_COMPOSITIONS,
    TRAIN_COMPOSITIONS,
    ClassGroupedBatchSampler,
    LabelSkewedBatchSampler,
    corrupt_mixed,
    inject_outliers,
    mixed_corruption_ids,
    outlier_positions,
)
from normzoo.data.stores import ImageStore, stream_channel_stats, take
from normzoo.data.synthetic import CLASS_NAMES as SYNTHETIC_CLASS_NAMES
from normzoo.data.synthetic import cache_dir

__all__ = [
    "CIFAR10C_CORRUPTIONS",
    "CORRUPTIONS",
    "DATASETS",
    "DATASET_OPTIONS",
    "DATASET_WORDS",
    "IGNORE_INDEX",
    "SOURCES",
    "SYNTHETIC_CLASS_NAMES",
    "TEST_COMPOSITIONS",
    "TRAIN_COMPOSITIONS",
    "ClassGroupedBatchSampler",
    "DatasetInfo",
    "ImageSplits",
    "ImageStore",
    "LabelSkewedBatchSampler",
    "NormzooDataModule",
    "cache_dir",
    "channel_stats",
    "check_files",
    "check_options",
    "corrupt",
    "corrupt_mixed",
    "data_root",
    "dataset_info",
    "dataset_key",
    "fit_size",
    "inject_outliers",
    "load",
    "load_cifar10",
    "load_cifar10c",
    "load_mnist",
    "mixed_corruption_ids",
    "outlier_positions",
    "stream_channel_stats",
    "take",
]


def __getattr__(name: str):
    if name == "NormzooDataModule":  # the only name that needs Lightning
        from normzoo.data.module import NormzooDataModule

        return NormzooDataModule
    raise AttributeError(f"module 'normzoo.data' has no attribute {name!r}")
