"""Weight Standardization (Qiao, Wang, Liu, Shen & Yuille 2019, "Micro-Batch Training with
Batch-Channel Normalization and Weight Standardization"): a convolution, not a norm layer."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from normzoo import functional as nzf


class WSConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose weight is standardized per output filter before each use (Eq. 5):
    ``W_hat = (W - mean(W)) / sqrt(var(W) + eps)`` over (in_channels/groups, kh, kw).

    The usual partner of group norm at small batch. Same arguments and state dict as
    ``nn.Conv2d`` plus ``eps`` (default 1e-6, timm's ``StdConv2d``; unlike ``StdConv2d`` the
    padding default is ``nn.Conv2d``'s 0, and ``bias`` defaults to True as in ``nn.Conv2d``).
    """

    def __init__(self, *args, eps: float = 1e-6, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.eps = eps

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, eps={self.eps}"

    def forward(self, x: Tensor) -> Tensor:
        weight = nzf.standardize_weight(self.weight, self.eps)
        if self.padding_mode != "zeros":
            return self._conv_forward(x, weight, self.bias)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, eps: float = 1e-6) -> WSConv2d:
        """A weight-standardized copy of ``conv`` (same hyperparameters, weight and bias)."""
        new = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            eps=eps,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        new.load_state_dict(conv.state_dict())
        new.train(conv.training)
        return new
