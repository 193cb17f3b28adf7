"""Batch normalization (Ioffe & Szegedy 2015) with a guard for non-finite batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from normzoo.functional.checks import _check_batch_stats, _must_mask, _nonfinite_error

__all__ = ["batch_norm"]


def batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    use_batch_stats: bool,
    momentum: float,
    eps: float,
    check_finite: bool = True,
) -> Tensor:
    """Batch normalization (Ioffe & Szegedy 2015), identical to ``F.batch_norm``.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` per channel. With ``use_batch_stats`` the
    biased batch statistics over (N, *) normalize and, when running buffers are given, update them
    in place: ``running = (1 - momentum) * running + momentum * batch`` (unbiased variance).
    Otherwise the running buffers normalize.

    ``check_finite``: a batch with NaN/inf (seen in its per-channel statistics, C values, so
    the check costs no extra pass over ``x``) must not poison the running buffers. On CPU it
    raises ValueError with the buffers restored; on other devices and under ``torch.compile``,
    where raising needs a host sync every step, the buffers silently keep their previous values
    (the output is NaN, so the loss shows it).

    Examples:
        >>> import torch
        >>> from normzoo.functional import batch_norm
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(8, 3, 4, 4)
        >>> rm, rv = torch.zeros(3), torch.ones(3)
        >>> y = batch_norm(x, rm, rv, None, None, True, 0.1, 1e-5)
        >>> ref = torch.nn.functional.batch_norm(x, torch.zeros(3), torch.ones(3), training=True)
        >>> torch.equal(y, ref), torch.allclose(rm, 0.1 * x.mean(dim=(0, 2, 3)))
        (True, True)
    """
    if not use_batch_stats:
        return F.batch_norm(x, running_mean, running_var, weight, bias, False, momentum, eps)
    _check_batch_stats(x, "batch norm")
    if not (check_finite and running_mean is not None and running_var is not None):
        return F.batch_norm(x, running_mean, running_var, weight, bias, True, momentum, eps)
    before = running_mean.clone(), running_var.clone()
    y, mean_b, invstd_b = torch.native_batch_norm(
        x, weight, bias, running_mean, running_var, True, momentum, eps
    )
    ok = torch.isfinite(mean_b).all() & torch.isfinite(invstd_b).all()
    with torch.no_grad():
        if _must_mask(x):
            running_mean.copy_(torch.where(ok, running_mean, before[0]))
            running_var.copy_(torch.where(ok, running_var, before[1]))
        elif not ok:
            running_mean.copy_(before[0])
            running_var.copy_(before[1])
            raise _nonfinite_error("batch norm", x)
    return y
