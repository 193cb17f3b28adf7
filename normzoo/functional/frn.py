"""Filter Response Normalization with TLU (Singh & Krishnan 2020)."""

from __future__ import annotations

import torch
from torch import Tensor

from normzoo.functional._common import _mean_square, _per_channel, _scaled, _spatial_dims

__all__ = ["filter_response_norm"]


def filter_response_norm(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    tau: Tensor | None,
    eps: float | Tensor,
) -> Tensor:
    """Filter Response Normalization with TLU (Singh & Krishnan 2020, Eq. 1-3).

    Per sample and channel, ``nu2 = mean over (*) of x^2``, ``x_hat = x / sqrt(nu2 + eps)``,
    ``y = weight * x_hat + bias`` and the thresholded linear unit ``z = max(y, tau)`` (skipped
    when ``tau`` is None). No mean is subtracted. With one position per channel (input (N, C))
    ``nu2 = x^2``, the case for which the paper learns ``eps``. Computes what timm's
    ``FilterResponseNormTlu2d`` does, with ``weight / sqrt(nu2 + eps)`` folded into one
    per-(sample, channel) scale (fewer passes over x; equal up to float rounding).
    """
    inv = _mean_square(x, _spatial_dims(x)).add(eps).rsqrt()
    y = _scaled(x, inv, weight, bias)
    if tau is None:
        return y
    tau = _per_channel(tau, y)
    if not (torch.is_grad_enabled() and (y.requires_grad or tau.requires_grad)):
        return torch.maximum(y, tau)
    # with gradient, max(y, tau) as tau + relu(y - tau): on CPU its backward is ~4x cheaper than
    # maximum's (which splits ties); equal up to float rounding; at ties the gradient goes to y
    return torch.relu(y - tau) + tau
