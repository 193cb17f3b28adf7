"""Batch-composition shifts: label-skewed batches, injected outliers, mixed-corruption batches.

Batch-dependent normalization (batch norm and its relatives) computes statistics over the batch,
so *which* samples share a batch changes each sample's output. These shifts change the batch
composition without changing the data: label skew (a Dirichlet class mix per batch, down to one
class per batch), class-grouped batches (k classes with m samples each: the non-i.i.d. training
batches of Ioffe 2017, Batch Renormalization, Sec. 4.3, k = 16, m = 2), outliers (k far
out-of-distribution inputs per batch) and mixed corruptions (each sample
of a batch under a different corruption).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from normzoo.data.corruptions import CORRUPTIONS, corrupt

IGNORE_INDEX = -100  # torch.nn.functional.cross_entropy's default ignore_index

# The batch compositions this module implements, by name (the benchmark's vocabulary re-exports
# them): ``iid``, ``label_skew`` (Dirichlet class mix), ``classes`` (k classes, equal counts),
# ``outliers`` (k far-OOD inputs per batch), ``mixed_corruption`` (a corruption per sample).
TRAIN_COMPOSITIONS = ("iid", "label_skew", "classes")
TEST_COMPOSITIONS = ("iid", "label_skew", "outliers", "mixed_corruption")


class LabelSkewedBatchSampler(Sampler[list[int]]):
    """Batches whose class mix is drawn per batch from Dirichlet(alpha) over the classes.

    Small ``alpha`` gives batches dominated by few classes; ``alpha=0`` gives one class per batch
    (the class chosen with probability proportional to its remaining samples). Every index is
    used exactly once per epoch: a batch whose drawn classes run out is filled from the others,
    and with ``alpha=0`` each class ends in one shorter batch unless ``drop_last``. The order
    depends only on ``seed`` and the epoch (``set_epoch``, called by Lightning; otherwise each
    new iteration advances the epoch).
    """

    def __init__(
        self,
        labels: torch.Tensor | Sequence[int],
        batch_size: int,
        alpha: float,
        seed: int,
        drop_last: bool = False,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} not allowed; pass a positive int")
        if alpha is None or not alpha >= 0:
            raise ValueError(f"alpha={alpha!r} not allowed; pass alpha >= 0 (0 = one class/batch)")
        self.labels = np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64)
        if self.labels.ndim != 1 or self.labels.size == 0:
            raise ValueError(f"labels must be a non-empty 1-D sequence, got {self.labels.shape}")
        self.batch_size = batch_size
        self.alpha = float(alpha)
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self._epoch_set = False
        self.classes, self.counts = np.unique(self.labels, return_counts=True)

    def set_epoch(self, epoch: int) -> None:
        """Fix the epoch whose order the next iteration yields."""
        self.epoch = epoch
        self._epoch_set = True

    def __len__(self) -> int:
        if self.alpha == 0:
            per_class = self.counts // self.batch_size
            if not self.drop_last:
                per_class = -(-self.counts // self.batch_size)
            return int(per_class.sum())
        full, rest = divmod(self.labels.size, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        if not self._epoch_set:
            self.epoch += 1
        self._epoch_set = False
        pools = [rng.permutation(np.flatnonzero(self.labels == c)).tolist() for c in self.classes]
        batches = self._single_class(pools, rng) if self.alpha == 0 else self._mixed(pools, rng)
        for batch in batches:
            if len(batch) == self.batch_size or not self.drop_last:
                yield batch

    def _single_class(self, pools: list[list[int]], rng: np.random.Generator) -> list[list[int]]:
        size = self.batch_size
        batches = [pool[i : i + size] for pool in pools for i in range(0, len(pool), size)]
        order = rng.permutation(len(batches))
        return [batches[i] for i in order]

    def _mixed(self, pools: list[list[int]], rng: np.random.Generator) -> list[list[int]]:
        remaining = np.array([len(pool) for pool in pools])
        batches = []
        while remaining.sum() > 0:
            alive = remaining > 0
            mix = np.zeros(len(pools))
            draw = rng.dirichlet(np.full(alive.sum(), self.alpha))
            if not np.isfinite(draw).all():  # underflow at tiny alpha: the limit is one class
                draw = np.eye(alive.sum())[rng.integers(alive.sum())]
            mix[alive] = draw
            want = rng.multinomial(min(self.batch_size, remaining.sum()), mix)
            take = np.minimum(want, remaining)
            # classes that ran out: fill the gap from the others, largest share of the mix first
            for c in np.argsort(-mix, kind="stable"):
                gap = min(self.batch_size, remaining.sum()) - take.sum()
                if gap <= 0:
                    break
                take[c] += min(gap, remaining[c] - take[c])
            batch = []
            for c in np.flatnonzero(take):
                start = len(pools[c]) - remaining[c]
                batch.extend(pools[c][start : start + take[c]])
            remaining -= take
            batches.append([batch[i] for i in rng.permutation(len(batch))])
        return batches


class ClassGroupedBatchSampler(Sampler[list[int]]):
    """Batches of ``k`` distinct classes with exactly ``batch_size // k`` samples of each.

    Ioffe 2017 (Batch Renormalization, Sec. 4.3) trains on such non-i.i.d. minibatches: 32
    examples from 16 labels, 2 per label. Each batch picks its ``k`` classes without replacement,
    with probability proportional to the samples a class has left, among the classes that still
    have ``m = batch_size // k``; the epoch ends when fewer than ``k`` classes can fill a batch
    (those leftovers are not used). No index repeats within an epoch; the order depends only on
    ``seed`` and the epoch, as in ``LabelSkewedBatchSampler``.
    """

    def __init__(
        self, labels: torch.Tensor | Sequence[int], batch_size: int, k: int, seed: int
    ) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k={k!r} classes per batch not allowed; pass an integer >= 1")
        if not isinstance(batch_size, int) or batch_size < k or batch_size % k:
            raise ValueError(
                f"batch_size={batch_size!r} must be a multiple of k={k} (k classes with "
                f"batch_size // k samples each); use e.g. batch_size={2 * k}"
            )
        self.labels = np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64)
        if self.labels.ndim != 1 or self.labels.size == 0:
            raise ValueError(f"labels must be a non-empty 1-D sequence, got {self.labels.shape}")
        self.classes, self.counts = np.unique(self.labels, return_counts=True)
        self.per_class = batch_size // k
        if (self.counts >= self.per_class).sum() < k:
            raise ValueError(
                f"k={k} classes with {self.per_class} samples each: only "
                f"{int((self.counts >= self.per_class).sum())} classes have that many samples; "
                f"use k <= {len(self.classes)}"
            )
        self.batch_size, self.k, self.seed = batch_size, k, seed
        self.epoch = 0
        self._epoch_set = False

    def set_epoch(self, epoch: int) -> None:
        """Fix the epoch whose order the next iteration yields."""
        self.epoch = epoch
        self._epoch_set = True

    def _plan(self, rng: np.random.Generator) -> list[np.ndarray]:
        """The classes (indices into ``self.classes``) of each batch of one epoch."""
        remaining = self.counts.copy()
        plan = []
        while True:
            eligible = np.flatnonzero(remaining >= self.per_class)
            if len(eligible) < self.k:
                return plan
            weights = remaining[eligible] / remaining[eligible].sum()
            chosen = rng.choice(eligible, size=self.k, replace=False, p=weights)
            remaining[chosen] -= self.per_class
            plan.append(chosen)

    def __len__(self) -> int:
        """Batches of the epoch the next iteration yields (it varies slightly by epoch)."""
        return len(self._plan(np.random.default_rng([self.seed, self.epoch, 1])))

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch
        if not self._epoch_set:
            self.epoch += 1
        self._epoch_set = False
        rng = np.random.default_rng([self.seed, epoch])
        pools = [rng.permutation(np.flatnonzero(self.labels == c)) for c in self.classes]
        taken = np.zeros(len(pools), dtype=np.int64)
        for chosen in self._plan(np.random.default_rng([self.seed, epoch, 1])):
            batch = []
            for c in chosen:
                batch.extend(pools[c][taken[c] : taken[c] + self.per_class].tolist())
                taken[c] += self.per_class
            yield [batch[i] for i in rng.permutation(len(batch))]


def outlier_positions(batch_size: int, k: int, seed: int) -> torch.Tensor:
    """The ``k`` positions (sorted) of a batch that ``inject_outliers`` replaces for ``seed``."""
    if not isinstance(k, int) or not 0 <= k <= batch_size:
        raise ValueError(
            f"k={k!r} outliers not allowed in a batch of {batch_size}; use 0..{batch_size}"
        )
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(batch_size, generator=g)[:k].sort().values


def inject_outliers(
    images: torch.Tensor, labels: torch.Tensor | None, k: int, seed: int, scale: float = 10.0
) -> torch.Tensor:
    """Replace ``k`` samples of a batch by far out-of-distribution inputs: ``scale * N(0, 1)``.

    The batch is taken as normalized (unit variance per channel), so ``scale=10`` puts the outliers
    ten standard deviations out. Positions come from ``outlier_positions(len(images), k, seed)``;
    ``labels``, if given, must match the batch length (the labels of the replaced samples no
    longer describe them: the data module marks them ``IGNORE_INDEX``).
    """
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"labels has {len(labels)} entries for a batch of {len(images)} images")
    positions = outlier_positions(len(images), k, seed)
    g = torch.Generator().manual_seed(seed + 1)
    out = images.clone()
    noise = torch.randn((k, *images.shape[1:]), generator=g) * scale
    out[positions] = noise.to(images.device, images.dtype)
    return out


def mixed_corruption_ids(num_images: int, seed: int, num_corruptions: int = 15) -> torch.Tensor:
    """Corruption index per sample: consecutive samples cycle through a seeded order of them.

    Any run of up to ``num_corruptions`` consecutive samples (e.g. a sequential test batch of up to
    15) has all-different corruptions; longer batches have them balanced.
    """
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(num_corruptions, generator=g)
    return order[torch.arange(num_images) % num_corruptions]


def corrupt_mixed(
    images: torch.Tensor,
    severity: int,
    seed: int = 0,
    corruptions: Sequence[str] = CORRUPTIONS,
) -> torch.Tensor:
    """Corrupt each sample with a different corruption (cycling, see ``mixed_corruption_ids``)."""
    if not corruptions:
        raise ValueError("corruptions is empty; pass at least one corruption name")
    ids = mixed_corruption_ids(len(images), seed, len(corruptions))
    out = images.clone()
    for i, name in enumerate(corruptions):
        rows = (ids == i).nonzero(as_tuple=True)[0]
        if rows.numel():
            out[rows] = corrupt(images[rows], name, severity, seed + 1 + i)
    return out
