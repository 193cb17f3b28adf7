"""The identity baseline: no normalization at all."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normzoo import functional as nzf
from normzoo.layers.checks import check_eps


class NoNorm(nn.Module):
    """Identity with the zoo's constructor, so "no normalization" runs in every grid.

    ``eps`` and ``affine`` are accepted for a uniform interface and have no effect: the layer
    has no parameters and returns its input unchanged (after checking its shape).

    Args:
        num_features: channels C of the input (checked in the forward).
        eps: accepted and ignored.
        affine: accepted and ignored.
        device: device accepted and ignored (no parameters).
        dtype: dtype accepted and ignored (no parameters).

    Shape:
        - Input: ``(N, C, *)``, any number of spatial dims.
        - Output: same shape as the input.

    Raises:
        ValueError: in the forward, an input that is not ``(N, C, *)`` with
            C = ``num_features``.

    Examples:
        >>> import torch, normzoo
        >>> x = torch.randn(2, 3, 4)
        >>> normzoo.create("none", 3)(x) is x
        True
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        check_eps("NoNorm", eps)
        super().__init__()
        self.num_features = num_features

    def extra_repr(self) -> str:
        return str(self.num_features)

    def forward(self, x: Tensor) -> Tensor:
        nzf.check_input(x, self.num_features, "NoNorm")
        return x
