"""Group normalization (Wu & He 2018) and its two extremes, layer norm (one group) and
instance norm (one channel per group), all batch-independent."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normzoo import functional as nzf
from normzoo.layers.checks import check_eps


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def resolve_groups(
    num_features: int, groups: int | None, group_size: int | None, layer: str = "group norm"
) -> int:
    """Number of groups from ``groups`` or ``group_size`` (channels per group), validated;
    errors name ``layer``, the layer being built."""
    if groups is not None and group_size is not None:
        raise ValueError(
            f"{layer}: pass either groups={groups} or group_size={group_size}, not both"
        )
    if group_size is not None:
        if not isinstance(group_size, int) or group_size < 1 or num_features % group_size:
            raise ValueError(
                f"{layer}: group_size={group_size!r} must divide num_features={num_features}; "
                f"valid group sizes: {_divisors(num_features)}"
            )
        return num_features // group_size
    groups = 32 if groups is None else groups
    if (
        not isinstance(groups, int)
        or isinstance(groups, bool)
        or groups < 1
        or num_features % groups
    ):
        raise ValueError(
            f"{layer}: groups={groups!r} does not divide num_features={num_features}; "
            f"valid values: {_divisors(num_features)} (or pass group_size=channels per group)"
        )
    return groups


class GroupNorm(nn.GroupNorm):
    """Group norm (Wu & He 2018): per sample, mean and biased variance over each group of
    ``num_features // groups`` channels and all positions; per-channel affine.

    Equals ``nn.GroupNorm(groups, num_features)`` (it is one, with torch's state dict).
    ``groups`` defaults to 32 as in the paper; ``group_size`` fixes channels per group instead.

    Args:
        num_features: channels C of the input.
        eps: added to the variance before the square root.
        affine: learn the per-channel ``weight`` and ``bias``.
        groups: number of groups (default 32); must divide ``num_features``.
        group_size: channels per group instead of ``groups`` (not both).
        device: device of the parameters and buffers.
        dtype: dtype of the parameters and buffers.

    Shape:
        - Input: ``(N, C, *)``, any number of spatial dims.
        - Output: same shape as the input.

    Raises:
        ValueError: groups or group_size not dividing ``num_features`` (listing the valid
            values), both given, or eps <= 0; in the forward, an input that is not
            ``(N, C, *)`` with C = ``num_features``, or a group of a single value.

    Examples:
        >>> import torch, normzoo
        >>> _ = torch.manual_seed(0)
        >>> gn = normzoo.create("group", 8, group_size=2)
        >>> gn.num_groups
        4
        >>> x = torch.randn(2, 8, 5, 5)
        >>> torch.allclose(gn(x), torch.nn.GroupNorm(4, 8)(x), atol=1e-6)
        True
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        affine: bool = True,
        groups: int | None = None,
        group_size: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        check_eps(type(self).__name__, eps)
        num_groups = resolve_groups(num_features, groups, group_size)
        super().__init__(num_groups, num_features, eps, affine, device, dtype)

    @property
    def num_features(self) -> int:
        return self.num_channels

    _min_dim = 2

    def forward(self, x: Tensor) -> Tensor:
        nzf.check_input(x, self.num_channels, type(self).__name__, self._min_dim)
        if nzf.values_per_channel(x[:1]) * (self.num_channels // self.num_groups) == 1:
            raise ValueError(
                f"{type(self).__name__}: each group holds a single value for input shape "
                f"{tuple(x.shape)}, which normalizes to 0; use larger spatial inputs, fewer "
                f"groups, or a norm over more values ('layer', 'batch')"
            )
        return nzf.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class LayerNorm(GroupNorm):
    """Layer norm for channels-first inputs: per sample over (C, *), per-channel affine.

    Equals ``nn.GroupNorm(1, C)``, the form the GroupNorm paper compares against. (Not
    ``nn.LayerNorm``, whose affine is per element of the normalized shape.)

    Args:
        num_features: channels C of the input.
        eps: added to the variance before the square root.
        affine: learn the per-channel ``weight`` and ``bias``.
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
        >>> ln = normzoo.create("layer", 4)
        >>> y = ln(torch.randn(3, 4, 6) * 4 + 1)
        >>> y.mean(dim=(1, 2)).abs().max().item() < 1e-5  # per sample over (C, *)
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
        super().__init__(num_features, eps, affine, groups=1, device=device, dtype=dtype)


class InstanceNorm(GroupNorm):
    """Instance norm (Ulyanov et al. 2016): per sample and channel over the spatial positions.

    Equals ``nn.GroupNorm(C, C)`` (always batch-independent, affine by default); needs at least
    one spatial dimension, since one value per channel would normalize to zero.

    Args:
        num_features: channels C of the input.
        eps: added to the variance before the square root.
        affine: learn the per-channel ``weight`` and ``bias``.
        device: device of the parameters and buffers.
        dtype: dtype of the parameters and buffers.

    Shape:
        - Input: ``(N, C, *)`` with at least one spatial dim.
        - Output: same shape as the input.

    Raises:
        ValueError: eps <= 0; in the forward, an input without spatial dims or whose dim 1
            is not ``num_features``.

    Examples:
        >>> import torch, normzoo
        >>> _ = torch.manual_seed(0)
        >>> inorm = normzoo.create("instance", 2)
        >>> y = inorm(torch.randn(3, 2, 5, 5) + 4)
        >>> y.mean(dim=(2, 3)).abs().max().item() < 1e-5  # per sample and channel
        True
    """

    _min_dim = 3

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps, affine, groups=num_features, device=device, dtype=dtype)
