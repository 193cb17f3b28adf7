"""EvoNorm-B0 and EvoNorm-S0 (Liu et al. 2020, "Evolving Normalization-Activation Layers")."""

from __future__ import annotations

import torch
from torch import Tensor

from normzoo.functional._common import (
    _biased_var,
    _per_channel,
    _scaled,
    _spatial_dims,
    _stat_dtype,
)
from normzoo.functional.affine import channel_affine
from normzoo.functional.checks import _check_batch_stats, finite_update_mask, values_per_channel
from normzoo.functional.moments import channel_moments, ema_update_

__all__ = ["evonorm_b0", "evonorm_b0_normalize", "evonorm_s0"]


def _instance_var(x: Tensor) -> Tensor:
    """Per sample and channel biased variance over (*), in float32/64; 0 without spatial dims."""
    dims = _spatial_dims(x)
    xs = _stat_dtype(x)
    if not dims:
        return torch.zeros_like(xs)
    return _biased_var(xs, dims)


def evonorm_b0(
    x: Tensor,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    v: Tensor,
    use_batch_stats: bool,
    momentum: float,
    eps: float,
    check_finite: bool = True,
) -> Tensor:
    """EvoNorm-B0 (Liu et al. 2020, "Evolving Normalization-Activation Layers", Table 1).

    ``y = x / max(sqrt(s2_b + eps), v * x + sqrt(s2_i + eps)) * weight + bias`` with ``s2_b``
    the biased batch variance per channel over (N, *) (gradients flow through it) and ``s2_i``
    the biased variance of each sample and channel over (*). With ``use_batch_stats`` and a
    running buffer, ``running_var := (1 - momentum) * running_var + momentum * s2_b * n/(n-1)``
    (unbiased, n values per channel); otherwise ``s2_b := running_var``. Same operations as
    timm's ``EvoNorm2dB0``. ``check_finite`` as in :func:`batch_norm` (the check comes before
    the update).
    """
    if use_batch_stats:
        _check_batch_stats(x, "evonorm_b0")
        _, var = channel_moments(x)
        if running_var is not None:
            n = values_per_channel(x)
            ok = finite_update_mask("evonorm_b0", x, var) if check_finite else None
            ema_update_(running_var, var * (n / (n - 1)), momentum, ok)
    else:
        var = running_var
    return evonorm_b0_normalize(x, var, weight, bias, v, eps)


def evonorm_b0_normalize(
    x: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, v: Tensor, eps: float
) -> Tensor:
    """:func:`evonorm_b0`'s output for a given per-channel variance ``s2_b`` = ``var`` (the
    sync layer passes the global batch's, differentiable)."""
    left = _per_channel(var.add(eps).sqrt(), x)
    right = x * _per_channel(v, x) + _instance_var(x).add(eps).sqrt().to(x.dtype)
    return channel_affine(x / torch.maximum(left, right), weight, bias)


def evonorm_s0(
    x: Tensor,
    groups: int,
    weight: Tensor | None,
    bias: Tensor | None,
    v: Tensor,
    eps: float,
) -> Tensor:
    """EvoNorm-S0 (Liu et al. 2020, Table 1): ``y = x * sigmoid(v * x) / group_std(x) * weight
    + bias``, ``group_std = sqrt(biased variance over each group of C/groups channels and (*)
    + eps)`` per sample, as in group norm. Computes what timm's ``EvoNorm2dS0`` does, with
    ``weight / group_std`` folded into one per-(sample, channel) scale."""
    n, c = x.shape[:2]
    grouped = _stat_dtype(x).reshape(n, groups, -1)
    inv = _biased_var(grouped, [2]).add(eps).rsqrt()
    inv = inv.expand(n, groups, c // groups).reshape(n, c, *([1] * (x.dim() - 2)))
    return _scaled(x * (x * _per_channel(v, x)).sigmoid(), inv, weight, bias)
