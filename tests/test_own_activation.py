"""Layers with their own nonlinearity (FRN + TLU, EvoNorm-B0/S0) replace a norm *and* its
activation, as in their papers and in timm: nothing is appended after them, and timm's
``apply_act=False`` turns their nonlinearity off. Reference: the same timm models built with
timm's own ``FilterResponseNormTlu2d`` / ``EvoNorm2dB0`` / ``EvoNorm2dS0``."""

import functools

import pytest
import timm
import torch
from timm.layers import EvoNorm2dB0, EvoNorm2dS0, FilterResponseNormTlu2d
from torch import nn

import normzoo
from normzoo.models import build_model
from normzoo.registry import create_norm_act, provides_activation, without_activation

OWN_ACT = ["filter_response", "evonorm_b0", "evonorm_s0"]


@pytest.mark.parametrize("name", OWN_ACT)
def test_flags_and_activation_off(name):
    layer = normzoo.create(name, 8, **({"groups": 4} if name == "evonorm_s0" else {}))
    assert provides_activation(layer)
    off = normzoo.create(name, 8, **without_activation(name, {"groups": 4} if "s0" in name else {}))
    assert not provides_activation(off)
    assert not provides_activation(normzoo.create("batch", 8))
    assert without_activation("group", {"groups": 4}) == {"groups": 4}


@pytest.mark.parametrize("name", ["evonorm_b0", "evonorm_s0"])
def test_evonorm_apply_act_false_is_the_affine_transform(name):
    # tensorflow/tpu resnet_layers.evonorm(nonlinearity=False) and timm: x * gamma + beta
    layer = normzoo.create(name, 6, apply_act=False, **({"groups": 2} if "s0" in name else {}))
    assert layer.v is None and "v" not in layer.state_dict()
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(0.5, 2, 6))
        layer.bias.copy_(torch.linspace(-1, 1, 6))
    x = torch.randn(3, 6, 4, 4)
    expected = x * layer.weight.view(1, -1, 1, 1) + layer.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("name", OWN_ACT)
def test_norm_act_appends_no_activation(name):
    opts = {"groups": 4} if name == "evonorm_s0" else {}
    plain = normzoo.create(name, 8, **opts)
    with_act = create_norm_act(name, 8, act_layer=nn.ReLU, **opts)
    with_act.load_state_dict(plain.state_dict())
    with torch.no_grad():  # outputs with negative values, which a ReLU would change
        for layer in (plain, with_act):
            layer.bias.fill_(-1.0)
            if getattr(layer, "tau", None) is not None:
                layer.tau.fill_(-0.5)
    plain.eval(), with_act.eval()
    x = torch.randn(4, 8, 5, 5)
    out = with_act(x)
    assert (out < 0).any()
    torch.testing.assert_close(out, plain(x))


@pytest.mark.parametrize("backbone", ["small_cnn", "resnet_tiny", "mlp"])
@pytest.mark.parametrize("name", OWN_ACT)
def test_backbones_put_no_relu_after_own_activation(backbone, name):
    opts = {"groups": 4} if name == "evonorm_s0" else {}
    if backbone == "mlp" and name != "evonorm_s0":
        opts = {}
    model = build_model(backbone, name, 10, norm_options=opts)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert relus == []
    reference = build_model(backbone, "batch", 10)
    assert any(isinstance(m, nn.ReLU) for m in reference.modules())
    if backbone == "resnet_tiny":  # norms before the residual addition have it off
        for block in model.blocks:
            assert provides_activation(block.norm1)
            assert not provides_activation(block.norm2)


def _timm_pair(model_name, timm_layer, zoo_name, **opts):
    ref = timm.create_model(model_name, pretrained=False, num_classes=10, norm_layer=timm_layer)
    zoo_layer = normzoo.norm_layer(zoo_name, **opts)
    ours = timm.create_model(model_name, pretrained=False, num_classes=10, norm_layer=zoo_layer)
    ours.load_state_dict(ref.state_dict())  # strict: same parameters and buffers
    return ref, ours


@pytest.mark.parametrize(
    ("timm_layer", "zoo_name", "opts"),
    [
        (FilterResponseNormTlu2d, "filter_response", {}),
        (EvoNorm2dB0, "evonorm_b0", {}),
        (functools.partial(EvoNorm2dS0, group_size=8), "evonorm_s0", {"group_size": 8}),
    ],
    ids=["frn", "b0", "s0"],
)
def test_timm_model_equals_timm_with_its_own_layer(timm_layer, zoo_name, opts):
    # regnet uses timm's norm+act factory, with apply_act=False before the residual addition
    torch.manual_seed(0)
    ref, ours = _timm_pair("regnetx_002", timm_layer, zoo_name, **opts)
    zoo_layers = [m for m in ours.modules() if type(m).__module__.startswith("normzoo")]
    assert zoo_layers and any(not provides_activation(m) for m in zoo_layers)
    assert not any(isinstance(getattr(m, "act", None), nn.ReLU) for m in zoo_layers)
    with torch.no_grad():  # move parameters off their init so every term matters
        g = torch.Generator().manual_seed(1)
        for p_ref, p_ours in zip(ref.parameters(), ours.parameters(), strict=True):
            p_ref.add_(0.1 * torch.randn(p_ref.shape, generator=g))
            p_ours.copy_(p_ref)
    x = torch.randn(4, 3, 64, 64)  # 2x2 maps at the last stage (1x1 maps make FRN ill-conditioned)
    for mode in ("train", "eval"):
        ref.train(mode == "train"), ours.train(mode == "train")
        torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=1e-4)
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)
