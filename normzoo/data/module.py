"""``NormzooDataModule``: one set of arguments -> train/val/test loaders for any dataset.

Images stay uint8 in memory, or on disk in a lazy `ImageStore` (the sources users bring: decoded a
batch at a time, in the DataLoader's workers), and become normalized float32 per batch (the dataset
indexes a whole batch at once, so there is no per-sample collate). Every random choice (validation
split, train order, test corruption, test batch composition) comes from generators seeded by
``seed``, so runs of different norms with the same seed see the same data in the same order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import lightning.pytorch as pl
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler

from normzoo.data.corruptions import CORRUPTIONS, corrupt
from normzoo.data.datasets import ImageSplits, dataset_key, load
from normzoo.data.files import CIFAR10C_CORRUPTIONS, load_cifar10c
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
from normzoo.data.stores import ImageStore, take

CORRUPTION_SOURCES = ("generated", "cifar10c")


def image_seed(seed: int, index: int) -> int:
    """The corruption seed of test image ``index`` of a lazy store under condition ``seed``."""
    return seed * 1_000_003 + index


class _EachImage:
    """Corrupts a lazy test batch image by image, each by (seed, its index in the test set), so
    an image's corruption is the same at every test batch size and in every batch order."""

    def __init__(self, corruption: str, severity: int, seed: int, num_images: int) -> None:
        self.corruption, self.severity, self.seed = corruption, severity, seed
        # mixed batches: image i's corruption, as `corrupt_mixed` assigns them over the test set
        self.ids = mixed_corruption_ids(num_images, seed) if corruption == "mixed" else None

    def __call__(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        for row, i in enumerate(index.tolist()):
            name = self.corruption if self.ids is None else CORRUPTIONS[int(self.ids[i])]
            out[row : row + 1] = corrupt(
                x[row : row + 1], name, self.severity, image_seed(self.seed, i)
            )
        return out


class _Batches(Dataset):
    """Item ``indices`` (a list from a batch sampler) -> one normalized float32 batch ``(x, y)``.

    ``images`` is a tensor or a lazy `ImageStore` (decoded here, per batch); ``corruption``
    (lazy test sets only) corrupts each batch in [0, 1] before normalization."""

    def __init__(
        self, images, labels: torch.Tensor, mean, std, corruption: _EachImage | None = None
    ) -> None:
        self.images, self.labels, self.corruption = images, labels, corruption
        shape = (1, len(mean), 1, 1)
        self.mean = torch.tensor(mean, dtype=torch.float32).reshape(shape)
        self.std = torch.tensor(std, dtype=torch.float32).reshape(shape)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        x = take(self.images, index)
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        if self.corruption is not None:
            x = self.corruption(x, index)
        return (x - self.mean) / self.std, self.labels[index].clone()


class _FixedBatches(Dataset):
    """Precomputed index batches over a float tensor; optional outliers injected per batch."""

    def __init__(self, data: _Batches, batches: list[list[int]], outliers: int, seed: int) -> None:
        self.data, self.batches, self.outliers, self.seed = data, batches, outliers, seed

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.data[self.batches[b]]
        k = min(self.outliers, len(y) - 1)  # a short last batch keeps at least one real sample
        if k > 0:
            batch_seed = self.seed * 1_000_003 + b
            x = inject_outliers(x, y, k, batch_seed)
            y[outlier_positions(len(y), k, batch_seed)] = IGNORE_INDEX
        return x, y


class NormzooDataModule(pl.LightningDataModule):
    """Train/val/test loaders of one dataset, with train and test batch-composition shifts.

    Args:
        dataset: one of ``DATASETS``; ``root`` is where real datasets live on disk.
        train_batch_size: training batch size (the last partial train batch is dropped).
        train_composition: ``"iid"`` (shuffled), ``"label_skew"`` (``LabelSkewedBatchSampler``
            with ``train_alpha``; Dirichlet class mix per batch, 0 = one class per batch) or
            ``"classes"`` (``ClassGroupedBatchSampler``: ``train_classes`` classes per batch,
            ``train_batch_size // train_classes`` samples of each).
        val_fraction: share of the train images held out for validation (split by ``seed``).
        seed: fixes the split, the train order and nothing else.
        dataset_options: passed to ``normzoo.data.load`` (e.g. synthetic ``train_size``).
    """

    def __init__(
        self,
        dataset: str = "synthetic",
        root: str | os.PathLike | None = None,
        train_batch_size: int = 32,
        train_composition: str = "iid",
        train_alpha: float = 1.0,
        train_classes: int | None = None,
        val_fraction: float = 0.1,
        seed: int = 0,
        num_workers: int = 0,
        dataset_options: dict | None = None,
        val_batch_size: int = 256,
    ) -> None:
        super().__init__()
        dataset_key(dataset)  # raises for an unknown name
        if train_composition not in TRAIN_COMPOSITIONS:
            raise ValueError(
                f"train_composition={train_composition!r} not allowed; use {TRAIN_COMPOSITIONS}"
            )
        if not isinstance(train_batch_size, int) or train_batch_size < 1:
            raise ValueError(f"train_batch_size={train_batch_size!r}; pass a positive int")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction={val_fraction!r} not allowed; use 0 <= f < 1")
        if train_composition == "label_skew" and not train_alpha >= 0:
            raise ValueError(f"train_alpha={train_alpha!r} not allowed; use alpha >= 0")
        if train_composition == "classes" and (
            not isinstance(train_classes, int) or train_batch_size % max(train_classes, 1)
        ):
            raise ValueError(
                f"train_composition='classes' needs train_classes (k) dividing train_batch_size="
                f"{train_batch_size}, got {train_classes!r}"
            )
        self.dataset, self.root = dataset, root
        self.train_batch_size, self.val_batch_size = train_batch_size, val_batch_size
        self.train_composition, self.train_alpha = train_composition, train_alpha
        self.train_classes = train_classes
        self.val_fraction, self.seed, self.num_workers = val_fraction, seed, num_workers
        self.dataset_options = dict(dataset_options or {})
        self.splits: ImageSplits | None = None
        self._clean_test: torch.Tensor | None = None
        self._train_generator: torch.Generator | None = None  # of the i.i.d. train order
        self._restored_generator_state: torch.Tensor | None = None

    def setup(self, stage: str | None = None) -> None:
        """Load the dataset once and split validation off the train images by ``seed`` (a
        dataset with its own validation split, e.g. an ImageFolder's val/, keeps it instead)."""
        if self.splits is not None:
            return
        self.splits = load(self.dataset, self.root, **self.dataset_options)
        n = len(self.splits.train_labels)
        if self.splits.val_images is not None:
            self.train_index = torch.arange(n)
            self.val_index = torch.arange(0)
        else:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
            n_val = int(round(self.val_fraction * n))
            self.val_index = order[:n_val].sort().values
            self.train_index = order[n_val:].sort().values
        if len(self.train_index) < self.train_batch_size:
            raise ValueError(
                f"train_batch_size={self.train_batch_size} exceeds the {len(self.train_index)} "
                "training images; use a smaller batch or a larger dataset"
            )

    def _splits(self) -> ImageSplits:
        self.setup()
        return self.splits

    @property
    def num_classes(self) -> int:
        return self._splits().num_classes

    @property
    def in_channels(self) -> int:
        return int(self._splits().train_images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self._splits().train_images.shape[-1])

    def _loader(self, data: Dataset, sampler: Sampler | None) -> DataLoader:
        return DataLoader(
            data,
            batch_size=None,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled (or label-skewed) train batches; order depends only on ``seed``."""
        s = self._splits()
        data = _Batches(
            s.train_images[self.train_index], s.train_labels[self.train_index], s.mean, s.std
        )
        if self.train_composition == "label_skew":
            sampler = LabelSkewedBatchSampler(
                data.labels, self.train_batch_size, self.train_alpha, self.seed, drop_last=True
            )
        elif self.train_composition == "classes":
            sampler = ClassGroupedBatchSampler(
                data.labels, self.train_batch_size, self.train_classes, self.seed
            )
        else:
            # one generator for the whole fit: epoch e's order continues where epoch e-1's ended
            generator = torch.Generator().manual_seed(self.seed)
            if self._restored_generator_state is not None:  # resuming a fit (load_state_dict)
                generator.set_state(self._restored_generator_state)
                self._restored_generator_state = None
            self._train_generator = generator
            sampler = BatchSampler(
                RandomSampler(range(len(data)), generator=generator),
                self.train_batch_size,
                drop_last=True,
            )
        return self._loader(data, sampler)

    def state_dict(self) -> dict:
        """What a resumed fit needs to continue the train order exactly (Lightning saves it in
        its checkpoints): the i.i.d. sampler's generator state. The skewed samplers need
        nothing, their order is a function of (seed, epoch) and Lightning sets the epoch."""
        if self._train_generator is None:
            return {}
        return {"train_generator": self._train_generator.get_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        """Continue from a `state_dict`: the next ``train_dataloader`` resumes its order."""
        self._restored_generator_state = state_dict.get("train_generator")

    def val_dataloader(self) -> DataLoader:
        """Sequential batches of the held-out validation images."""
        s = self._splits()
        if s.val_images is not None:
            data = _Batches(s.val_images, s.val_labels, s.mean, s.std)
        else:
            data = _Batches(
                s.train_images[self.val_index], s.train_labels[self.val_index], s.mean, s.std
            )
        return self._loader(data, BatchSampler(range(len(data)), self.val_batch_size, False))

    def test_dataloader(self) -> DataLoader:
        """Clean i.i.d. test batches of ``val_batch_size`` (Lightning's ``trainer.test`` hook)."""
        return self.test_loader(self.val_batch_size)

    def test_loader(
        self,
        batch_size: int,
        corruption: str = "none",
        severity: int = 0,
        composition: str = "iid",
        alpha: float | None = None,
        outliers: int = 0,
        seed: int = 0,
        source: str = "generated",
        source_root: str | os.PathLike | None = None,
    ) -> DataLoader:
        """Test batches under a corruption and a batch composition; every test image once.

        ``source="generated"`` corrupts the test set on the fly (once per call, by ``seed``);
        ``source="cifar10c"`` reads the corruption's images and labels of ``severity`` from the
        CIFAR-10-C files under ``source_root`` (default: the dataset's ``root``; Hendrycks &
        Dietterich 2019). A lazy test set (an `ImageStore`) is corrupted per batch as it is
        decoded, each image by ``(seed, its index)`` (`image_seed`), so the corruption of an
        image does not depend on the test batch size; the constants are those of the images'
        resolution either way (``normzoo.data.corruptions.severity_params``). Images are
        normalized with the train statistics and batched the same way. Compositions: ``"iid"``
        sequential batches (the last, partial one kept);
        ``"label_skew"`` Dirichlet(``alpha``) class mix per batch; ``"outliers"`` sequential
        batches with ``outliers`` samples per batch replaced by far-OOD noise and labelled
        ``IGNORE_INDEX`` (-100); ``"mixed_corruption"`` every sample of a batch under a different
        corruption at ``severity`` (``corruption`` "none" or "mixed"; generated only).
        """
        self._check_test_args(
            batch_size, corruption, severity, composition, alpha, outliers, source
        )
        s = self._splits()
        if isinstance(s.test_images, ImageStore):
            if source == "cifar10c":
                raise ValueError("source='cifar10c' needs the cifar10 dataset; use 'generated'")
            labels, n = s.test_labels, len(s.test_labels)
            name = "mixed" if composition == "mixed_corruption" else corruption
            each = None if name == "none" or severity == 0 else _EachImage(name, severity, seed, n)
            data = _Batches(s.test_images, labels, s.mean, s.std, each)
        elif source == "cifar10c" and corruption != "none":
            root = self.root if source_root is None else source_root
            images, labels = load_cifar10c(root, corruption, severity)
            data = _Batches(images, labels, s.mean, s.std)
        else:
            if self._clean_test is None:
                self._clean_test = s.test_images.float() / 255
            labels = s.test_labels
            if composition == "mixed_corruption":
                images = corrupt_mixed(self._clean_test, severity, seed)
            else:
                images = corrupt(self._clean_test, corruption, severity, seed)
            data = _Batches(images, labels, s.mean, s.std)
        n = len(labels)
        if composition == "label_skew":
            batches = list(LabelSkewedBatchSampler(labels, batch_size, alpha, seed))
        else:
            batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
        return self._loader(_FixedBatches(data, batches, outliers, seed), None)

    @staticmethod
    def _check_test_args(
        batch_size, corruption, severity, composition, alpha, outliers, source
    ) -> None:
        if source not in CORRUPTION_SOURCES:
            raise ValueError(f"source={source!r} unknown; use one of {CORRUPTION_SOURCES}")
        if source == "cifar10c" and composition == "mixed_corruption":
            raise ValueError("composition='mixed_corruption' needs source='generated'")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} not allowed; pass a positive int")
        if composition not in TEST_COMPOSITIONS:
            raise ValueError(f"composition={composition!r} unknown; use one of {TEST_COMPOSITIONS}")
        if composition == "mixed_corruption":
            if corruption not in ("none", "mixed") or severity not in (1, 2, 3, 4, 5):
                raise ValueError(
                    "composition='mixed_corruption' picks the corruptions itself: pass "
                    f"corruption='mixed' (got {corruption!r}) and severity 1..5 (got {severity!r})"
                )
        elif source == "cifar10c" and corruption not in ("none", *CIFAR10C_CORRUPTIONS):
            raise ValueError(
                f"corruption {corruption!r} is not a CIFAR-10-C file; use 'none' or one of "
                f"{CIFAR10C_CORRUPTIONS}"
            )
        elif corruption != "none" and corruption not in CORRUPTIONS:
            raise ValueError(
                f"unknown corruption {corruption!r}; use 'none' or one of {CORRUPTIONS}"
            )
        if composition == "label_skew" and (alpha is None or not alpha >= 0):
            raise ValueError(f"composition='label_skew' needs alpha >= 0, got alpha={alpha!r}")
        if composition == "outliers":
            if not isinstance(outliers, int) or not 1 <= outliers < batch_size:
                raise ValueError(
                    f"outliers={outliers!r} not allowed with batch_size={batch_size}; "
                    f"use 1 <= outliers < batch_size (so a batch keeps real samples)"
                )
        elif outliers:
            raise ValueError(
                f"outliers={outliers} needs composition='outliers', got {composition!r}"
            )
