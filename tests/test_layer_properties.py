"""Hypothesis properties over shapes, options and dtypes for every layer."""

import copy
import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

import normzoo

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def layer_and_input(draw):
    name = draw(st.sampled_from([n for n in normzoo.available() if n != "none"]))
    channels = draw(st.sampled_from([1, 2, 3, 4, 6, 8, 12]))
    rank = draw(st.integers(3 if name == "instance" else 2, 5))
    batch = draw(st.integers(2, 5))
    spatial = [draw(st.integers(2 if name == "instance" else 1, 4)) for _ in range(rank - 2)]
    opts = {"eps": draw(st.sampled_from([1e-5, 1e-3, 0.1])), "affine": draw(st.booleans())}
    if name in ("group", "evonorm_s0"):
        divisors = [d for d in range(1, channels + 1) if channels % d == 0]
        opts["groups"] = draw(st.sampled_from(divisors))
    if not normzoo.is_batch_dependent(name):
        groups = {"layer": 1, "instance": channels}.get(name, opts.get("groups", 1))
        # a group holding a single value normalizes to 0 and is rejected (tested elsewhere)
        assume((channels // groups) * math.prod(spatial) > 1)
    if normzoo.is_batch_dependent(name):
        # batch renorm's paper update has its own rate (momentum is batch norm's update's)
        rate = "renorm_momentum" if name == "batch_renorm" else "momentum"
        opts[rate] = draw(st.sampled_from([None, 0.01, 0.1, 1.0]))
    if name == "batch_renorm":
        opts.update(rmax=draw(st.floats(1.0, 5.0)), dmax=draw(st.floats(0.0, 5.0)))
        opts.update(warmup=0, r_ramp=draw(st.integers(0, 3)), d_ramp=draw(st.integers(0, 3)))
    scale = draw(st.sampled_from([1e-3, 1.0, 100.0]))
    offset = draw(st.sampled_from([0.0, -5.0, 1e3]))
    return name, channels, opts, (batch, channels, *spatial), scale, offset


@SETTINGS
@given(case=layer_and_input(), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_shape_dtype_finite_and_normalized(case, dtype):
    name, channels, opts, shape, scale, offset = case
    layer = normzoo.create(name, channels, dtype=dtype, **opts)
    x = torch.randn(shape, dtype=dtype) * scale + offset
    y = layer(x)
    assert y.shape == x.shape and y.dtype == dtype and torch.isfinite(y).all()
    if name in ("batch",) and not opts["affine"]:
        # training output: zero mean and (biased) variance var / (var + eps) per channel
        dims = [0, *range(2, x.dim())]
        var = x.double().var(dims, unbiased=False)
        mean_y = y.double().mean(dims)
        var_y = y.double().var(dims, unbiased=False)
        tol = 1e-3 if dtype == torch.float32 else 1e-8
        torch.testing.assert_close(
            mean_y, torch.zeros_like(mean_y), atol=tol * (1 + abs(offset) / scale / 1e3), rtol=0
        )
        torch.testing.assert_close(var_y, var / (var + opts["eps"]), atol=tol * 10, rtol=1e-3)
    layer.eval()
    y_eval = layer(x[:1])  # eval works on a batch of one for every norm
    assert y_eval.shape == x[:1].shape and torch.isfinite(y_eval).all()


@SETTINGS
@given(case=layer_and_input())
def test_batch_independent_norms_ignore_other_samples(case):
    name, channels, opts, shape, scale, offset = case
    if normzoo.is_batch_dependent(name):
        return
    layer = normzoo.create(name, channels, **opts)
    x = torch.randn(shape) * scale + offset
    other = torch.randn(shape) * 100
    mixed = torch.cat([x[:1], other[1:]])
    torch.testing.assert_close(layer(mixed)[:1], layer(x)[:1])


@SETTINGS
@given(case=layer_and_input())
def test_matches_torch_reference(case):
    name, channels, opts, shape, scale, offset = case
    x = torch.randn(shape, dtype=torch.float64) * scale + offset
    layer = normzoo.create(name, channels, dtype=torch.float64, **opts)
    if name in ("filter_response", "evonorm_b0", "evonorm_s0", "rms"):
        return  # timm's layers and the papers' equations: test_frn.py, test_evonorm.py, test_rms.py
    if name in ("batch", "batch_renorm", "ghost_batch"):  # ghost: one chunk at batch <= 5
        if name == "batch_renorm":
            return  # covered step by step against Algorithm 1 in test_renorm.py
        ref = nn.BatchNorm3d(channels, opts["eps"], opts["momentum"], opts["affine"]).double()
        # BatchNorm3d accepts only 5-d input: fold the extra dims in, same statistics
        xr = x.reshape(shape[0], channels, -1, 1, 1)
        torch.testing.assert_close(layer(x), ref(xr).reshape(shape))
        torch.testing.assert_close(layer.running_var, ref.running_var)
        return
    groups = {"layer": 1, "instance": channels}.get(name, opts.get("groups"))
    ref = nn.GroupNorm(groups, channels, opts["eps"], opts["affine"]).double()
    torch.testing.assert_close(layer(x), ref(x))


@pytest.mark.parametrize("name", [n for n in normzoo.available() if n != "none"])
def test_bfloat16_training_step(name):
    layer = normzoo.create(
        name, 8, dtype=torch.bfloat16, **({"groups": 4} if name in ("group", "evonorm_s0") else {})
    )
    x = torch.randn(4, 8, 5, 5, dtype=torch.bfloat16, requires_grad=True)
    y = layer(x)
    y.float().square().mean().backward()
    assert y.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all()
    assert layer.weight.grad.dtype == torch.bfloat16


# --- constructor options and non-finite batches (issue 13): every layer validates eps and
# momentum; a NaN/inf training batch never reaches the running statistics silently

BAD_NUMBERS = st.one_of(
    st.floats(max_value=0.0),  # includes -inf, -0.0 and 0
    st.sampled_from([math.nan, math.inf, "0.1", "abc", None, True, [1e-5]]),
)


@SETTINGS
@given(name=st.sampled_from(normzoo.available()), eps=BAD_NUMBERS)
def test_bad_eps_is_rejected_by_every_layer(name, eps):
    with pytest.raises(ValueError, match=r"eps=.*must be a finite number > 0"):
        normzoo.create(name, 32, eps=eps)


@SETTINGS
@given(
    name=st.sampled_from([n for n in normzoo.available() if normzoo.is_batch_dependent(n)]),
    momentum=st.one_of(
        st.floats(max_value=-1e-300),
        st.floats(min_value=1.0, exclude_min=True),
        st.sampled_from([math.nan, math.inf, "0.1", True]),
    ),
)
def test_bad_momentum_is_rejected(name, momentum):
    rate = "renorm_momentum" if name == "batch_renorm" else "momentum"
    with pytest.raises(ValueError, match=rf"{rate}=.*must be a number in \[0, 1\]"):
        normzoo.create(name, 8, **{rate: momentum})
    if name == "batch_renorm":  # batch norm's update keeps momentum as its rate
        with pytest.raises(ValueError, match=r"momentum=.*must be a number in \[0, 1\]"):
            normzoo.create(name, 8, momentum=momentum, sigma_update="variance_ema")


@SETTINGS
@given(
    name=st.sampled_from(normzoo.available()),
    eps=st.floats(min_value=1e-12, max_value=10.0),
    momentum=st.one_of(st.none(), st.floats(0.0, 1.0)),
)
def test_valid_eps_and_momentum_are_accepted(name, eps, momentum):
    opts = {}
    if normzoo.is_batch_dependent(name):
        opts["renorm_momentum" if name == "batch_renorm" else "momentum"] = momentum
    layer = normzoo.create(name, 32, eps=eps, **opts)
    assert name == "none" or layer.eps == eps


def test_group_eps_example_from_the_issue():
    with pytest.raises(ValueError, match=r"group_norm|GroupNorm: eps=-1"):
        normzoo.create("group", 8, groups=4, eps=-1)


FINITE_CHECKED = ["batch", "batch_renorm", "ghost_batch", "evonorm_b0"]


def _finite_checked_layer(name: str, momentum: float | None = 0.1):
    opts = {"warmup": 0, "r_ramp": 0, "d_ramp": 0} if name == "batch_renorm" else {}
    opts["renorm_momentum" if name == "batch_renorm" else "momentum"] = momentum
    if name == "ghost_batch":
        opts["virtual_batch_size"] = 2  # the bad value may sit in the second chunk
    return normzoo.create(name, 3, **opts)


@SETTINGS
@given(
    name=st.sampled_from(FINITE_CHECKED),
    bad=st.sampled_from([math.nan, math.inf, -math.inf]),
    where=st.integers(0, 4 * 3 * 5 - 1),
    momentum=st.sampled_from([0.1, None]),
)
def test_nonfinite_training_batch_raises_and_keeps_running_stats(name, bad, where, momentum):
    """A rejected batch is no step: running statistics and the step counter as before it (also
    for ghost batches whose earlier chunks were clean)."""
    layer = _finite_checked_layer(name, momentum)
    layer(torch.randn(4, 3, 5) + 1)
    before = {k: b.clone() for k, b in layer.named_buffers()}
    assert set(before) == {"running_mean", "running_var", "num_batches_tracked"}
    x = torch.randn(4, 3, 5)
    x.view(-1)[where] = bad
    with pytest.raises(ValueError, match=rf"^{LAYER_NAMES[name]}: .*NaN or inf.*check_finite"):
        layer(x)
    for k, b in layer.named_buffers():
        assert torch.equal(b, before[k]), k
    layer(x.nan_to_num(0.0, 0.0, 0.0))  # the next clean batch is the second step
    steps = 2 * (2 if name == "ghost_batch" else 1)
    assert int(layer.num_batches_tracked) == steps


LAYER_NAMES = {
    "batch": "batch norm",
    "batch_renorm": "batch renorm",
    "ghost_batch": "ghost batch norm",
    "evonorm_b0": "evonorm_b0",
}


@pytest.mark.parametrize("name", FINITE_CHECKED)
def test_nonfinite_check_opt_out(name):
    layer = _finite_checked_layer(name)
    layer.check_finite = False
    x = torch.randn(4, 3)
    x[0, 1] = math.nan
    layer(x)  # torch's behaviour: the running statistics of that channel become NaN
    assert torch.isnan(layer.running_var[1]) and torch.isfinite(layer.running_var[0])
    if name != "evonorm_b0":  # B0 has no running mean (a placeholder, never updated)
        assert torch.isnan(layer.running_mean[1]) and torch.isfinite(layer.running_mean[0])


@pytest.mark.parametrize("name", ["batch", "ghost_batch", "evonorm_b0"])
def test_nonfinite_batch_is_masked_without_host_sync_under_compile(name):
    """Where raising would need a host sync (accelerators, torch.compile), the running
    statistics silently keep their values instead. (batch_renorm's statistics are an opaque
    custom op that runs eagerly even in a compiled graph, so on CPU it raises there too.)"""
    layer = _finite_checked_layer(name)
    layer(torch.randn(4, 3, 5) + 1)
    ref = copy.deepcopy(layer)
    x = torch.randn(4, 3, 5)
    x[3, 1, 2] = math.nan  # in the last ghost chunk
    if name == "ghost_batch":  # the clean first chunk updates, as on an accelerator
        ref(x[:2])
    y = torch.compile(layer, backend="eager", fullgraph=True)(x)
    assert torch.isnan(y).any()
    assert torch.equal(layer.running_mean, ref.running_mean)
    assert torch.equal(layer.running_var, ref.running_var)
