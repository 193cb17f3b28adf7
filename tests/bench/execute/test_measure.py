"""What training reached (train accuracy/loss in eval and train mode) against hand computations."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normzoo.bench.execute.train.measure import TRAIN_SUBSET, training_fit
from normzoo.bench.plan.config.specs import Composition, NormSpec
from normzoo.bench.plan.grid import Run
from normzoo.data import NormzooDataModule

OPTIONS = {"train_size": 1200, "test_size": 64, "image_size": 8}


def _datamodule(seed: int = 0, batch_size: int = 8) -> NormzooDataModule:
    return NormzooDataModule(
        "synthetic", train_batch_size=batch_size, seed=seed, dataset_options=OPTIONS
    )


def _model(norm: str) -> nn.Module:
    torch.manual_seed(3)
    layer = nn.BatchNorm2d(4) if norm == "batch" else nn.GroupNorm(2, 4)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), layer, nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
    with torch.no_grad():  # running statistics away from their defaults
        layer.train()(torch.randn(64, 4, 6, 6) * 2 + 1) if norm == "batch" else None
    return model.eval()


def _run(batch_size: int) -> Run:
    return Run("k", "synthetic", "tiny", NormSpec("batch"), batch_size, Composition(), 0)


def _subset_by_hand(datamodule: NormzooDataModule):
    """The first TRAIN_SUBSET images not in the validation split, in index order, normalized
    with the dataset's channel statistics (read from the raw splits, not the measuring code)."""
    datamodule.setup("fit")
    splits = datamodule.splits
    val = set(datamodule.val_index.tolist())
    index = [i for i in range(len(splits.train_labels)) if i not in val][:TRAIN_SUBSET]
    x = splits.train_images[index].double() / 255
    mean = torch.tensor(splits.mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(splits.std, dtype=torch.float64).view(1, 3, 1, 1)
    return ((x - mean) / std).float(), splits.train_labels[index]


@pytest.mark.parametrize("batch_size", [8, 32])
def test_training_fit_matches_a_hand_computation(batch_size):
    datamodule = _datamodule(batch_size=batch_size)
    model = _model("batch")
    state = copy.deepcopy(model.state_dict())
    fit = training_fit(model, datamodule, _run(batch_size), config=None)
    x, y = _subset_by_hand(datamodule)
    assert len(y) == TRAIN_SUBSET
    with torch.no_grad():  # eval mode, one sample at a time
        logits = torch.cat([model(x[i : i + 1]) for i in range(len(x))])
    assert fit["train_accuracy"] == pytest.approx(float((logits.argmax(1) == y).float().mean()))
    assert fit["train_loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    # train mode: each full batch normalized with its own statistics by a fresh copy
    correct = 0
    full = len(x) // batch_size * batch_size
    for start in range(0, full, batch_size):
        fresh = copy.deepcopy(model).train()
        with torch.no_grad():
            out = fresh(x[start : start + batch_size])
        correct += int((out.argmax(1) == y[start : start + batch_size]).sum())
    assert fit["train_accuracy_train_mode"] == pytest.approx(correct / full)
    # the model is untouched: same mode, same parameters and running statistics
    assert not model.training
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name


def test_batch_independent_norms_have_no_train_mode_accuracy():
    fit = training_fit(_model("group"), _datamodule(), _run(8), config=None)
    assert fit["train_accuracy_train_mode"] is None
    assert 0.0 <= fit["train_accuracy"] <= 1.0


def test_the_subset_is_the_same_for_every_batch_size_of_a_seed():
    """Runs of one seed (any norm, batch size, lr) are measured on the same images."""
    model = _model("group")
    small = training_fit(model, _datamodule(batch_size=2), _run(2), config=None)
    large = training_fit(model, _datamodule(batch_size=64), _run(64), config=None)
    assert small["train_accuracy"] == large["train_accuracy"]
    assert small["train_loss"] == large["train_loss"]
