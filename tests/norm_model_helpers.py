"""Helpers shared by the tests of zoo layers inside timm and torchvision models."""

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from normzoo.layers import BatchNorm, BatchRenorm, GroupNorm, InstanceNorm, LayerNorm

ZOO = (BatchNorm, BatchRenorm, GroupNorm, LayerNorm, InstanceNorm)
EXPECTED = {
    "batch": BatchNorm,
    "batch_renorm": BatchRenorm,
    "group": GroupNorm,
    "layer": LayerNorm,
    "instance": InstanceNorm,
}
TORCH_NORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.GroupNorm,
    nn.InstanceNorm2d,
    nn.SyncBatchNorm,
)


def norm_modules(model):
    return [
        m
        for m in model.modules()
        if isinstance(m, (_BatchNorm, nn.GroupNorm))
        or type(m).__name__.startswith(("BatchNorm", "GroupNorm", "LayerNorm2d"))
    ]


def assert_all_zoo(model, name):
    norms = norm_modules(model)
    assert norms, "no norm layers found"
    for m in norms:
        assert type(m).__module__.startswith("normzoo."), type(m)
        assert isinstance(m, EXPECTED[name]), type(m)


def opts_for(name):
    return {"group": {"group_size": 8}}.get(name, {})


def trained_bn(model, steps=3):
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(4, 3, 32, 32) * 2 + 0.5)
        for m in model.modules():
            if isinstance(m, _BatchNorm) and m.affine:
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
    return model.eval()
