"""RMS norm over channels-first maps against Zhang & Sennrich's equation and F.rms_norm."""

import pytest
import torch
import torch.nn.functional as F

import normzoo

C = 6


def paper(x, weight, bias, eps):
    """Zhang & Sennrich 2019, Eq. 4: x / RMS(x) * g (+ b), RMS over all of a sample's values."""
    x = x.double()
    rms = torch.sqrt((x * x).mean(dim=tuple(range(1, x.dim())), keepdim=True) + eps)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    y = x / rms * weight.double().view(shape)
    return y if bias is None else y + bias.double().view(shape)


@pytest.mark.parametrize("shape", [(5, C), (3, C, 7), (2, C, 4, 5), (2, C, 3, 2, 2)])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_the_equation_forward_and_backward(shape, bias):
    layer = normzoo.create("rms", C, bias=bias, eps=1e-4, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        if bias:
            layer.bias.normal_()
    x = (torch.randn(shape, dtype=torch.float64) * 3 + 1).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    y, expected = layer(x), paper(xr, layer.weight, layer.bias, 1e-4)
    torch.testing.assert_close(y, expected)
    g = torch.randn_like(y)
    y.backward(g), expected.backward(g)
    torch.testing.assert_close(x.grad, xr.grad)


def test_equals_torch_rms_norm_over_non_batch_dims():
    layer = normzoo.create("rmsnorm", C)
    x = torch.randn(4, C, 5, 5)
    ref = F.rms_norm(x, x.shape[1:], layer.weight.view(C, 1, 1).expand(x.shape[1:]), 1e-5)
    torch.testing.assert_close(layer(x), ref)


def test_options_and_state_dict():
    assert set(normzoo.create("rms", C).state_dict()) == {"weight"}
    assert set(normzoo.create("rms", C, bias=True).state_dict()) == {"weight", "bias"}
    assert normzoo.create("rms", C, affine=False).state_dict() == {}
    assert not normzoo.is_batch_dependent("rms")
    with pytest.raises(ValueError, match="3 channels in dim 1"):
        normzoo.create("rms", C)(torch.randn(2, 3, 4))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_float64(dtype):
    layer = normzoo.create("rms", C, dtype=dtype)
    x = torch.randn(3, C, 8, 8) * 10
    y = layer(x.to(dtype))
    assert y.dtype == dtype
    torch.testing.assert_close(y.double(), paper(x, layer.weight, None, 1e-5), atol=3e-2, rtol=2e-2)
