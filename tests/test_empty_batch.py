"""A batch of 0 samples, for every registered layer (issue 28): the output its torch counterpart
gives (an empty tensor of the input's shape) or a clear ValueError naming the shape."""

from __future__ import annotations

import pytest
import torch

import normzoo


@pytest.mark.parametrize("name", normzoo.available())
@pytest.mark.parametrize("training", [True, False])
def test_empty_batch_matches_torch_or_is_refused_clearly(name, training):
    layer = normzoo.create(name, 32).train(training)
    x = torch.randn(0, 32, 4, 4)
    try:
        y = layer(x)
    except ValueError as error:  # batch statistics of nothing: refused with the shape named
        assert "(0, 32, 4, 4)" in str(error)
        assert training  # in eval every layer has what it needs
        return
    assert y.shape == x.shape  # as torch.nn.BatchNorm2d / GroupNorm return for N = 0


def test_evonorm_s0_empty_batch_like_group_norm():
    layer = normzoo.create("evonorm_s0", 32, groups=8)
    reference = torch.nn.GroupNorm(8, 32)
    x = torch.randn(0, 32, 5, 5, requires_grad=True)
    y = layer(x)
    assert y.shape == reference(x).shape == x.shape
    y.sum().backward()  # the graph stays usable
    assert x.grad.shape == x.shape
