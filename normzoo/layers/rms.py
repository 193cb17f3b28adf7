"""RMS normalization (Zhang & Sennrich 2019, "Root Mean Square Layer Normalization") for
channels-first feature maps."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normzoo import functional as nzf
from normzoo.layers.checks import check_eps


class RMSNorm(nn.Module):
    """RMS norm over (C, *) per sample, with a per-channel gain (Zhang & Sennrich 2019, Eq. 4).

    ``y = x / sqrt(mean over (C, *) of x^2 + eps) * weight (+ bias)``: layer norm without the
    mean subtraction. ``bias=False`` by default, as in the paper (RMSNorm drops the re-centering
    and its shift); ``bias=True`` adds a learned per-channel shift. Unlike ``nn.RMSNorm`` over
    ``x.shape[1:]``, whose gain has one value per element, the gain is per channel, like the
    zoo's ``layer`` norm, so it fits any spatial size. Batch-independent.

    Args:
        num_features: channels C of the input.
        eps: added to the mean square before the square root.
        affine: learn the per-channel gain ``weight``.
        bias: also learn a per-channel shift (needs ``affine``).
        device: device of the parameters and buffers.
        dtype: dtype of the parameters and buffers.

    Shape:
        - Input: ``(N, C, *)``, any number of spatial dims.
        - Output: same shape as the input.

    Raises:
        ValueError: eps <= 0; in the forward, an input that is not ``(N, C, *)`` with
            C = ``num_features``.

    Examples:
        >>> import torch, normzoo
        >>> _ = torch.manual_seed(0)
        >>> rms = normzoo.create("rms", 4)
        >>> y = rms(torch.randn(2, 4, 3, 3) * 7)
        >>> [round(v, 3) for v in y.square().mean(dim=(1, 2, 3)).tolist()]  # unit mean square
        [1.0, 1.0]
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        affine: bool = True,
        bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        check_eps(type(self).__name__, eps)
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_features, self.eps, self.affine = num_features, eps, affine
        self.weight = nn.Parameter(torch.ones(num_features, **factory)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features, **factory)) if affine and bias else None

    def extra_repr(self) -> str:
        bias = self.bias is not None
        return f"{self.num_features}, eps={self.eps}, affine={self.affine}, bias={bias}"

    def forward(self, x: Tensor) -> Tensor:
        nzf.check_input(x, self.num_features, type(self).__name__)
        return nzf.rms_norm(x, self.weight, self.bias, self.eps)
