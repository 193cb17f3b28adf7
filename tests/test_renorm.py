"""Batch Renormalization against two independent references written out here:
Ioffe 2017, Algorithm 1 (plain torch autograd), and Keras' ``BatchNormalization(renorm=True)``
update (numpy, transcribed from ``_renorm_correction_and_moments`` and ``call``).

The reference of earlier versions called itself Algorithm 1 but kept batch norm's moving
averages (EMA of the unbiased variance, sigma = sqrt(running_var + eps)); that is not the
paper's update (``sigma := sigma + alpha * (sigma_B - sigma)``) and biases r low at small
batches. Batch norm's update survives as the layer's ``sigma_update="variance_ema"`` option and
is tested against its own reference below.
"""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import normzoo

C = 5
NO_SCHEDULE = {"warmup": 0, "r_ramp": 0, "d_ramp": 0}


class Algorithm1:
    """Ioffe 2017, Algorithm 1, line by line (plain autograd), with the paper's schedule
    (plain batch norm for `warmup` steps, then r_max and d_max ramp linearly and separately).

    Moving averages start from torch's buffers: mu = 0 and sigma = sqrt(1 + eps) (running_var
    = 1 stands for sigma^2 - eps). ``sigma_update="variance_ema"`` replaces the two moving
    average lines by batch norm's update (the layer's non-paper option).
    """

    def __init__(
        self,
        renorm_momentum=0.01,
        eps=1e-5,
        rmax=3.0,
        dmax=5.0,
        warmup=5000,
        r_ramp=35000,
        d_ramp=20000,
        sigma_update="paper",
        momentum=0.1,
    ):
        self.alpha = renorm_momentum if sigma_update == "paper" else momentum
        self.eps, self.sigma_update = eps, sigma_update
        self.rmax, self.dmax, self.warmup, self.r_ramp, self.d_ramp = (
            rmax,
            dmax,
            warmup,
            r_ramp,
            d_ramp,
        )
        self.mu = torch.zeros(C, dtype=torch.float64)
        self.sigma = torch.full((C,), (1.0 + eps) ** 0.5, dtype=torch.float64)
        self.steps = 0
        self.last_r = self.last_d = None

    def limits(self, t):
        def frac(ramp):
            if t < self.warmup:
                return 0.0
            return 1.0 if ramp == 0 else min(1.0, (t - self.warmup) / ramp)

        return 1.0 + (self.rmax - 1.0) * frac(self.r_ramp), self.dmax * frac(self.d_ramp)

    def train_step(self, x, gamma, beta):
        dims = [0, *range(2, x.dim())]
        shape = [1, C] + [1] * (x.dim() - 2)
        m = x.numel() // C
        mu_b = x.mean(dims)  # mu_B = 1/m sum x_i
        sigma_b = torch.sqrt(self.eps + ((x - mu_b.view(shape)) ** 2).mean(dims))
        rmax, dmax = self.limits(self.steps)
        r = torch.clamp(sigma_b / self.sigma, 1.0 / rmax, rmax).detach()  # stop_gradient
        d = torch.clamp((mu_b - self.mu) / self.sigma, -dmax, dmax).detach()  # stop_gradient
        x_hat = (x - mu_b.view(shape)) / sigma_b.view(shape) * r.view(shape) + d.view(shape)
        y = gamma.view(shape) * x_hat + beta.view(shape)
        with torch.no_grad():  # update moving averages
            self.mu = self.mu + self.alpha * (mu_b - self.mu)
            if self.sigma_update == "paper":
                self.sigma = self.sigma + self.alpha * (sigma_b - self.sigma)
            else:  # batch norm's: EMA of the unbiased variance, sigma = sqrt(var + eps)
                var = self.sigma**2 - self.eps
                unbiased = (sigma_b**2 - self.eps) * m / (m - 1)
                self.sigma = torch.sqrt(var + self.alpha * (unbiased - var) + self.eps)
        self.steps += 1
        self.last_r, self.last_d = r, d
        return y

    def infer(self, x, gamma, beta):
        shape = [1, C] + [1] * (x.dim() - 2)
        return gamma.view(shape) * (x - self.mu.view(shape)) / self.sigma.view(shape) + beta.view(
            shape
        )


def layer_and_reference(**opts):
    torch.manual_seed(0)
    layer = normzoo.create("batch_renorm", C, dtype=torch.float64, **opts)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(C, dtype=torch.float64) + 0.5)
        layer.bias.copy_(torch.randn(C, dtype=torch.float64))
    return layer, Algorithm1(**opts)


def run_both(steps, batches, **opts):
    layer, ref = layer_and_reference(**opts)
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
        sigma = torch.sqrt(layer.running_var + layer.eps)
        torch.testing.assert_close(sigma, ref.sigma, atol=1e-12, rtol=1e-12)
        assert int(layer.num_batches_tracked) == t + 1
        rs.append((ref.last_r.clone(), ref.last_d.clone()))
    return layer, ref, rs


def shifted(t):
    # means and scales far from the running stats, so r and d clip at first
    g = torch.Generator().manual_seed(t)
    scale = torch.tensor([0.05, 0.5, 1.0, 4.0, 30.0], dtype=torch.float64).view(1, C, 1, 1)
    offset = torch.tensor([-40.0, -1.0, 0.0, 2.0, 60.0], dtype=torch.float64).view(1, C, 1, 1)
    return torch.randn(6, C, 3, 3, generator=g, dtype=torch.float64) * scale + offset


@pytest.mark.parametrize("sigma_update", ["paper", "variance_ema"])
def test_matches_algorithm_1_with_clipping(sigma_update):
    rate = {"renorm_momentum": 0.3} if sigma_update == "paper" else {"momentum": 0.3}
    _, _, rs = run_both(
        8, shifted, rmax=2.0, dmax=1.5, sigma_update=sigma_update, **rate, **NO_SCHEDULE
    )
    r0, d0 = rs[0]
    # the first steps really clip in both directions, later steps need less correction
    assert r0.max() == 2.0 and r0.min() == 0.5
    assert d0.max() == 1.5 and d0.min() == -1.5


def test_matches_algorithm_1_without_affine_and_channels_last():
    layer = normzoo.create("batch_renorm", C, dtype=torch.float64, affine=False, **NO_SCHEDULE)
    ref = Algorithm1(**NO_SCHEDULE)
    one, zero = torch.ones(C, dtype=torch.float64), torch.zeros(C, dtype=torch.float64)
    for t in range(3):
        x = shifted(t).contiguous(memory_format=torch.channels_last)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = layer(xa), ref.train_step(xb, one, zero)
        torch.testing.assert_close(ya, yb, atol=1e-10, rtol=1e-10)
        g = torch.randn_like(ya)
        ya.backward(g), yb.backward(g)
        torch.testing.assert_close(xa.grad, xb.grad, atol=1e-10, rtol=1e-9)


def test_eval_matches_reference_and_exports_to_torch_batchnorm():
    layer, ref, _ = run_both(5, shifted, rmax=2.0, dmax=1.5, renorm_momentum=0.2, **NO_SCHEDULE)
    layer.eval()
    x = shifted(99)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    y = layer(x)
    torch.testing.assert_close(y, ref.infer(x, layer.weight, layer.bias), atol=1e-10, rtol=1e-10)
    for k, v in layer.state_dict().items():  # nothing updated in eval
        assert torch.equal(v, before[k]), k
    bn = nn.BatchNorm2d(C, dtype=torch.float64).eval()
    bn.load_state_dict(layer.state_dict())
    torch.testing.assert_close(bn(x), y, atol=0, rtol=0)


class KerasRenorm:
    """tf.keras ``BatchNormalization(renorm=True)`` (TF 2.x, tensorflow/python/keras/layers/
    normalization/batch_normalization.py), non-fused path, transcribed to numpy.

    Keras counts momenta as the weight of the *old* value; ``_assign_moving_average(var,
    value, momentum)`` is ``var -= (var - value) * (1 - momentum)``. Variables: moving_mean
    (zeros), moving_variance (ones), moving_stddev = sqrt(moving_variance), renorm_mean
    (zeros), renorm_stddev = sqrt(moving_variance); biased batch moments (``nn.moments``).
    """

    def __init__(self, momentum, renorm_momentum, eps, rmax, dmax):
        self.momentum, self.renorm_momentum, self.epsilon = momentum, renorm_momentum, eps
        self.renorm_clipping = {"rmin": 1.0 / rmax, "rmax": rmax, "dmax": dmax}
        self.moving_mean = np.zeros(C)
        self.moving_variance = np.ones(C)
        self.moving_stddev = np.sqrt(self.moving_variance)
        self.renorm_mean = np.zeros(C)
        self.renorm_stddev = np.sqrt(self.moving_variance)

    @staticmethod
    def _assign_moving_average(variable, value, momentum):
        return variable - (variable - value) * (1.0 - momentum)

    def _renorm_correction_and_moments(self, mean, variance):
        stddev = np.sqrt(variance + self.epsilon)
        renorm_mean = self.renorm_mean
        renorm_stddev = np.maximum(self.renorm_stddev, np.sqrt(self.epsilon))
        r = stddev / renorm_stddev
        d = (mean - renorm_mean) / renorm_stddev
        r = np.minimum(np.maximum(r, self.renorm_clipping["rmin"]), self.renorm_clipping["rmax"])
        dmax = self.renorm_clipping["dmax"]
        d = np.minimum(np.maximum(d, -dmax), dmax)
        self.renorm_mean = self._assign_moving_average(self.renorm_mean, mean, self.renorm_momentum)
        self.renorm_stddev = self._assign_moving_average(
            self.renorm_stddev, stddev, self.renorm_momentum
        )
        return r, d, mean, variance

    def call(self, x, gamma, beta, training):
        axes = (0, *range(2, x.ndim))
        shape = (1, C) + (1,) * (x.ndim - 2)
        if not training:
            mean, variance, scale, offset = self.moving_mean, self.moving_variance, gamma, beta
        else:
            mean, variance = x.mean(axes), x.var(axes)  # nn.moments: biased
            r, d, new_mean, new_variance = self._renorm_correction_and_moments(mean, variance)
            scale, offset = r * gamma, d * gamma + beta  # _compose_transforms(r, d, scale, offset)
            self.moving_mean = self._assign_moving_average(
                self.moving_mean, new_mean, self.momentum
            )
            self.moving_stddev = self._assign_moving_average(
                self.moving_stddev, np.sqrt(new_variance + self.epsilon), self.momentum
            )
            self.moving_variance = np.maximum(self.moving_stddev**2 - self.epsilon, 0.0)  # relu
        inv = 1.0 / np.sqrt(variance.reshape(shape) + self.epsilon) * scale.reshape(shape)
        return x * inv + (offset.reshape(shape) - mean.reshape(shape) * inv)


def test_matches_keras_renorm_update():
    """Keras with momentum = renorm_momentum (both 0.99 by default) is the paper's single pair
    of moving averages; the layer's renorm_momentum=0.01 is Keras' 0.99."""
    eps, keras_momentum = 1e-3, 0.99
    keras = KerasRenorm(keras_momentum, keras_momentum, eps, rmax=2.0, dmax=1.5)
    layer = normzoo.create(
        "batch_renorm",
        C,
        dtype=torch.float64,
        eps=eps,
        rmax=2.0,
        dmax=1.5,
        renorm_momentum=1 - keras_momentum,
        **NO_SCHEDULE,
    )
    with torch.no_grad():  # Keras starts from moving_stddev = 1, torch from running_var = 1
        layer.running_var.fill_(1.0 - eps)
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
    gamma, beta = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    for t in range(40):
        x = shifted(t)
        y = layer(x)
        np.testing.assert_allclose(
            y.detach().numpy(), keras.call(x.numpy(), gamma, beta, True), rtol=1e-9, atol=1e-9
        )
        np.testing.assert_allclose(layer.running_mean.numpy(), keras.moving_mean, rtol=1e-12)
        np.testing.assert_allclose(
            layer.running_var.numpy(), keras.moving_variance, rtol=1e-10, atol=1e-12
        )
    layer.eval()
    x = shifted(99)
    np.testing.assert_allclose(
        layer(x).detach().numpy(), keras.call(x.numpy(), gamma, beta, False), rtol=1e-10
    )


@pytest.mark.parametrize("values_per_channel", [4, 8])
def test_r_is_unbiased_on_stationary_data(values_per_channel):
    """E[r] = 1 with the paper's sigma at 4 and 8 values per channel; batch norm's convention
    (sigma from the EMA of the unbiased variance) gives E[sigma_B] / sigma, about 0.80 and 0.90
    here (sqrt(2/m) * Gamma(m/2) / Gamma((m-1)/2) for normal data)."""
    channels, steps, burn_in = 64, 1500, 500
    g = torch.Generator().manual_seed(0)
    shape = (values_per_channel // 2, channels, 2)
    mean_r = {}
    for sigma_update in ("paper", "variance_ema"):
        rate = {"renorm_momentum": 0.01} if sigma_update == "paper" else {"momentum": 0.01}
        layer = normzoo.create(
            "batch_renorm",
            channels,
            dtype=torch.float64,
            rmax=100.0,
            dmax=100.0,
            sigma_update=sigma_update,
            **rate,
            **NO_SCHEDULE,
        )
        with torch.no_grad():  # start at the true statistics: N(3, 2^2)
            layer.running_mean.fill_(3.0)
            layer.running_var.fill_(4.0)
        rs = []
        for t in range(steps):
            x = torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 3
            sigma = torch.sqrt(layer.running_var + layer.eps)  # before this step's update
            sigma_b = torch.sqrt(x.var((0, 2), unbiased=False) + layer.eps)
            with torch.no_grad():
                layer(x)
            if t >= burn_in:
                rs.append(sigma_b / sigma)
        mean_r[sigma_update] = torch.stack(rs).mean().item()
    assert abs(mean_r["paper"] - 1.0) < 0.02, mean_r
    expected_old = {4: 0.80, 8: 0.90}[values_per_channel]
    assert abs(mean_r["variance_ema"] - expected_old) < 0.03, mean_r


@pytest.mark.parametrize("warmup,r_ramp,d_ramp", [(3, 0, 0), (0, 4, 2), (2, 3, 5)])
def test_warmup_and_separate_ramps(warmup, r_ramp, d_ramp):
    steps = warmup + max(r_ramp, d_ramp) + 2
    _, ref, rs = run_both(
        steps, shifted, rmax=3.0, dmax=5.0, warmup=warmup, r_ramp=r_ramp, d_ramp=d_ramp
    )
    for t, (r, d) in enumerate(rs):
        rmax, dmax = ref.limits(t)
        if t < warmup:
            assert torch.all(r == 1.0) and torch.all(d == 0.0), t
        assert r.max() <= rmax + 1e-12 and r.min() >= 1.0 / rmax - 1e-12
        assert d.abs().max() <= dmax + 1e-12


def test_schedule_values():
    from normzoo.functional import renorm_limits

    steps = torch.arange(10)
    rmax, dmax = renorm_limits(steps, 3.0, 5.0, warmup=2, r_ramp=4, d_ramp=2)
    r_frac = torch.tensor([0, 0, 0, 0.25, 0.5, 0.75, 1, 1, 1, 1], dtype=torch.float64)
    d_frac = torch.tensor([0, 0, 0, 0.5, 1, 1, 1, 1, 1, 1], dtype=torch.float64)
    torch.testing.assert_close(rmax, 1 + 2 * r_frac)
    torch.testing.assert_close(dmax, 5 * d_frac)


def test_default_schedule_is_the_papers():
    """Ioffe 2017, Sec. 4.1: plain BN for 5k steps, r_max 1 -> 3 by 40k, d_max 0 -> 5 by 25k."""
    layer = normzoo.create("batch_renorm", C)
    assert (layer.rmax, layer.dmax, layer.warmup) == (3.0, 5.0, 5000)
    assert layer.warmup + layer.r_ramp == 40000 and layer.warmup + layer.d_ramp == 25000
    assert layer.renorm_momentum == 0.01 and layer.sigma_update == "paper"


def test_warmup_equals_batch_norm():
    # float64: channel 0 (offset 800 standard deviations) is ill-conditioned in float32, where
    # torch's train and eval kernels already differ by the input's rounding (~5e-5)
    brn = normzoo.create("batch_renorm", C, warmup=10, dtype=torch.float64)
    bn = nn.BatchNorm2d(C, dtype=torch.float64)
    for t in range(4):
        x = shifted(t)
        torch.testing.assert_close(brn(x), bn(x), atol=1e-10, rtol=1e-10)
    ema = normzoo.create("batch_renorm", C, warmup=10, sigma_update="variance_ema")
    bn = nn.BatchNorm2d(C)
    for t in range(4):
        x = shifted(t).float()
        torch.testing.assert_close(ema(x), bn(x), atol=2e-4, rtol=1e-5)
    torch.testing.assert_close(ema.running_var, bn.running_var)


def test_r_d_carry_no_gradient_and_eps_applied_once():
    """Gradient w.r.t. x equals batch norm's gradient scaled by r (r, d are constants)."""
    layer = normzoo.create(
        "batch_renorm", C, dtype=torch.float64, affine=False, rmax=10, dmax=10, **NO_SCHEDULE
    )
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


def test_cumulative_averages_and_no_running_stats():
    layer = normzoo.create("batch_renorm", C, momentum=None, sigma_update="variance_ema")
    bn = nn.BatchNorm1d(C, momentum=None)
    xs = [torch.randn(10, C, dtype=torch.float64) * 3 + 1 for _ in range(3)]
    for x in xs:
        layer(x.float()), bn(x.float())
    torch.testing.assert_close(layer.running_mean, bn.running_mean)
    torch.testing.assert_close(layer.running_var, bn.running_var)
    # the paper's update with renorm_momentum=None: mu and sigma are plain averages of the steps'
    paper = normzoo.create("batch_renorm", C, dtype=torch.float64, renorm_momentum=None)
    for x in xs:
        paper(x)
    sigma_bs = torch.stack([torch.sqrt(x.var(0, unbiased=False) + paper.eps) for x in xs])
    mu_bs = torch.stack([x.mean(0) for x in xs])
    torch.testing.assert_close(paper.running_mean, mu_bs.mean(0))
    torch.testing.assert_close(torch.sqrt(paper.running_var + paper.eps), sigma_bs.mean(0))
    plain = normzoo.create("batch_renorm", C, track_running_stats=False)
    x = torch.randn(10, C) * 5 + 3
    torch.testing.assert_close(plain(x), nn.BatchNorm1d(C, track_running_stats=False)(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_eager_number_path_equals_tensor_path_bit_for_bit(dtype, channels_last):
    """On CPU in eager mode the layer reads its step counter as a number and skips the custom
    op (fewer scalar ops); the tensor path (accelerators, torch.compile) must give the same
    bits: outputs, gradients and running buffers, with r and d clipped."""
    from normzoo import functional as nzf

    layers = [
        normzoo.create("batch_renorm", 6, warmup=1, r_ramp=2, d_ramp=2, rmax=1.3, dmax=0.4)
        .to(dtype)
        .train()
        for _ in range(2)
    ]
    gen = torch.Generator().manual_seed(3)
    for t in range(6):
        x = torch.randn(4, 6, 3, 3, generator=gen, dtype=dtype) * (4.0 if t % 2 else 0.25) + 2 * t
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        g = torch.randn(x.shape, generator=gen, dtype=dtype)
        results = []
        for layer, as_tensor in zip(layers, (False, True), strict=True):
            rmax, dmax = layer._limits()
            assert isinstance(rmax, float)  # the eager CPU path reads numbers
            if as_tensor:
                rmax, dmax = (torch.tensor(v, dtype=torch.float64) for v in (rmax, dmax))
            xi = x.clone().requires_grad_()
            _, rate = layer._step()
            y = nzf.batch_renorm(
                xi,
                layer.running_mean,
                layer.running_var,
                layer.weight,
                layer.bias,
                rate,
                layer.eps,
                rmax,
                dmax,
            )
            layer._count()
            y.backward(g)
            results.append((y, xi.grad, layer.weight.grad.clone(), layer.bias.grad.clone()))
            layer.weight.grad = layer.bias.grad = None
        for a, b in zip(*results, strict=True):
            assert torch.equal(a, b)
        for name, buffer in layers[0].state_dict().items():
            assert torch.equal(buffer, layers[1].state_dict()[name]), name
    # the batch scale alternates (x4, x0.25) and the mean moves: r clipped at both ends, d too


def test_compiled_fullgraph_matches_eager_with_backward():
    """No graph breaks (fullgraph=True) in the training step, forward and backward, through AOT
    autograd ("aot_eager"), whose partitioner used to recompute r from running_var after the
    step had updated it (wrong weight gradients, also before the one-pass implementation); the
    statistics step is now an opaque custom op (normzoo::batch_renorm_statistics_)."""
    torch._dynamo.reset()
    eager = normzoo.create("batch_renorm", C, warmup=1, r_ramp=2, d_ramp=3)
    compiled_layer = copy.deepcopy(eager)
    compiled = torch.compile(compiled_layer, backend="aot_eager", fullgraph=True)
    for t in range(5):
        x = shifted(t).float()
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = compiled(xa), eager(xb)
        torch.testing.assert_close(ya, yb, atol=1e-4, rtol=1e-5)
        g = torch.randn_like(ya)
        ya.backward(g), yb.backward(g)
        torch.testing.assert_close(xa.grad, xb.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(compiled_layer.weight.grad, eager.weight.grad, atol=1e-3, rtol=1e-4)
    for k, v in eager.state_dict().items():
        torch.testing.assert_close(compiled_layer.state_dict()[k], v, msg=k)


def test_bad_options():
    with pytest.raises(ValueError, match="rmax"):
        normzoo.create("batch_renorm", C, rmax=0.5)
    with pytest.raises(ValueError, match="warmup"):
        normzoo.create("batch_renorm", C, warmup=-1)
    with pytest.raises(ValueError, match="r_ramp"):
        normzoo.create("batch_renorm", C, r_ramp=1.5)
    with pytest.raises(ValueError, match="sigma_update='sigma'.*'paper'"):
        normzoo.create("batch_renorm", C, sigma_update="sigma")
    with pytest.raises(ValueError, match="renorm_momentum=1.5"):
        normzoo.create("batch_renorm", C, renorm_momentum=1.5)
    with pytest.raises(ValueError, match="momentum=0.5 applies only to.*renorm_momentum=0.5"):
        normzoo.create("batch_renorm", C, momentum=0.5)
    with pytest.raises(TypeError, match="ramp"):
        normzoo.create("batch_renorm", C, ramp=10)


# --- the moving averages' rate for compressed schedules (renorm_momentum="auto") ---


@pytest.mark.parametrize(
    "schedule, rate",
    [
        ((5000, 35000, 20000), 0.01),  # the paper's own schedule: the paper's rate
        ((10000, 70000, 40000), 0.01),  # longer than the paper's: never below 0.01
        ((2500, 17500, 10000), 0.02),  # halved: 0.01 * 2
        ((500, 3000, 3500), 0.1),  # 40000 / 4000 = 10: 0.01 * 10, at the cap
        ((20, 140, 80), 0.1),  # quick.yaml's /250: 2.5, capped at 0.1
        ((0, 0, 0), 0.1),  # no schedule at all: the cap
    ],
)
def test_auto_rate_scales_the_papers_rate_with_the_schedule(schedule, rate):
    from normzoo.layers.renorm import auto_renorm_momentum

    warmup, r_ramp, d_ramp = schedule
    assert auto_renorm_momentum(warmup, r_ramp, d_ramp) == pytest.approx(rate, rel=1e-12)
    layer = normzoo.create(
        "batch_renorm", C, renorm_momentum="auto", warmup=warmup, r_ramp=r_ramp, d_ramp=d_ramp
    )
    assert layer.renorm_momentum == "auto" and layer.train()._step()[1] == pytest.approx(rate)
    assert "renorm_momentum='auto'" in repr(layer)


def test_auto_rate_is_algorithm_1_at_the_scaled_rate():
    schedule = {"warmup": 1000, "r_ramp": 5000, "d_ramp": 4000, "rmax": 2.0, "dmax": 1.5}
    layer, _ = layer_and_reference(renorm_momentum="auto", **schedule)
    ref = Algorithm1(renorm_momentum=0.01 * 40000 / 6000, **schedule)  # 0.0667
    ref.steps = layer.num_batches_tracked.fill_(1500).item()  # inside both ramps
    gamma, beta = layer.weight.detach(), layer.bias.detach()
    for t in range(6):
        x = shifted(t)
        torch.testing.assert_close(layer(x), ref.train_step(x, gamma, beta), atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(layer.running_mean, ref.mu, atol=1e-12, rtol=1e-12)
        sigma = torch.sqrt(layer.running_var + layer.eps)
        torch.testing.assert_close(sigma, ref.sigma, atol=1e-12, rtol=1e-12)


def _train_on_stationary_data(renorm_momentum, steps=160, batch=32):
    """quick.yaml's schedule (the paper's / 250: r_max 3 by step 160) on data with known
    population statistics; returns the layer, those statistics and the r of the last 20 steps."""
    mean = torch.tensor([1.99, -3.0, 0.0, 0.5, 10.0], dtype=torch.float64)
    std = torch.tensor([1.0, 0.5, 2.0, 4.0, 0.2], dtype=torch.float64)
    layer = normzoo.create(
        "batch_renorm",
        C,
        warmup=20,
        r_ramp=140,
        d_ramp=80,
        renorm_momentum=renorm_momentum,
        dtype=torch.float64,
    )
    g = torch.Generator().manual_seed(0)
    rs = []
    for t in range(steps):
        x = torch.randn(batch, C, 4, 4, generator=g, dtype=torch.float64)
        x = x * std.view(1, C, 1, 1) + mean.view(1, C, 1, 1)
        sigma = torch.sqrt(layer.running_var + layer.eps)
        if t >= steps - 20:
            rs.append(x.std((0, 2, 3), unbiased=False) / sigma)
        layer(x)
    return layer, mean, std, torch.stack(rs).mean(0)


def test_auto_rate_averages_converge_to_the_population_over_the_schedule():
    """Over quick.yaml's 160-step schedule at rate "auto" (0.1): |mu - mean| / std < 0.05 and
    |sigma / std - 1| < 0.05 per channel, and the mean r of the last 20 steps is within 0.05 of
    1. The EMA's noise is sqrt(0.1 / 1.9 / 512) = 0.01 std (512 values per channel and batch),
    the initial value's weight 0.9^160 < 1e-7: the tolerance is 5 standard errors. At the
    paper's 0.01 the same run is stale (weight 0.99^160 = 0.2 on mu = 0, sigma = 1): the
    check must fail there, so it can."""
    layer, mean, std, r = _train_on_stationary_data("auto")
    sigma = torch.sqrt(layer.running_var + layer.eps)
    assert ((layer.running_mean - mean).abs() / std).max() < 0.05
    assert (sigma / std - 1).abs().max() < 0.05
    assert (r - 1).abs().max() < 0.05
    stale, mean, std, r = _train_on_stationary_data(0.01)
    assert ((stale.running_mean - mean).abs() / std).max() > 0.05
    assert (r - 1).abs().max() > 0.05


def test_bad_renorm_momentum_string():
    with pytest.raises(ValueError, match="renorm_momentum='fast'.*'auto'"):
        normzoo.create("batch_renorm", C, renorm_momentum="fast")
