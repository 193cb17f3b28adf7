"""The shared moments math of normzoo.functional against tensors reduced directly in the test."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normzoo import functional as nzf

SHAPES = [(7, 3), (5, 3, 4), (2, 3, 4, 5), (1, 3, 2, 2, 3)]


def per_channel(x: torch.Tensor) -> torch.Tensor:
    """(C, values) view of a channels-first tensor."""
    return x.transpose(0, 1).reshape(x.shape[1], -1)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("correction", [0, 1])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_channel_moments(shape, correction, requires_grad):
    x = (torch.randn(shape, dtype=torch.float64) * 3 + 2).requires_grad_(requires_grad)
    mean, var = nzf.channel_moments(x, correction)
    flat = per_channel(x.detach())
    torch.testing.assert_close(mean, flat.mean(1))
    torch.testing.assert_close(var, flat.var(1, correction=correction))
    assert mean.requires_grad == var.requires_grad == requires_grad
    if requires_grad:  # gradient of the differentiable path equals the direct reduction's
        (mean.sum() + var.square().sum()).backward()
        x_ref = x.detach().clone().requires_grad_()
        flat_ref = per_channel(x_ref)
        (flat_ref.mean(1).sum() + flat_ref.var(1, correction=correction).square().sum()).backward()
        torch.testing.assert_close(x.grad, x_ref.grad)


def test_channel_moments_half_precision_and_constant_channel():
    x = torch.randn(4, 2, 3, 3).half()
    x[:, 1] = 2.0
    mean, var = nzf.channel_moments(x)
    assert mean.dtype == var.dtype == torch.float32
    torch.testing.assert_close(mean, per_channel(x.float()).mean(1))
    torch.testing.assert_close(var, per_channel(x.float()).var(1, unbiased=False))
    assert var[1] == 0


@pytest.mark.parametrize("sizes", [[5], [3, 8], [1, 4, 2, 9]])
def test_merge_moments_equals_moments_of_the_union(sizes):
    gen = torch.Generator().manual_seed(len(sizes))
    parts = [
        torch.randn(n, 4, 3, generator=gen, dtype=torch.float64) * (i + 1) + 1e3 * i
        for i, n in enumerate(sizes)
    ]
    counts = torch.tensor([nzf.values_per_channel(p) for p in parts], dtype=torch.float64)
    means = torch.stack([per_channel(p).mean(1) for p in parts])
    m2s = torch.stack(
        [per_channel(p).var(1, unbiased=False) * per_channel(p).shape[1] for p in parts]
    )
    count, mean, m2 = nzf.merge_moments(counts, means, m2s)
    union = per_channel(torch.cat(parts))
    assert int(count) == union.shape[1]
    torch.testing.assert_close(mean, union.mean(1))
    torch.testing.assert_close(m2 / (count - 1), union.var(1, unbiased=True))


def test_mix_moments_formula_and_its_two_ends():
    src_mean, src_var = torch.randn(5), torch.rand(5) + 0.5
    batch_mean, batch_var = torch.randn(5), torch.rand(5) + 0.5
    n, prior = 3, 16
    mean, var = nzf.mix_moments(src_mean, src_var, batch_mean, batch_var, prior, n)
    torch.testing.assert_close(mean, (prior * src_mean + n * batch_mean) / (prior + n))
    torch.testing.assert_close(var, (prior * src_var + n * batch_var) / (prior + n))
    at_zero = nzf.mix_moments(src_mean, src_var, batch_mean, batch_var, 0, n)
    at_inf = nzf.mix_moments(src_mean, src_var, batch_mean, batch_var, math.inf, n)
    assert torch.equal(at_zero[0], batch_mean) and torch.equal(at_zero[1], batch_var)
    assert torch.equal(at_inf[0], src_mean) and torch.equal(at_inf[1], src_var)
    for bad in (-1.0, math.nan):
        with pytest.raises(ValueError, match=r"prior must be in \[0, inf\]"):
            nzf.mix_moments(src_mean, src_var, batch_mean, batch_var, bad, n)


@pytest.mark.parametrize("momentum", [0.1, 0.7, None])
def test_ema_update_equals_torch_batch_norm(momentum):
    reference = nn.BatchNorm1d(3, momentum=momentum).double().train()
    mean, var = reference.running_mean.clone(), reference.running_var.clone()
    for step in range(1, 5):
        x = torch.randn(6, 3, 4, dtype=torch.float64) * step + step
        reference(x)
        batch_mean, batch_var = nzf.channel_moments(x, correction=1)
        nzf.update_running_stats(mean, var, batch_mean, batch_var, nzf.ema_factor(momentum, step))
        torch.testing.assert_close(mean, reference.running_mean)
        torch.testing.assert_close(var, reference.running_var)


def test_affine_normalize_matches_batch_norm_and_differentiates_the_statistics():
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    mean = torch.randn(3, dtype=torch.float64, requires_grad=True)
    var = (torch.rand(3, dtype=torch.float64) + 0.5).requires_grad_()
    weight, bias = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    out = nzf.affine_normalize(x, mean, var, weight, bias, 1e-5)
    expect = F.batch_norm(x, mean.detach(), var.detach(), weight, bias, False, 0.0, 1e-5)
    torch.testing.assert_close(out, expect)
    torch.testing.assert_close(
        nzf.affine_normalize(x, mean, var, None, None, 1e-5),
        F.batch_norm(x, mean.detach(), var.detach(), None, None, False, 0.0, 1e-5),
    )
    out.square().sum().backward()
    m, v = mean.detach().clone().requires_grad_(), var.detach().clone().requires_grad_()
    direct = (x - m.view(1, -1, 1)) / torch.sqrt(v.view(1, -1, 1) + 1e-5)
    (direct * weight.view(1, -1, 1) + bias.view(1, -1, 1)).square().sum().backward()
    torch.testing.assert_close(mean.grad, m.grad)
    torch.testing.assert_close(var.grad, v.grad)


def test_masked_ema_update_keeps_the_buffer_where_not_ok():
    running, value = torch.randn(4), torch.randn(4)
    for ok, expect in [
        (torch.tensor(True), 0.75 * running + 0.25 * value),
        (torch.tensor(False), running),
    ]:
        buffer = running.clone()
        nzf.ema_update_(buffer, value, 0.25, ok)
        torch.testing.assert_close(buffer, expect)
