"""Weight Standardization against timm's StdConv2d and the paper's equation."""

import pytest
import torch
from timm.layers import StdConv2d
from torch import nn

from normzoo.layers import WSConv2d


@pytest.mark.parametrize("groups,stride,bias", [(1, 1, False), (2, 2, True)])
def test_matches_timm_std_conv(groups, stride, bias):
    ref = StdConv2d(4, 6, 3, stride=stride, padding=1, groups=groups, bias=bias)
    ours = WSConv2d(4, 6, 3, stride=stride, padding=1, groups=groups, bias=bias)
    ours.load_state_dict(ref.state_dict())
    assert ours.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(2, 4, 9, 9)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), ref(xb)
    torch.testing.assert_close(ya, yb, atol=0, rtol=0)
    g = torch.randn_like(ya)
    ya.backward(g), yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)


def test_paper_equation_and_from_conv():
    conv = nn.Conv2d(3, 5, 3, padding=1, dtype=torch.float64)
    ws = WSConv2d.from_conv(conv, eps=1e-5)
    w = conv.weight
    mean = w.mean(dim=(1, 2, 3), keepdim=True)
    var = w.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
    w_hat = (w - mean) / torch.sqrt(var + 1e-5)  # Qiao et al. 2019, Eq. 5
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    expected = nn.functional.conv2d(x, w_hat, conv.bias, padding=1)
    torch.testing.assert_close(ws(x), expected)
    assert torch.equal(ws.weight, conv.weight) and ws.padding == conv.padding


@pytest.mark.parametrize("backbone", ["small_cnn", "resnet_tiny", "timm:resnet18"])
def test_backbone_conv_ws(backbone):
    from normzoo.models import build_model

    plain = build_model(backbone, "group", 10, 3, {"groups": 8})
    ws = build_model(backbone, "group", 10, 3, {"groups": 8}, conv="ws")
    convs = [m for m in plain.modules() if isinstance(m, nn.Conv2d)]
    ws_convs = [m for m in ws.modules() if isinstance(m, nn.Conv2d)]
    assert len(ws_convs) == len(convs) and all(type(m) is WSConv2d for m in ws_convs)
    assert ws(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_backbone_conv_errors():
    from normzoo.models import build_model

    with pytest.raises(ValueError, match="unknown conv 'std'; allowed: plain, ws"):
        build_model("small_cnn", "batch", 10, conv="std")
    with pytest.raises(ValueError, match="backbone 'mlp' has no nn.Conv2d"):
        build_model("mlp", "batch", 10, conv="ws")


def test_config_accepts_conv_ws():
    from normzoo.bench.plan.config import load_config

    config = load_config("configs/quick.yaml", overrides=["model.options={conv: ws}"])
    assert config.model.options == {"conv": "ws"}  # validated: every norm's model was built
    with pytest.raises(ValueError, match="model option 'conv'"):
        load_config("configs/quick.yaml", overrides=["model.options={conv: std}"])
