"""Re-estimation and adaptation refuse non-finite data as a training forward does (issue 28):
a clear ValueError, and every statistic and parameter left exactly as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import normzoo
from normzoo.testtime import Tent, adapt, recompute_stats, stats_mode


def _model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    norm = nn.BatchNorm2d(4) if kind == "torch" else normzoo.create("batch", 4)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), norm, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )
    with torch.no_grad():  # trained-looking statistics, so "untouched" is not the default
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
    return model.eval()


def _batches() -> list[torch.Tensor]:
    torch.manual_seed(1)
    batches = [torch.randn(8, 3, 6, 6) for _ in range(3)]
    batches[1][2, 0, 3, 3] = float("nan")  # one NaN pixel
    return batches


def _state(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same(before: dict, model: nn.Module) -> None:
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key


def test_a_training_forward_raises_on_the_same_batch():
    """What the refusal mirrors: a zoo batch layer's training forward raises on this batch."""
    model = _model("zoo").train()
    with pytest.raises(ValueError, match="finite"):
        model(_batches()[1])


@pytest.mark.parametrize("kind", ["torch", "zoo"])
@pytest.mark.parametrize("method", ["precise", "sequential"])
def test_recompute_stats_refuses_non_finite_data(kind, method):
    model = _model(kind)
    before = _state(model)
    with pytest.raises(ValueError, match="non-finite"):
        recompute_stats(model, _batches(), method=method)
    _assert_same(before, model)
    clean = [b.nan_to_num() for b in _batches()]
    recompute_stats(model, clean, method=method)  # the same data cleaned works
    assert torch.isfinite(model[1].running_var).all()


@pytest.mark.parametrize("kind", ["torch", "zoo"])
@pytest.mark.parametrize("method", ["adabn", "tent"])
def test_adapt_refuses_non_finite_data_and_changes_nothing(kind, method):
    model = _model(kind)
    before = _state(model)
    with pytest.raises(ValueError, match="non-finite"):
        adapt(model, _batches(), method=method)
    _assert_same(before, model)
    # in place: the steps of the clean batch before the bad one are undone too (tent's own
    # configuration, batch statistics instead of running buffers, is what tent always does)
    with pytest.raises(ValueError, match="non-finite"):
        adapt(model, _batches(), method=method, inplace=True)
    parameters = before if method == "adabn" else {k: before[k] for k in ("1.weight", "1.bias")}
    _assert_same(parameters, model)


def test_tent_refuses_a_non_finite_batch_before_its_step():
    model = _model("torch")
    tent = Tent(model)
    before = _state(model)
    with pytest.raises(ValueError, match="non-finite"):
        tent(_batches()[1])
    _assert_same(before, model)


@pytest.mark.parametrize("kind", ["torch", "zoo"])
def test_online_stats_refuse_non_finite_data_and_keep_statistics(kind):
    model = _model(kind)
    batches = _batches()
    with stats_mode(model, "online"):
        model(batches[0])
        updated = _state(model)
        with pytest.raises(ValueError, match="non-finite"):
            model(batches[1])
        _assert_same(updated, model)  # the bad batch changed nothing, not even the counter
        assert torch.isfinite(model(batches[2])).all()
