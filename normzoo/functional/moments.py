"""Moments and running statistics: the math that batch layers, sync layers and test-time
statistics (:mod:`normzoo.testtime`) share: per-channel moments, their merge (Chan et al.), the
mix of source and batch statistics (Schneider et al.) and torch's EMA update."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from normzoo.functional._common import _in_dtype
from normzoo.functional.checks import values_per_channel

__all__ = [
    "batch_stats",
    "channel_moments",
    "merge_moments",
    "mix_moments",
    "ema_factor",
    "ema_update_",
    "update_running_stats",
]


def batch_stats(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Per-channel batch mean and ``1 / sqrt(biased var + eps)`` from torch's batch-norm kernels.

    These kernels are numerically stable (Welford) and several times faster on CPU than
    ``torch.var_mean`` over (N, *); no gradient flows through the result.
    """
    with torch.no_grad():
        if x.is_cuda:
            return torch.batch_norm_stats(x, eps)
        _, mean, invstd = torch.native_batch_norm(x, None, None, None, None, True, 0.0, eps)
        return mean, invstd


def channel_moments(x: Tensor, correction: int = 0) -> tuple[Tensor, Tensor]:
    """Per-channel mean and variance of channels-first ``x`` over (N, *).

    ``var = sum((x - mean)^2) / (n - correction)`` with ``n = N * prod(spatial)`` values per
    channel: ``correction=0`` is the biased variance batch norm normalizes with, ``1`` the
    unbiased one it keeps as running variance (NaN for a single value, as ``torch.var``). Half
    precision is computed in float32. When ``x`` requires grad (and grad mode is on) the result
    is differentiable (``torch.var_mean``); otherwise it comes from torch's batch-norm
    statistics kernel (Welford), several times faster on CPU, without gradient.

    Examples:
        >>> import torch
        >>> from normzoo.functional import channel_moments
        >>> x = torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])  # (N, C)
        >>> mean, var = channel_moments(x, correction=1)
        >>> mean.tolist(), var.tolist()
        ([2.0, 20.0], [1.0, 100.0])
    """
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    if torch.is_grad_enabled() and x.requires_grad:
        var, mean = torch.var_mean(x, dim=[0, *range(2, x.dim())], correction=correction)
        return mean, var
    if x.device.type == "cpu":  # mean and biased variance in one pass, no output written
        with torch.no_grad():
            mean, var = torch.batch_norm_update_stats(x.detach(), None, None, 0.0)
    else:  # with eps = 0 the kernel returns 1/sqrt(biased var), or 0 where the variance is 0
        mean, invstd = batch_stats(x.detach(), 0.0)
        var = torch.where(invstd > 0, invstd.reciprocal().square(), torch.zeros_like(invstd))
    if correction:
        count = values_per_channel(x)
        factor = count / (count - correction) if count > correction else math.nan  # as torch.var
        var = var * factor
    return mean, var


def merge_moments(count: Tensor, mean: Tensor, m2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Merge k sets of per-channel moments, stacked along dim 0, into those of their union.

    Chan, Golub & LeVeque 1979 (the parallel algorithm for the variance):
    ``n = sum_i n_i``, ``mean = sum_i n_i * mean_i / n``,
    ``M2 = sum_i M2_i + sum_i n_i * (mean_i - mean)^2`` with ``M2_i`` the sum of squared
    deviations from ``mean_i``; no ``E[x^2] - E[x]^2`` cancellation. ``count``: (k,) values per
    set; ``mean``, ``m2``: (k, C). Returns (n, mean, M2); the variance is ``M2 / (n - correction)``.
    Differentiable in ``mean`` and ``m2``.

    Examples:
        >>> import torch
        >>> from normzoo.functional import merge_moments
        >>> a, b = torch.tensor([[1.0], [3.0]]), torch.tensor([[5.0], [7.0], [9.0]])
        >>> count = torch.tensor([2, 3])
        >>> mean = torch.stack([a.mean(0), b.mean(0)])
        >>> m2 = torch.stack([((a - a.mean(0)) ** 2).sum(0), ((b - b.mean(0)) ** 2).sum(0)])
        >>> n, merged_mean, merged_m2 = merge_moments(count, mean, m2)
        >>> int(n), merged_mean.item(), (merged_m2 / (n - 1)).item()  # = torch.cat([a, b])
        (5, 5.0, 10.0)
    """
    weight = count.to(mean.dtype).view(-1, *([1] * (mean.dim() - 1)))
    total = weight.sum(0)
    merged = (weight * mean).sum(0) / total
    m2 = (m2 + weight * (mean - merged).square()).sum(0)
    return count.sum(0), merged, m2


def mix_moments(
    source_mean: Tensor,
    source_var: Tensor,
    batch_mean: Tensor,
    batch_var: Tensor,
    prior: float,
    n: int,
) -> tuple[Tensor, Tensor]:
    """Source statistics worth ``prior`` samples mixed with those of a batch of ``n`` samples.

    Schneider et al. 2020, "Improving robustness against common corruptions by covariate shift
    adaptation": ``mean = (N*m_src + n*m_batch) / (N+n)``, ``var = (N*v_src + n*v_batch) / (N+n)``
    with ``N = prior`` in [0, inf]: ``N = 0`` gives the batch statistics and ``N = inf`` the source
    statistics, both exactly. Computed in the batch statistics' dtype.

    Examples:
        >>> import torch
        >>> from normzoo.functional import mix_moments
        >>> src_mean, src_var = torch.zeros(2), torch.ones(2)
        >>> batch_mean, batch_var = torch.full((2,), 4.0), torch.full((2,), 9.0)
        >>> mean, var = mix_moments(src_mean, src_var, batch_mean, batch_var, prior=12, n=4)
        >>> mean.tolist(), var.tolist()  # (12 * 0 + 4 * 4) / 16, (12 * 1 + 4 * 9) / 16
        ([1.0, 1.0], [3.0, 3.0])
    """
    if not (prior >= 0):  # also rejects NaN
        raise ValueError(f"mix_moments: prior must be in [0, inf], got {prior!r}")
    weight = n / (prior + n) if math.isfinite(prior) else 0.0
    if weight == 0.0:  # also where the batch statistics are undefined (NaN)
        return source_mean.to(batch_mean.dtype), source_var.to(batch_var.dtype)
    mean = torch.lerp(source_mean.to(batch_mean.dtype), batch_mean, weight)
    var = torch.lerp(source_var.to(batch_var.dtype), batch_var, weight)
    return mean, var


def ema_factor(momentum: float | None, num_batches_tracked: Tensor | int | None) -> float:
    """The weight of a new batch in the running statistics, as torch's batch norm computes it:
    ``momentum``, or ``1 / num_batches_tracked`` (a cumulative average) when ``momentum`` is
    None; ``num_batches_tracked`` counts the batches including the new one."""
    if momentum is not None:
        return momentum
    count = 0 if num_batches_tracked is None else int(num_batches_tracked)
    return 1.0 / count if count > 0 else 1.0


def ema_update_(running: Tensor, value: Tensor, factor: float, ok: Tensor | None = None) -> None:
    """In place and without gradient: ``running := (1 - factor) * running + factor * value``, the
    EMA update of a running buffer as torch's batch norm does it. ``ok`` (a bool tensor): where
    False the buffer keeps its value (a masked update, no host sync).

    Examples:
        >>> import torch
        >>> from normzoo.functional import ema_update_
        >>> running = torch.zeros(2)
        >>> ema_update_(running, torch.tensor([1.0, 2.0]), 0.1)
        >>> [round(v, 4) for v in running.tolist()]  # 0.9 * 0 + 0.1 * value
        [0.1, 0.2]
    """
    with torch.no_grad():
        value = _in_dtype(value, running.dtype)  # no graph under no_grad: no detach needed
        if ok is None:
            running.lerp_(value, factor)
        else:
            running.copy_(torch.where(ok, running.lerp(value, factor), running))


def update_running_stats(
    running_mean: Tensor,
    running_var: Tensor,
    mean: Tensor,
    var: Tensor,
    factor: float,
    ok: Tensor | None = None,
) -> None:
    """:func:`ema_update_` of both running buffers with the batch's mean and *unbiased* variance
    (torch's batch-norm update)."""
    ema_update_(running_mean, mean, factor, ok)
    ema_update_(running_var, var, factor, ok)
