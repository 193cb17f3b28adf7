"""Per-channel affine transforms of channels-first tensors."""

from __future__ import annotations

import torch
from torch import Tensor

from normzoo.functional._common import _per_channel

__all__ = ["affine_normalize", "channel_affine"]


def affine_normalize(
    x: Tensor,
    mean: Tensor,
    var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> Tensor:
    """``y = (x - mean) / sqrt(var + eps) * weight + bias`` per channel of channels-first ``x``.

    Unlike ``F.batch_norm`` with given statistics, gradients flow into ``mean`` and ``var`` too
    (the sync layers need them for global-batch statistics). Computed in the statistics' dtype,
    returned in ``x``'s.
    """
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    shape = [1, -1] + [1] * (x.dim() - 2)
    return (x.to(scale.dtype) * scale.view(shape) + shift.view(shape)).to(x.dtype)


def channel_affine(y: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """``y * weight + bias`` with per-channel (C,) ``weight``/``bias`` (either may be None)."""
    if weight is not None:
        y = y * _per_channel(weight, y)
    if bias is not None:
        y = y + _per_channel(bias, y)
    return y
