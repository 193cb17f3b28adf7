"""Filter response norm + TLU against timm's FilterResponseNormTlu2d and the paper's equations."""

import copy
import warnings

import pytest
import torch
from timm.layers import FilterResponseNormAct2d, FilterResponseNormTlu2d

import normzoo

C = 6


def randomize(*modules):
    g = torch.Generator().manual_seed(3)
    values = {name: torch.randn(C, generator=g) for name in ("weight", "bias", "tau")}
    for m in modules:
        with torch.no_grad():
            for name, value in values.items():
                if getattr(m, name, None) is not None:
                    getattr(m, name).copy_(value)


def paper(x, weight, bias, tau, eps):
    """Singh & Krishnan 2020, Eq. 1-3 written out in float64."""
    x = x.double()
    nu2 = (x * x).mean(dim=tuple(range(2, x.dim())), keepdim=True) if x.dim() > 2 else x * x
    shape = (1, -1) + (1,) * (x.dim() - 2)
    y = weight.double().view(shape) * x / torch.sqrt(nu2 + eps) + bias.double().view(shape)
    return torch.max(y, tau.double().view(shape)) if tau is not None else y


@pytest.mark.parametrize("eps", [1e-5, 1e-3])
@pytest.mark.parametrize("training", [True, False])
def test_matches_timm_forward_backward(eps, training):
    ours = normzoo.create("frn", C, eps=eps)
    ref = FilterResponseNormTlu2d(C, eps=eps)
    randomize(ours, ref)
    ours.train(training), ref.train(training)
    x = torch.randn(4, C, 7, 5) * 3 + 0.5
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), ref(xb)
    torch.testing.assert_close(ya, yb, atol=1e-6, rtol=1e-5)
    g = torch.randn_like(ya)
    ya.backward(g), yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-6, rtol=1e-5)
    for name in ("weight", "bias", "tau"):
        torch.testing.assert_close(getattr(ours, name).grad, getattr(ref, name).grad)


def test_without_tlu_matches_timm_norm_act_with_identity():
    ours = normzoo.create("frn", C, tlu=False)
    ref = FilterResponseNormAct2d(C, apply_act=False)
    randomize(ours, ref)
    x = torch.randn(3, C, 4, 4)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=1e-5)
    assert ours.tau is None


def test_state_dict_loads_both_ways_with_timm():
    ref = FilterResponseNormTlu2d(C)
    randomize(ref)
    ours = normzoo.create("filter_response", C)
    ours.load_state_dict(ref.state_dict())
    back = FilterResponseNormTlu2d(C)
    back.load_state_dict(copy.deepcopy(ours.state_dict()))
    x = torch.randn(2, C, 3, 3)
    torch.testing.assert_close(ours(x), ref(x))
    torch.testing.assert_close(back(x), ref(x))


@pytest.mark.parametrize("shape", [(5, C), (3, C, 9), (2, C, 4, 3), (2, C, 3, 2, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_any_rank_matches_the_equations(shape, dtype):
    layer = normzoo.create("frn", C, eps=1e-4, dtype=dtype)
    randomize(layer)
    x = torch.randn(shape, dtype=dtype) * 2
    expected = paper(x, layer.weight, layer.bias, layer.tau, 1e-4)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(layer(x).double(), expected, atol=tol, rtol=tol)


def test_learned_eps_is_eps_plus_abs_and_trains():
    layer = normzoo.create("frn", C, learn_eps=True, eps=1e-6)
    with torch.no_grad():
        layer.eps_learned.fill_(-0.3)
    x = torch.randn(4, C)  # 1x1 maps: the case the paper learns eps for
    expected = paper(x, layer.weight, layer.bias, layer.tau, 1e-6 + 0.3)
    y = layer(x)
    torch.testing.assert_close(y.double(), expected, atol=1e-6, rtol=1e-5)
    y.square().sum().backward()
    assert layer.eps_learned.grad is not None and layer.eps_learned.grad != 0
    assert "eps_learned" in layer.state_dict()


def test_batch_independent_and_not_a_batch_layer():
    layer = normzoo.create("frn", C)
    assert not normzoo.is_batch_dependent("frn")
    x = torch.randn(4, C, 3, 3)
    torch.testing.assert_close(layer(x)[:1], layer(x[:1]))
    with pytest.raises(TypeError, match="batch-independent"):
        normzoo.create("frn", C, momentum=0.1)


def test_bfloat16_as_timm():
    ours = normzoo.create("frn", C, dtype=torch.bfloat16)
    ref = FilterResponseNormTlu2d(C, dtype=torch.bfloat16)
    x = torch.randn(2, C, 5, 5, dtype=torch.bfloat16)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-2, rtol=1e-2)  # bfloat16 rounding


def test_input_without_spatial_dims_warns_with_the_fix_and_is_sign_like():
    """(N, C): nu2 = x^2, so y = weight * x / sqrt(x^2 + eps) + bias -> weight * sign(x) + bias
    as |x| >> sqrt(eps); the layer says so and names the paper's remedy (learn_eps=True)."""
    layer = normzoo.create("frn", C, tlu=False)
    randomize(layer)
    g = torch.Generator().manual_seed(0)
    magnitude = (1 + torch.rand(8, C, generator=g)) * 100  # |x| >> sqrt(1e-5)
    x = magnitude * torch.randint(0, 2, (8, C), generator=g).mul(2).sub(1)
    with pytest.warns(UserWarning, match=r"\(N, C\) without spatial dims.*learn_eps=True"):
        y = layer(x)
    sign_like = layer.weight * torch.sign(x) + layer.bias
    torch.testing.assert_close(y, sign_like, atol=1e-3, rtol=1e-3)


def test_no_warning_with_spatial_dims_or_a_learned_eps():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        normzoo.create("frn", C)(torch.randn(2, C, 3, 3))
        normzoo.create("frn", C, learn_eps=True)(torch.randn(2, C))
