import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from normzoo.data import (
    CORRUPTIONS,
    ClassGroupedBatchSampler,
    LabelSkewedBatchSampler,
    corrupt,
    corrupt_mixed,
    inject_outliers,
    mixed_corruption_ids,
    outlier_positions,
)


def _labels(n=400, classes=10, seed=0):
    return torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("alpha", [0.0, 0.05, 1.0, 1000.0])
def test_every_index_once_per_epoch(alpha):
    labels = _labels()
    sampler = LabelSkewedBatchSampler(labels, 32, alpha, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    flat = sorted(i for batch in batches for i in batch)
    assert flat == list(range(len(labels)))
    assert all(1 <= len(b) <= 32 for b in batches)


def test_alpha_zero_gives_single_class_batches():
    labels = _labels()
    batches = list(LabelSkewedBatchSampler(labels, 16, 0.0, seed=2))
    assert all(len(set(labels[b].tolist())) == 1 for b in batches)
    counts = torch.bincount(labels, minlength=10)
    assert len(batches) == int(sum(-(-c // 16) for c in counts.tolist()))


def test_skew_grows_as_alpha_shrinks():
    labels = _labels(2000)

    def mean_classes(alpha):
        batches = LabelSkewedBatchSampler(labels, 32, alpha, seed=3, drop_last=True)
        return np.mean([len(set(labels[b].tolist())) for b in batches])

    skewed, mixed, iid_like = mean_classes(0.1), mean_classes(1.0), mean_classes(1000.0)
    # 32 i.i.d. draws over 10 balanced classes cover 10 * (1 - 0.9**32) = 9.66 classes on average
    assert abs(iid_like - 9.66) < 0.4
    assert skewed < 4 < mixed < iid_like


def test_determinism_epochs_and_drop_last():
    labels = _labels()
    a = LabelSkewedBatchSampler(labels, 32, 0.5, seed=4)
    b = LabelSkewedBatchSampler(labels, 32, 0.5, seed=4)
    first = list(a)
    assert first == list(b)
    assert list(a) != first  # the next epoch has another order
    a.set_epoch(0)
    assert list(a) == first
    assert list(LabelSkewedBatchSampler(labels, 32, 0.5, seed=5)) != first
    full = list(LabelSkewedBatchSampler(labels, 32, 0.5, seed=4, drop_last=True))
    assert all(len(batch) == 32 for batch in full) and len(full) == len(labels) // 32


@settings(max_examples=40, deadline=None)
@given(
    labels=st.lists(st.integers(0, 5), min_size=1, max_size=120),
    batch_size=st.integers(1, 40),
    alpha=st.sampled_from([0.0, 0.01, 0.3, 5.0]),
    seed=st.integers(0, 10),
)
def test_exact_cover_property(labels, batch_size, alpha, seed):
    sampler = LabelSkewedBatchSampler(labels, batch_size, alpha, seed)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(labels)))


def test_sampler_errors():
    with pytest.raises(ValueError, match="alpha=-1"):
        LabelSkewedBatchSampler(_labels(), 8, -1, 0)
    with pytest.raises(ValueError, match="batch_size=0"):
        LabelSkewedBatchSampler(_labels(), 0, 1.0, 0)


def test_inject_outliers():
    images = torch.randn(16, 3, 8, 8)
    labels = torch.arange(16)
    out = inject_outliers(images, labels, k=3, seed=9, scale=10.0)
    changed = (out != images).flatten(1).any(dim=1)
    positions = outlier_positions(16, 3, 9)
    assert changed.nonzero().flatten().tolist() == positions.tolist() and changed.sum() == 3
    assert torch.equal(out[~changed], images[~changed])
    assert abs(out[changed].std().item() - 10.0) < 1.0
    assert torch.equal(out, inject_outliers(images, labels, k=3, seed=9))
    assert not torch.equal(out, inject_outliers(images, labels, k=3, seed=10))
    assert torch.equal(inject_outliers(images, None, k=0, seed=9), images)
    with pytest.raises(ValueError, match="k=17"):
        inject_outliers(images, labels, k=17, seed=0)
    with pytest.raises(ValueError, match="labels has 2"):
        inject_outliers(images, labels[:2], k=1, seed=0)


def test_mixed_corruption_ids_differ_within_batches():
    ids = mixed_corruption_ids(100, seed=0)
    for start in range(0, 100, 15):
        window = ids[start : start + 15].tolist()
        assert len(set(window)) == len(window)
    assert sorted(ids[:15].tolist()) == list(range(15))
    assert not torch.equal(ids, mixed_corruption_ids(100, seed=1))


def test_corrupt_mixed_uses_each_corruption_on_its_samples(natural_images):
    out = corrupt_mixed(natural_images, severity=3, seed=2)
    ids = mixed_corruption_ids(len(natural_images), seed=2)
    for i, name in enumerate(CORRUPTIONS):
        rows = (ids == i).nonzero().flatten()
        expected = corrupt(natural_images[rows], name, 3, seed=2 + 1 + i)
        torch.testing.assert_close(out[rows], expected)


@pytest.mark.parametrize("k, batch_size", [(16, 32), (4, 8), (2, 2), (10, 10)])
def test_class_grouped_batches_have_exact_counts(k, batch_size):
    """Ioffe 2017's non-i.i.d. batches: k distinct classes, batch_size // k samples each."""
    labels = _labels(n=500, classes=20 if k == 16 else 10, seed=3)
    sampler = ClassGroupedBatchSampler(labels, batch_size, k, seed=2)
    upcoming = len(sampler)  # the length of the epoch the next iteration yields
    batches = list(sampler)
    assert len(batches) == upcoming > 0
    for batch in batches:
        classes, counts = labels[batch].unique(return_counts=True)
        assert len(batch) == batch_size and len(classes) == k
        assert counts.tolist() == [batch_size // k] * k
    flat = [i for batch in batches for i in batch]
    assert len(flat) == len(set(flat))  # no sample twice in an epoch
    # leftovers only where fewer than k classes could still fill a batch
    per_class = torch.bincount(labels, minlength=int(labels.max()) + 1)
    used = torch.bincount(labels[flat], minlength=len(per_class))
    assert ((per_class - used) >= batch_size // k).sum() < k
    again = ClassGroupedBatchSampler(labels, batch_size, k, seed=2)
    assert list(again) == batches  # deterministic by seed and epoch
    assert list(again) != batches  # the next epoch is another order


def test_class_grouped_errors():
    labels = _labels(n=100, classes=4)
    with pytest.raises(ValueError, match="multiple of k=3"):
        ClassGroupedBatchSampler(labels, 8, 3, seed=0)
    with pytest.raises(ValueError, match="use k <= 4"):
        ClassGroupedBatchSampler(labels, 10, 5, seed=0)
