"""Group normalization (Wu & He 2018) and its extremes, layer and instance norm."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["group_norm"]


def group_norm(
    x: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    """Group normalization (Wu & He 2018), identical to ``F.group_norm``.

    Per sample, channels are split into ``num_groups`` groups; each group is normalized by the
    mean and biased variance over its channels and all spatial positions, then a per-channel
    affine transform applies. ``num_groups=1`` is layer norm over (C, *), ``num_groups=C`` is
    instance norm over (*).

    Examples:
        >>> import torch
        >>> from normzoo.functional import group_norm
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(2, 4, 3, 3)
        >>> reference = torch.nn.GroupNorm(2, 4, affine=False)
        >>> torch.equal(group_norm(x, 2, None, None, 1e-5), reference(x))
        True
    """
    return F.group_norm(x, num_groups, weight, bias, eps)
