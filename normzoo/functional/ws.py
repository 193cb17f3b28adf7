"""Weight Standardization (Qiao et al. 2019)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["standardize_weight"]


def standardize_weight(weight: Tensor, eps: float) -> Tensor:
    """Weight Standardization (Qiao et al. 2019, Eq. 5): each output filter's weights minus their
    mean, divided by ``sqrt(biased variance + eps)`` over (in_channels, *kernel); computed with
    ``F.batch_norm`` over a (1, out_channels, fan_in) view, as timm's ``StdConv2d``."""
    flat = weight.reshape(1, weight.shape[0], -1)
    return F.batch_norm(flat, None, None, training=True, momentum=0.0, eps=eps).reshape_as(weight)
