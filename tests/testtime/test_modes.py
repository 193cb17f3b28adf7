"""stats_mode against statistics computed directly in the test."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from batch_layer_reference import (
    KINDS,
    SHAPES,
    assert_same_state,
    make_layer,
    normalize,
    per_channel,
    state,
)
from timm.layers import BatchNormAct2d
from torch import nn

from normzoo.testtime import STATS_MODES, stats_mode


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_running_and_batch_modes(kind, shape, training):
    layer = make_layer(kind, shape[1], len(shape)).train(training)
    x = torch.randn(shape) * 2 + 1
    before = state(layer)
    with torch.no_grad():
        with stats_mode(layer, "running"):
            out_running = layer(x)
        with stats_mode(layer, "batch"):
            out_batch = layer(x)
    expect_running = normalize(x, layer.running_mean, layer.running_var, layer)
    flat = per_channel(x)
    expect_batch = normalize(x, flat.mean(1), flat.var(1, unbiased=False), layer)
    torch.testing.assert_close(out_running, expect_running, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_batch, expect_batch, rtol=1e-4, atol=1e-4)
    assert_same_state(before, layer)
    assert layer.training is training


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [*SHAPES, (1, 3), (1, 3, 4, 4)])
def test_mix_mode_formula(kind, shape):
    layer = make_layer(kind, shape[1], len(shape)).eval()
    x = torch.randn(shape) * 3 - 2
    prior = 16
    before = state(layer)
    with torch.no_grad(), stats_mode(layer, "mix", prior=prior):
        out = layer(x)
    flat = per_channel(x)
    n = shape[0]  # samples in the batch, not values per channel (Schneider et al. 2020)
    mean = (prior * layer.running_mean + n * flat.mean(1)) / (prior + n)
    var = (prior * layer.running_var + n * flat.var(1, unbiased=False)) / (prior + n)
    torch.testing.assert_close(out, normalize(x, mean, var, layer), rtol=1e-4, atol=1e-4)
    assert_same_state(before, layer)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("momentum", [None, 0.3])
def test_online_mode_ema_and_restore(kind, momentum):
    layer = make_layer(kind, 3, 4).eval()
    before = state(layer)
    mean, var = layer.running_mean.clone(), layer.running_var.clone()
    rate = 0.1 if momentum is None else momentum  # layer default momentum is 0.1
    with torch.no_grad(), stats_mode(layer, "online", momentum=momentum):
        for step in range(3):
            x = torch.randn(4, 3, 3, 3) + step
            out = layer(x)
            flat = per_channel(x)
            mean = (1 - rate) * mean + rate * flat.mean(1)
            var = (1 - rate) * var + rate * flat.var(1, unbiased=True)
            torch.testing.assert_close(out, normalize(x, mean, var, layer), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(layer.running_mean, mean)
            assert int(layer.num_batches_tracked) == 5 + step + 1
    assert_same_state(before, layer)


def test_batch_of_one_value_per_channel_is_a_clear_error():
    layer = make_layer("torch", 3, 2).eval()
    with pytest.raises(ValueError, match="one value per channel.*'mix' with a prior"):
        with stats_mode(layer, "batch"):
            layer(torch.randn(1, 3))
    # the failed forward left nothing behind
    assert layer.running_mean is not None and not layer._forward_hooks


@pytest.mark.parametrize("kind", ["torch", "zoo_batch"])
def test_batch_mode_at_batch_size_one_uses_spatial_statistics(kind):
    layer = make_layer(kind, 3, 4).eval()
    x = torch.randn(1, 3, 4, 4)
    with torch.no_grad(), stats_mode(layer, "batch"):
        out = layer(x)
    flat = per_channel(x)
    torch.testing.assert_close(out, normalize(x, flat.mean(1), flat.var(1, unbiased=False), layer))
    with torch.no_grad(), stats_mode(layer, "running"):
        out = layer(torch.ones(1, 3, 4, 4))
    expect = normalize(torch.ones(1, 3, 4, 4), layer.running_mean, layer.running_var, layer)
    torch.testing.assert_close(out, expect)


@pytest.mark.parametrize("kind", ["torch", "zoo_batch", "sync"])
def test_layer_without_running_stats(kind):
    layer = make_layer(kind, 3, 3, track_running_stats=False)
    model = nn.Sequential(nn.Identity(), layer)
    for mode, opts in [("running", {}), ("mix", {"prior": 4}), ("online", {})]:
        with pytest.raises(ValueError, match="'1'.*track_running_stats=False"):
            with stats_mode(model, mode, **opts):
                pass
    x = torch.randn(4, 3, 6)
    with torch.no_grad(), stats_mode(model, "batch"):
        out = model(x)
    flat = per_channel(x)
    torch.testing.assert_close(out, normalize(x, flat.mean(1), flat.var(1, unbiased=False), layer))


@pytest.mark.parametrize(
    ("mode", "opts", "match"),
    [
        ("mix", {}, "needs prior"),
        ("mix", {"prior": -1}, r"in \[0, inf\]"),  # prior 0 and inf are valid (issue 11)
        ("mix", {"prior": float("nan")}, r"in \[0, inf\]"),
        ("mix", {"prior": 4, "var": "sample"}, "biased"),
        ("running", {"var": "unbiased"}, "only applies"),
        ("batch", {"prior": 3}, "only applies"),
        ("online", {"momentum": 1.5}, r"\(0, 1\]"),
        ("averaged", {}, "running, batch, mix, online"),
    ],
)
def test_bad_arguments(mode, opts, match):
    with pytest.raises(ValueError, match=match):
        with stats_mode(nn.BatchNorm1d(2), mode, **opts):
            pass


def test_restored_on_exception_and_nesting():
    layer = make_layer("torch", 3, 4).train()
    x = torch.randn(4, 3, 2, 2)
    flat = per_channel(x)
    batch_expect = normalize(x, flat.mean(1), flat.var(1, unbiased=False), layer)
    running_expect = normalize(x, layer.running_mean, layer.running_var, layer)
    before = state(layer)
    with pytest.raises(RuntimeError, match="boom"):
        with stats_mode(layer, "online", momentum=0.5):
            layer(x)
            raise RuntimeError("boom")
    assert_same_state(before, layer)
    assert not layer._forward_hooks and not layer._forward_pre_hooks
    with torch.no_grad(), stats_mode(layer, "batch"):
        torch.testing.assert_close(layer(x), batch_expect)
        with stats_mode(layer, "running"):
            torch.testing.assert_close(layer(x), running_expect)
            with stats_mode(layer, "batch"):
                torch.testing.assert_close(layer(x), batch_expect)
            torch.testing.assert_close(layer(x), running_expect)
        torch.testing.assert_close(layer(x), batch_expect)
    assert_same_state(before, layer)
    assert layer.training and not layer._forward_hooks
    # a forward that fails inside the context (wrong channel count) leaves the layer intact
    with stats_mode(layer, "running"), pytest.raises(RuntimeError):
        layer(torch.randn(4, 5, 2, 2))
    assert layer.training and torch.equal(layer.running_mean, before["running_mean"])


def test_hooks_requires_grad_and_flags_untouched():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Dropout(0.5), nn.ReLU())
    model[0].weight.requires_grad_(False)
    model[1].eval()
    calls = []
    model[1].register_forward_pre_hook(lambda m, a: calls.append(("pre", m.training)))
    model[1].register_forward_hook(lambda m, a, o: calls.append(("post", m.running_mean)))
    pre, post = dict(model[1]._forward_pre_hooks), dict(model[1]._forward_hooks)
    flags = [m.training for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]
    with stats_mode(model, "mix", prior=8):
        model(torch.randn(2, 2, 5, 5)).sum().backward()
        assert [m.training for m in model.modules()] == flags
    assert calls == [("pre", False), ("post", model[1].running_mean)]  # user hook sees buffers
    assert [m.training for m in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == grads
    assert model[1].weight.grad is not None and model[0].weight.grad is None
    assert model[1]._forward_pre_hooks == pre and model[1]._forward_hooks == post


def test_batch_independent_norms_are_a_noop():
    model = nn.Sequential(nn.Conv2d(2, 4, 1), nn.GroupNorm(2, 4), nn.LayerNorm([4, 3, 3]))
    x = torch.randn(2, 2, 3, 3)
    expect = model(x)
    for mode in STATS_MODES:
        with stats_mode(model, mode, prior=4 if mode == "mix" else None):
            torch.testing.assert_close(model(x), expect)


@pytest.mark.parametrize("mode", ["batch", "running", "mix"])
def test_timm_batchnorm_act_still_applies_activation(mode):
    layer = BatchNormAct2d(3, act_layer=nn.ReLU)
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        layer.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    layer.train()
    x = torch.randn(4, 3, 3, 3)
    flat = per_channel(x)
    batch = (flat.mean(1), flat.var(1, unbiased=False))
    running = (layer.running_mean, layer.running_var)
    stats = {"batch": batch, "running": running}.get(mode)
    if mode == "mix":
        stats = tuple((4 * r + 4 * b) / 8 for r, b in zip(running, batch, strict=True))
    before = state(layer)
    with torch.no_grad(), stats_mode(layer, mode, prior=4 if mode == "mix" else None):
        out = layer(x)
    expect = torch.relu(normalize(x, *stats, layer))
    torch.testing.assert_close(out, expect, rtol=1e-4, atol=1e-4)
    assert (out >= 0).all() and (out == 0).any()
    assert_same_state(before, layer)


def test_timm_batchnorm_act_drop_still_runs_in_training():
    layer = BatchNormAct2d(3, act_layer=nn.ReLU, drop_layer=partial(nn.Dropout, 0.5)).train()
    x = torch.randn(8, 3, 4, 4)
    with torch.no_grad(), stats_mode(layer, "running"):
        out = layer(x)
    kept = torch.relu(normalize(x, layer.running_mean, layer.running_var, layer)) * 2
    dropped = (out == 0) & (kept > 0)
    assert dropped.any() and layer.drop.training
    torch.testing.assert_close(out[~dropped], kept[~dropped])


# ------------------------------------------------------------------------------------------
# mix at the ends of the prior sweep, the two variance conventions (issue 11)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [*SHAPES, (1, 3, 4, 4)])
def test_mix_prior_zero_is_batch_and_infinite_prior_is_running(kind, shape):
    layer = make_layer(kind, shape[1], len(shape)).eval()
    x = torch.randn(shape) * 3 - 2
    before = state(layer)
    with torch.no_grad():
        with stats_mode(layer, "batch"):
            batch = layer(x)
        with stats_mode(layer, "running"):
            running = layer(x)
        with stats_mode(layer, "mix", prior=0):
            torch.testing.assert_close(layer(x), batch, rtol=1e-5, atol=1e-5)
        with stats_mode(layer, "mix", prior=float("inf")):
            assert torch.equal(layer(x), running)
        with stats_mode(layer, "mix", prior=float("inf"), var="unbiased"):
            assert torch.equal(layer(x), running)
    assert_same_state(before, layer)


def test_mix_at_batch_size_one_without_spatial_dims():
    layer = make_layer("torch", 3, 2).eval()
    x = torch.randn(1, 3)
    expect = normalize(x, layer.running_mean, layer.running_var, layer)
    with torch.no_grad(), stats_mode(layer, "mix", prior=float("inf"), var="unbiased"):
        torch.testing.assert_close(layer(x), expect)
    # one value per channel: no unbiased variance, and prior 0 is batch mode's error
    for prior, var in [(4, "unbiased"), (0, "unbiased")]:
        with pytest.raises(ValueError, match="one value per channel"):
            with stats_mode(layer, "mix", prior=prior, var=var):
                layer(x)


class BayesianBatchNorm(nn.Module):
    """bethgelab/robustness, robusta/batchnorm/bn.py, ``BayesianBatchNorm`` (Schneider et al.
    2020's code), transcribed: ``prior`` is the weight N / (N + n) of the source statistics, the
    batch statistics come from a momentum-1 BatchNorm2d in train mode (unbiased variance)."""

    def __init__(self, layer, prior):
        assert prior >= 0 and prior <= 1
        super().__init__()
        self.layer = layer
        self.layer.eval()
        self.norm = nn.BatchNorm2d(self.layer.num_features, affine=False, momentum=1.0)
        self.prior = prior

    def forward(self, input):
        self.norm(input)
        running_mean = (
            self.prior * self.layer.running_mean + (1 - self.prior) * self.norm.running_mean
        )
        running_var = self.prior * self.layer.running_var + (1 - self.prior) * self.norm.running_var
        return nn.functional.batch_norm(
            input,
            running_mean,
            running_var,
            self.layer.weight,
            self.layer.bias,
            False,
            0,
            self.layer.eps,
        )


@pytest.mark.parametrize("batch_size", [1, 2, 16])
@pytest.mark.parametrize("prior", [0, 1, 16, 64])
def test_mix_unbiased_equals_bethgelab_bayesian_batch_norm(batch_size, prior):
    layer = make_layer("torch", 3, 4).eval()
    x = torch.randn(batch_size, 3, 5, 5) * 2 + 1
    reference = BayesianBatchNorm(layer, prior / (prior + batch_size))
    with torch.no_grad():
        expect = reference(x)
        with stats_mode(layer, "mix", prior=prior, var="unbiased"):
            out = layer(x)
        with stats_mode(layer, "mix", prior=prior):
            biased = layer(x)
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-5)
    if prior < 64:  # the conventions differ, most at small batches (n*H*W values per channel)
        assert not torch.allclose(biased, expect, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------
# re-entrant, reusable, out-of-order exits (issue 13)


def test_online_contexts_exited_out_of_order_restore_the_buffers():
    layer = make_layer("torch", 3, 4).eval()
    before = state(layer)
    x1, x2, x3 = (torch.randn(4, 3, 2, 2) + k for k in range(3))
    outer = stats_mode(layer, "online", momentum=0.5)
    inner = stats_mode(layer, "online", momentum=0.5)
    with torch.no_grad():
        outer.__enter__()
        layer(x1)
        inner.__enter__()
        layer(x2)
        outer.__exit__(None, None, None)  # out of order: inner is still active
        mean = layer.running_mean.clone()
        layer(x3)  # inner keeps adapting from where it is
        flat = per_channel(x3)
        torch.testing.assert_close(layer.running_mean, 0.5 * mean + 0.5 * flat.mean(1))
        inner.__exit__(None, None, None)
    assert_same_state(before, layer)
    assert not layer._forward_hooks and not layer._forward_pre_hooks


def test_contexts_of_different_modes_exited_out_of_order():
    layer = make_layer("torch", 3, 4).eval()
    before = state(layer)
    x = torch.randn(4, 3, 2, 2) * 2 + 1
    flat = per_channel(x)
    batch_expect = normalize(x, flat.mean(1), flat.var(1, unbiased=False), layer)
    online = stats_mode(layer, "online")
    batch = stats_mode(layer, "batch")
    with torch.no_grad():
        online.__enter__()
        layer(x)
        batch.__enter__()
        online.__exit__(None, None, None)  # online undone at once: no online context above it
        assert_same_state(before, layer)
        torch.testing.assert_close(layer(x), batch_expect)  # the remaining context still rules
        batch.__exit__(None, None, None)
    assert_same_state(before, layer)
    assert not layer._forward_hooks and not layer._forward_pre_hooks


def test_a_stats_mode_object_can_be_reused_and_reentered():
    layer = make_layer("torch", 3, 4).eval()
    before = state(layer)
    x = torch.randn(4, 3, 2, 2) + 3
    flat = per_channel(x)
    ctx = stats_mode(layer, "online", momentum=0.5)
    with torch.no_grad():
        for _ in range(2):  # entered again after it exited
            with ctx as model:
                assert model is layer
                layer(x)
                torch.testing.assert_close(
                    layer.running_mean, 0.5 * before["running_mean"] + 0.5 * flat.mean(1)
                )
            assert_same_state(before, layer)
        with ctx:  # entered again while active: the inner entry adapts further, then undoes it
            layer(x)
            once = layer.running_mean.clone()
            with ctx:
                layer(x)
                torch.testing.assert_close(layer.running_mean, 0.5 * once + 0.5 * flat.mean(1))
            torch.testing.assert_close(layer.running_mean, once)
    assert_same_state(before, layer)
    with pytest.raises(RuntimeError, match="exited more often than it was entered"):
        ctx.__exit__(None, None, None)
