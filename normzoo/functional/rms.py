"""RMS normalization (Zhang & Sennrich 2019) over channels-first maps."""

from __future__ import annotations

from torch import Tensor

from normzoo.functional._common import _mean_square, _scaled

__all__ = ["rms_norm"]


def rms_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """RMS norm (Zhang & Sennrich 2019, Eq. 4) over channels-first maps.

    Per sample, ``y = x / sqrt(mean over (C, *) of x^2 + eps) * weight + bias`` with a
    per-channel ``weight`` (and optional ``bias``); no mean is subtracted. Equals ``F.rms_norm``
    over all non-batch dimensions followed by the per-channel affine, computed with the gain
    folded into one per-(sample, channel) scale.

    Examples:
        >>> import torch
        >>> from normzoo.functional import rms_norm
        >>> x = torch.full((1, 2, 2), 3.0)
        >>> rms_norm(x, None, None, 0.0).tolist()  # x / sqrt(mean(x^2))
        [[[1.0, 1.0], [1.0, 1.0]]]
    """
    inv = _mean_square(x, list(range(1, x.dim()))).add(eps).rsqrt()
    return _scaled(x, inv, weight, bias)
