"""Batch layers with non-trivial state and per-channel statistics written out, shared by the
test-time tests (an independent reference: plain tensor ops, no normzoo code)."""

from __future__ import annotations

import torch
from torch import nn

import normzoo

SHAPES = [(8, 3), (8, 3, 5), (4, 3, 4, 5), (2, 3, 3, 2, 4)]
KINDS = ["torch", "zoo_batch", "zoo_renorm", "sync"]


def make_layer(kind: str, channels: int, dim: int, **kwargs) -> nn.Module:
    """A batch layer with non-trivial affine parameters and running statistics."""
    if kind == "torch":
        cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[dim]
        layer = cls(channels, **kwargs)
    elif kind == "zoo_batch":
        layer = normzoo.create("batch", channels, **kwargs)
    elif kind == "zoo_renorm":
        layer = normzoo.create("batch_renorm", channels, **kwargs)
    else:
        layer = nn.SyncBatchNorm(channels, **kwargs)
    gen = torch.Generator().manual_seed(channels * 7 + dim)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(channels, generator=gen) + 0.5)
        layer.bias.copy_(torch.randn(channels, generator=gen))
        if layer.running_mean is not None:
            layer.running_mean.copy_(torch.randn(channels, generator=gen))
            layer.running_var.copy_(torch.rand(channels, generator=gen) + 0.5)
            layer.num_batches_tracked.fill_(5)
    return layer


def per_channel(x: torch.Tensor) -> torch.Tensor:
    """(C, values) view of a channels-first tensor."""
    return x.transpose(0, 1).reshape(x.shape[1], -1)


def normalize(x, mean, var, layer) -> torch.Tensor:
    shape = (1, -1) + (1,) * (x.dim() - 2)
    x_hat = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + layer.eps)
    return x_hat * layer.weight.view(shape) + layer.bias.view(shape)


def state(layer: nn.Module) -> dict:
    return {k: v.clone() for k, v in layer.state_dict().items()}


def assert_same_state(before: dict, layer: nn.Module) -> None:
    after = layer.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0)
