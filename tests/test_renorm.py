"""Batch Renormalization against Ioffe 2017, Algorithm 1, written out here step by step."""

import pytest
import torch
from torch import nn

import normzoo

C = 5


class ReferenceRenorm:
    """Algorithm 1 of the paper, plain autograd, with the schedule of the design contract."""

    def __init__(self, momentum=0.1, eps=1e-5, rmax=3.0, dmax=5.0, warmup=0, ramp=0):
        self.momentum, self.eps = momentum, eps
        self.rmax, self.dmax, self.warmup, self.ramp = rmax, dmax, warmup, ramp
        self.mu = torch.zeros(C, dtype=torch.float64)
        self.var = torch.ones(C, dtype=torch.float64)
        self.steps = 0
        self.last_r = self.last_d = None

    def limits(self, t):
        if t < self.warmup:
            return 1.0, 0.0
        frac = 1.0 if self.ramp == 0 else min(1.0, (t - self.warmup) / self.ramp)
        return 1.0 + (self.rmax - 1.0) * frac, self.dmax * frac

    def train_step(self, x, gamma, beta):
        dims = [0, *range(2, x.dim())]
        shape = [1, C] + [1] * (x.dim() - 2)
        mu_b = x.mean(dims)
        var_b = ((x - mu_b.view(shape)) ** 2).mean(dims)  # biased
        sigma_b = torch.sqrt(var_b + self.eps)
        sigma = torch.sqrt(self.var + self.eps)
        rmax, dmax = self.limits(self.steps)
        r = torch.clamp(sigma_b.detach() / sigma, 1.0 / rmax, rmax)  # stop_gradient
        d = torch.clamp((mu_b.detach() - self.mu) / sigma, -dmax, dmax)  # stop_gradient
        x_hat = (x - mu_b.view(shape)) / sigma_b.view(shape) * r.view(shape) + d.view(shape)
        y = gamma.view(shape) * x_hat + beta.view(shape)
        m = x.numel() // C
        with torch.no_grad():  # running statistics: exactly batch norm's update
            self.mu = self.mu + self.momentum * (mu_b.detach() - self.mu)
            unbiased = var_b.detach() * m / (m - 1)
            self.var = self.var + self.momentum * (unbiased - self.var)
        self.steps += 1
        self.last_r, self.last_d = r, d
        return y

    def eval(self, x, gamma, beta):
        shape = [1, C] + [1] * (x.dim() - 2)
        x_hat = (x - self.mu.view(shape)) / torch.sqrt(self.var.view(shape) + self.eps)
        return gamma.view(shape) * x_hat + beta.view(shape)


def run_both(steps, batches, **opts):
    torch.manual_seed(0)
    layer = normzoo.create("batch_renorm", C, dtype=torch.float64, **opts)
    ref = ReferenceRenorm(**opts)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(C, dtype=torch.float64) + 0.5)
        layer.bias.copy_(torch.randn(C, dtype=torch.float64))
    gamma = layer.weight.detach().clone().requires_grad_()
    beta = layer.bias.detach().clone().requires_grad_()
    rs = []
    for t in range(steps):
        x = batches(t)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        layer.zero_grad()
        gamma.grad = beta.grad = None
        ya, yb = layer(xa), ref.train_step(xb, gamma, beta)
        torch.testing.assert_close(ya, yb, atol=1e-10, rtol=1e-10, msg=f"forward, step {t}")
        g = torch.randn_like(ya)
        ya.backward(g)
        yb.backward(g)
        torch.testing.assert_close(xa.grad, xb.grad, atol=1e-10, rtol=1e-9)
        torch.testing.assert_close(layer.weight.grad, gamma.grad, atol=1e-10, rtol=1e-9)
        torch.testing.assert_close(layer.bias.grad, beta.grad, atol=1e-10, rtol=1e-9)
        torch.testing.assert_close(layer.running_mean, ref.mu, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(layer.running_var, ref.var, atol=1e-12, rtol=1e-12)
        assert int(layer.num_batches_tracked) == t + 1
        rs.append((ref.last_r.clone(), ref.last_d.clone()))
    return layer, ref, rs


def shifted(t):
    # means and scales far from the running stats, so r and d clip at first
    g = torch.Generator().manual_seed(t)
    scale = torch.tensor([0.05, 0.5, 1.0, 4.0, 30.0], dtype=torch.float64).view(1, C, 1, 1)
    offset = torch.tensor([-40.0, -1.0, 0.0, 2.0, 60.0], dtype=torch.float64).view(1, C, 1, 1)
    return torch.randn(6, C, 3, 3, generator=g, dtype=torch.float64) * scale + offset


def test_matches_algorithm_1_with_clipping():
    _, _, rs = run_both(8, shifted, rmax=2.0, dmax=1.5)
    r0, d0 = rs[0]
    # the first steps really clip in both directions, later steps need less correction
    assert r0.max() == 2.0 and r0.min() == 0.5
    assert d0.max() == 1.5 and d0.min() == -1.5


def test_eval_matches_reference_and_exports_to_torch_batchnorm():
    layer, ref, _ = run_both(5, shifted, rmax=2.0, dmax=1.5)
    layer.eval()
    x = shifted(99)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    y = layer(x)
    torch.testing.assert_close(y, ref.eval(x, layer.weight, layer.bias), atol=1e-10, rtol=1e-10)
    for k, v in layer.state_dict().items():  # nothing updated in eval
        assert torch.equal(v, before[k]), k
    bn = nn.BatchNorm2d(C, dtype=torch.float64).eval()
    bn.load_state_dict(layer.state_dict())
    torch.testing.assert_close(bn(x), y, atol=0, rtol=0)


@pytest.mark.parametrize("warmup,ramp", [(3, 0), (0, 4), (2, 3)])
def test_warmup_and_ramp_schedule(warmup, ramp):
    _, ref, rs = run_both(warmup + ramp + 2, shifted, rmax=3.0, dmax=5.0, warmup=warmup, ramp=ramp)
    for t, (r, d) in enumerate(rs):
        rmax, dmax = ref.limits(t)
        if t < warmup:
            assert torch.all(r == 1.0) and torch.all(d == 0.0), t
        assert r.max() <= rmax + 1e-12 and r.min() >= 1.0 / rmax - 1e-12
        assert d.abs().max() <= dmax + 1e-12
    # past the ramp the limits are the full ones and at least one channel clips at them
    r_last, _ = rs[warmup + ramp]
    assert r_last.max() <= 3.0


def test_schedule_values():
    from normzoo.functional import renorm_limits

    steps = torch.arange(8)
    rmax, dmax = renorm_limits(steps, 3.0, 5.0, warmup=2, ramp=4)
    expected_frac = torch.tensor([0, 0, 0, 0.25, 0.5, 0.75, 1, 1], dtype=torch.float64)
    torch.testing.assert_close(rmax, 1 + 2 * expected_frac)
    torch.testing.assert_close(dmax, 5 * expected_frac)


def test_warmup_equals_batch_norm():
    brn = normzoo.create("batch_renorm", C, warmup=10)
    bn = nn.BatchNorm2d(C)
    for t in range(4):
        x = shifted(t).float()
        torch.testing.assert_close(brn(x), bn(x))
    torch.testing.assert_close(brn.running_var, bn.running_var)


def test_r_d_carry_no_gradient_and_eps_applied_once():
    """Gradient w.r.t. x equals batch norm's gradient scaled by r (r, d are constants)."""
    layer = normzoo.create("batch_renorm", C, dtype=torch.float64, affine=False, rmax=10, dmax=10)
    with torch.no_grad():
        layer.running_var.fill_(4.0)
        layer.running_mean.fill_(1.0)
    x = torch.randn(16, C, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    eps = layer.eps
    var_b = x.detach().var(0, unbiased=False)
    r = torch.sqrt(var_b + eps) / torch.sqrt(torch.tensor(4.0 + eps, dtype=torch.float64))
    x2 = x.detach().clone().requires_grad_()
    bn_out = nn.functional.batch_norm(x2, None, None, training=True, eps=eps)
    (gbn,) = torch.autograd.grad(bn_out, x2, g * r)
    torch.testing.assert_close(gx, gbn, atol=1e-12, rtol=1e-10)
    d = (x.detach().mean(0) - 1.0) / torch.sqrt(torch.tensor(4.0 + eps, dtype=torch.float64))
    expected = (x.detach() - x.detach().mean(0)) / torch.sqrt(var_b + eps) * r + d
    torch.testing.assert_close(y.detach(), expected, atol=1e-12, rtol=1e-10)


def test_cumulative_momentum_and_no_running_stats():
    layer = normzoo.create("batch_renorm", C, momentum=None, warmup=0)
    bn = nn.BatchNorm1d(C, momentum=None)
    xs = [torch.randn(10, C) for _ in range(3)]
    for x in xs:
        layer(x), bn(x)
    torch.testing.assert_close(layer.running_mean, bn.running_mean)
    torch.testing.assert_close(layer.running_var, bn.running_var)
    plain = normzoo.create("batch_renorm", C, track_running_stats=False)
    x = torch.randn(10, C) * 5 + 3
    torch.testing.assert_close(plain(x), nn.BatchNorm1d(C, track_running_stats=False)(x))


def test_bad_options():
    with pytest.raises(ValueError, match="rmax"):
        normzoo.create("batch_renorm", C, rmax=0.5)
    with pytest.raises(ValueError, match="warmup"):
        normzoo.create("batch_renorm", C, warmup=-1)
