"""The new layers (ghost batch, FRN, EvoNorm-B0/S0, RMS) through every entry point of the zoo:
norm_layer in timm and torchvision models, convert, the benchmark backbones, torch.compile."""

import copy

import pytest
import timm
import torch
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import normzoo
from normzoo.models import build_model
from normzoo.registry import provides_activation

NEW = {
    "ghost_batch": {"virtual_batch_size": 2},
    "filter_response": {},
    "evonorm_b0": {},
    "evonorm_s0": {"group_size": 8},
    "rms": {},
}


def zoo_class(name):
    return type(normzoo.create(name, 32, **NEW[name]))


def norms_of(model, cls):
    return [m for m in model.modules() if isinstance(m, cls)]


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_b0"])
@pytest.mark.parametrize("name", list(NEW))
def test_timm_norm_layer_builds_zoo_layers(arch, name):
    model = timm.create_model(
        arch, pretrained=False, num_classes=3, norm_layer=normzoo.norm_layer(name, **NEW[name])
    )
    cls = zoo_class(name)
    assert norms_of(model, cls)
    assert not [
        m for m in model.modules() if type(m) in (nn.BatchNorm2d, timm.layers.BatchNormAct2d)
    ]
    out = model.train()(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 3) and torch.isfinite(out).all()
    if arch == "efficientnet_b0":  # timm's norm+act layers: the model's SiLU follows the norm,
        # except after a norm with its own nonlinearity (FRN + TLU, EvoNorm), as in timm
        silu = any(isinstance(getattr(m, "act", None), nn.SiLU) for m in norms_of(model, cls))
        assert silu != provides_activation(normzoo.create(name, 32, **NEW[name]))


@pytest.mark.parametrize("name", list(NEW))
def test_torchvision_resnet(name):
    model = torchvision.models.resnet18(
        num_classes=4, norm_layer=normzoo.norm_layer(name, **NEW[name])
    )
    assert len(norms_of(model, zoo_class(name))) == 20
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)


@pytest.mark.parametrize("name", list(NEW))
def test_convert_keeps_affine_and_converts_back(name):
    model = torchvision.models.resnet18(num_classes=4)
    with torch.no_grad():
        for m in norms_of(model, nn.BatchNorm2d):
            m.weight.uniform_(0.5, 1.5), m.bias.normal_()
    before = [(m.weight.clone(), m.bias.clone()) for m in norms_of(model, nn.BatchNorm2d)]
    normzoo.convert(model, name, **NEW[name])
    converted = norms_of(model, zoo_class(name))
    assert len(converted) == 20 and not norms_of(model, nn.BatchNorm2d)
    for (w, b), m in zip(before, converted, strict=True):
        assert torch.equal(m.weight, w)
        if m.bias is not None:
            assert torch.equal(m.bias, b)
    normzoo.convert(model, "group", groups=8)  # and from the new layer to another zoo layer
    assert len(norms_of(model, nn.GroupNorm)) == 20 and not norms_of(model, zoo_class(name))


def test_convert_batch_to_ghost_keeps_running_stats():
    model = torchvision.models.resnet18(num_classes=4)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32) + 1)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    converted = normzoo.convert(copy.deepcopy(model), "gbn", virtual_batch_size=2)
    assert norms_of(converted, zoo_class("ghost_batch"))
    torch.testing.assert_close(converted(x), expected)


@pytest.mark.parametrize("backbone", ["small_cnn", "resnet_tiny", "mlp"])
@pytest.mark.parametrize("name", list(NEW))
def test_benchmark_backbones(backbone, name):
    model = build_model(backbone, name, 10, 3, NEW[name])
    assert norms_of(model, zoo_class(name))
    assert model.train()(torch.randn(4, 3, 16, 16)).shape == (4, 10)
    from normzoo.models import has_batch_layers

    assert has_batch_layers(model) == normzoo.is_batch_dependent(name)
    assert normzoo.is_batch_dependent(name) == isinstance(
        normzoo.create(name, 32, **NEW[name]), _BatchNorm
    )


@pytest.mark.parametrize("name", list(NEW))
def test_channels_last_and_large_offset(name):
    layer = normzoo.create(name, 16, dtype=torch.float64, **NEW[name])
    x = torch.randn(4, 16, 5, 6, dtype=torch.float64) * 2 + 1e3
    expected = copy.deepcopy(layer)(x)
    torch.testing.assert_close(layer(x.contiguous(memory_format=torch.channels_last)), expected)
    y32 = normzoo.create(name, 16, **NEW[name])(x.float())
    assert torch.isfinite(y32).all()
    torch.testing.assert_close(y32.double(), expected, atol=2e-2, rtol=1e-3)


@pytest.mark.parametrize("name", list(NEW))
def test_torch_compile(name):
    torch._dynamo.reset()
    eager = normzoo.create(name, 16, **NEW[name])
    compiled = torch.compile(copy.deepcopy(eager), backend="eager")
    for _ in range(3):
        x = torch.randn(4, 16, 5, 5)
        torch.testing.assert_close(compiled(x), eager(x), atol=1e-5, rtol=1e-5)


def test_configs_accept_the_new_layers():
    from normzoo.bench.plan.config import load_config

    norms = (
        "[{name: gbn, options: {virtual_batch_size: 4}}, evonorm_b0, frn,"
        " {name: evonorm_s0, options: {group_size: 8}}, rms]"
    )
    config = load_config(
        "configs/quick.yaml", overrides=[f"norms={norms}", "stats.primary=[ghost_batch vs rms]"]
    )
    assert [n.name for n in config.norms][:1] in (["gbn"], ["ghost_batch"])
    assert len(config.norms) == 5
    with pytest.raises(ValueError, match="virtual_batch_size=0"):
        bad = "[{name: ghost_batch, options: {virtual_batch_size: 0}}]"
        load_config("configs/quick.yaml", overrides=[f"norms={bad}"])
