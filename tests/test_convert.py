"""normzoo.convert: every norm layer of a model replaced by a zoo layer (normzoo/convert.py)."""

import copy

import pytest
import timm
import torch
import torchvision
from norm_model_helpers import assert_all_zoo, norm_modules, opts_for, trained_bn
from torch import nn

import normzoo
from normzoo.layers import BatchNorm, BatchRenorm, GroupNorm, LayerNorm


@pytest.mark.parametrize(
    "arch", ["timm:mobilenetv3_small_050", "timm:resnet18", "tv:resnet18", "timm:efficientnet_b0"]
)
@pytest.mark.parametrize("name", ["batch", "batch_renorm"])
def test_convert_trained_model_to_batch_keeps_eval_output(arch, name):
    src, model_name = arch.split(":")
    model = (
        timm.create_model(model_name, pretrained=False, num_classes=5)
        if src == "timm"
        else torchvision.models.resnet18(num_classes=5)
    )
    model = trained_bn(model)
    x = torch.randn(3, 3, 32, 32)
    expected = model(x)
    acts_before = [type(getattr(m, "act", nn.Identity())) for m in norm_modules(model)]
    converted = normzoo.convert(copy.deepcopy(model), name)
    assert_all_zoo(converted, name)
    assert [type(getattr(m, "act", nn.Identity())) for m in norm_modules(converted)] == acts_before
    assert not converted.training
    torch.testing.assert_close(converted(x), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["group", "layer", "instance"])
def test_convert_to_batch_independent_keeps_affine(name):
    model = trained_bn(timm.create_model("resnet18", pretrained=False, num_classes=5))
    before = [(m.weight.clone(), m.bias.clone()) for m in norm_modules(model)]
    normzoo.convert(model, name, **opts_for(name))
    assert_all_zoo(model, name)
    after = [(m.weight, m.bias) for m in norm_modules(model)]
    for (w0, b0), (w1, b1) in zip(before, after, strict=True):
        assert torch.equal(w0, w1) and torch.equal(b0, b1)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)  # batch of one works


def test_convert_torch_layers_of_every_kind():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8, eps=1e-3),
        nn.GroupNorm(2, 8),
        nn.InstanceNorm2d(8, affine=True),
        nn.ReLU(),
        nn.Flatten(2),
        nn.BatchNorm1d(8),
        nn.Linear(28 * 28, 2),
    )
    normzoo.convert(model, "group", groups=4)
    kinds = [type(m) for m in model]
    assert kinds[1:4] == [GroupNorm] * 3 and kinds[6] is GroupNorm
    assert model[1].eps == 1e-3 and model[2].num_groups == 4
    assert isinstance(model[0], nn.Conv2d) and isinstance(model[7], nn.Linear)
    normzoo.convert(model, "batch")
    assert all(type(model[i]) is BatchNorm for i in (1, 2, 3, 6))


def test_convert_keeps_group_count_when_not_given():
    model = nn.Sequential(nn.GroupNorm(4, 16))
    normzoo.convert(model, "group")
    assert model[0].num_groups == 4


def test_convert_makes_channels_last_layernorm_a_channels_last_variant():
    """nn.LayerNorm over the last dim normalizes tokens: it becomes the channels-last variant
    (here batch norm over the tokens per channel), never a channels-first layer."""
    from normzoo.layers.channels_last import BatchNormChannelsLast

    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8))
    normzoo.convert(model, "batch")
    assert type(model[1]) is BatchNormChannelsLast and model[1].layout == "channels_last"
    with pytest.raises(ValueError, match="norms that apply to tokens: batch, batch_renorm"):
        normzoo.convert(nn.Sequential(nn.LayerNorm(8)), "instance")


def test_convert_timm_layernorm2d_and_norm_act():
    from timm.layers import BatchNormAct2d, GroupNormAct, LayerNorm2d

    model = nn.Sequential(
        LayerNorm2d(8),
        BatchNormAct2d(8, act_layer=nn.GELU, drop_layer=nn.Dropout),
        GroupNormAct(8, num_groups=2, act_layer=nn.SiLU),
    )
    normzoo.convert(model, "layer")
    assert all(isinstance(m, LayerNorm) for m in model)
    assert isinstance(model[1].act, nn.GELU) and isinstance(model[1].drop, nn.Dropout)
    assert isinstance(model[2].act, nn.SiLU)
    x = torch.randn(2, 8, 4, 4)
    ref = nn.GroupNorm(1, 8)(x)
    torch.testing.assert_close(model[1].eval()(x), nn.functional.gelu(ref))


def test_convert_single_layer_and_device_dtype():
    bn = nn.BatchNorm2d(4).double()
    new = normzoo.convert(bn, "batch_renorm", warmup=10)
    assert isinstance(new, BatchRenorm) and new.weight.dtype == torch.float64 and new.warmup == 10
