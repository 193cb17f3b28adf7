"""normzoo.norm_layer: zoo layers as the norm_layer= of timm and torchvision models
(normzoo/interop.py)."""

import pytest
import timm
import torch
import torchvision
from norm_model_helpers import assert_all_zoo, opts_for
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import normzoo
from normzoo.layers import BatchNorm

TIMM_MODELS = ["resnet18", "regnetx_002", "efficientnet_b0", "densenet121"]


@pytest.mark.parametrize("arch", TIMM_MODELS)
@pytest.mark.parametrize("name", ["batch", "group", "batch_renorm"])
def test_timm_norm_layer(arch, name):
    model = timm.create_model(
        arch, pretrained=False, num_classes=3, norm_layer=normzoo.norm_layer(name, **opts_for(name))
    )
    assert_all_zoo(model, name)
    model.train()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_timm_norm_act_keeps_the_model_activation():
    ref = timm.create_model("efficientnet_b0", pretrained=False)
    zoo = timm.create_model(
        "efficientnet_b0", pretrained=False, norm_layer=normzoo.norm_layer("batch")
    )
    ref_acts = [
        type(getattr(m, "act", nn.Identity())) for m in ref.modules() if isinstance(m, _BatchNorm)
    ]
    zoo_acts = [
        type(getattr(m, "act", nn.Identity())) for m in zoo.modules() if isinstance(m, BatchNorm)
    ]
    assert ref_acts == zoo_acts and nn.SiLU in zoo_acts
    # same state-dict keys as timm's BatchNormAct2d: checkpoints load both ways
    assert ref.state_dict().keys() == zoo.state_dict().keys()
    zoo.load_state_dict(ref.state_dict())
    ref.eval(), zoo.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(zoo(x), ref(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["batch", "group", "layer", "instance", "batch_renorm"])
def test_torchvision_resnet(name):
    model = torchvision.models.resnet18(
        num_classes=4, norm_layer=normzoo.norm_layer(name, **opts_for(name))
    )
    assert_all_zoo(model, name)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 4)


def test_norm_act_layers_are_built_as_their_class():
    """timm's keywords build the norm+act class directly (no class swap of a built norm)."""
    from normzoo.interop import ZooNormFactory
    from normzoo.layers.act import BatchNormAct, BatchRenormAct

    layer = ZooNormFactory(8, norm="batch_renorm", act_layer="relu", drop_layer=nn.Dropout, rmax=2)
    assert type(layer) is BatchRenormAct and layer.rmax == 2.0
    assert isinstance(layer.act, nn.ReLU) and isinstance(layer.drop, nn.Dropout)
    assert layer.state_dict().keys() == normzoo.create("batch_renorm", 8).state_dict().keys()
    assert type(ZooNormFactory(8, norm="group", groups=2)) is normzoo.layers.GroupNorm
    direct = BatchNormAct(8, act_layer=nn.SiLU, momentum=0.2).eval()
    x = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(direct(x), nn.functional.silu(nn.BatchNorm2d(8).eval()(x)))


def test_norm_act_of_a_user_class_needs_a_declared_class():
    from normzoo.layers.act import NormActMixin, register_norm_act
    from normzoo.registry import _LOOKUP, _REGISTRY, create_norm_act, register

    class Halve(normzoo.layers.GroupNorm):
        def forward(self, x):
            return super().forward(x) / 2

    try:
        register("halve", Halve)
        with pytest.raises(TypeError, match=r"no norm\+act class for .*Halve.*register_norm_act"):
            create_norm_act("halve", 8, act_layer=nn.ReLU(), groups=2)
        assert type(create_norm_act("halve", 8, groups=2)) is Halve  # without act: plain

        class HalveAct(NormActMixin, Halve):
            pass

        register_norm_act(Halve, HalveAct)
        layer = create_norm_act("halve", 8, act_layer=nn.ReLU(), groups=2)
        x = torch.randn(2, 8, 3)
        torch.testing.assert_close(layer(x), torch.relu(nn.GroupNorm(2, 8)(x) / 2))
    finally:
        _REGISTRY.pop("halve", None)
        _LOOKUP.pop("halve", None)
