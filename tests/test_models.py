"""Benchmark backbones really contain the requested zoo layers, in every norm slot, and run."""

import pytest
import torch
from torch import nn

import normzoo
from normzoo.models import BACKBONES, build_model, has_batch_layers, has_spatial_dims

NORMS = ["batch", "batch_renorm", "group", "layer", "instance"]
OPTIONS = {"group": {"groups": 8}}


def _zoo_class(norm: str, channels: int = 32) -> type:
    return type(normzoo.create(norm, channels, **OPTIONS.get(norm, {})))


def _norm_modules(model: nn.Module) -> list[nn.Module]:
    """Every module that is a normalization layer of any library (torch, timm or zoo)."""
    kinds = (
        nn.modules.batchnorm._BatchNorm,
        nn.GroupNorm,
        nn.LayerNorm,
        nn.modules.instancenorm._InstanceNorm,
    )
    return [m for m in model.modules() if isinstance(m, kinds)]


@pytest.mark.parametrize("backbone", ["small_cnn", "resnet_tiny"])
@pytest.mark.parametrize("norm", NORMS)
def test_conv_backbones_hold_only_zoo_layers_of_the_norm(backbone, norm):
    model = build_model(
        backbone, norm, num_classes=10, in_channels=3, norm_options=OPTIONS.get(norm)
    )
    norms = _norm_modules(model)
    assert norms, "no normalization layer found"
    assert all(type(m) is _zoo_class(norm) for m in norms)
    assert all(type(m).__module__.startswith("normzoo.") for m in norms)
    model.train()
    out = model(torch.randn(4, 3, 16, 16))
    assert out.shape == (4, 10)
    assert has_batch_layers(model) == (norm in ("batch", "batch_renorm"))


def test_group_norm_options_reach_every_layer():
    model = build_model("small_cnn", "group", 10, 3, {"groups": 4})
    groups = {m.num_groups for m in _norm_modules(model)}
    assert groups == {4}


def test_mlp_normalizes_features_without_spatial_dims():
    model = build_model("mlp", "layer", 10, 3)
    assert not has_spatial_dims("mlp") and has_spatial_dims("small_cnn")
    assert len(_norm_modules(model)) == 2
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_none_norm_has_no_norm_layers_and_conv_biases():
    model = build_model("small_cnn", "none", 10, 3)
    assert _norm_modules(model) == []
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_timm_models_are_built_with_zoo_layers(norm):
    model = build_model(
        "timm:resnet10t", norm, num_classes=7, in_channels=3, norm_options=OPTIONS.get(norm)
    )
    zoo = [m for m in model.modules() if type(m).__module__.startswith("normzoo.")]
    foreign = [m for m in _norm_modules(model) if not type(m).__module__.startswith("normzoo.")]
    assert len(zoo) >= 10 and not foreign
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_unknown_backbone_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="small_cnn"):
        build_model("smal_cnn", "batch", 10, 3)
    with pytest.raises(ValueError, match="timm"):
        build_model("timm:not_a_model_xyz", "batch", 10, 3)
    assert set(BACKBONES) >= {"small_cnn", "resnet_tiny"}
