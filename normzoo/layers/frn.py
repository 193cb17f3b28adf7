"""Filter Response Normalization with TLU (Singh & Krishnan 2020, "Filter Response
Normalization Layer: Eliminating Batch Dependence in the Training of Deep Neural Networks")."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from normzoo import functional as nzf
from normzoo.layers.checks import check_eps

NO_SPATIAL_WARNING = (
    "FilterResponseNorm got input of shape (N, C) without spatial dims: each channel of a "
    "sample is one value, so nu2 = x^2 and the output is about weight * sign(x) + bias "
    "(|x| >> sqrt(eps)), not a normalization. The paper's fix for 1x1 maps is a learned eps: "
    "build it with learn_eps=True; or use a norm over channels ('layer', 'rms') for (N, C) "
    "features"
)


class FilterResponseNorm(nn.Module):
    """Filter response normalization with a thresholded linear unit (FRN + TLU).

    Singh & Krishnan 2020, Eq. 1-3: per sample and channel, ``nu2 = mean over (*) of x^2``,
    ``y = max(weight * x / sqrt(nu2 + eps) + bias, tau)``. No mean is subtracted and no batch
    statistic is used (batch-independent).

    FRN + TLU is normalization *and* activation (it replaces BN-ReLU, paper Sec. 3): backbones
    put no activation after it (``provides_activation``). Defaults equal timm's
    ``FilterResponseNormTlu2d`` (eps=1e-5; the paper uses 1e-6), with the same parameter names
    (``weight``, ``bias``, ``tau``), so state dicts load both ways unless ``learn_eps`` adds
    ``eps_learned`` (timm has no learned eps) or ``affine=False`` removes weight and bias.

    Args:
        num_features: channels C of the input.
        eps: added to ``nu2`` before the square root.
        affine: learn the per-channel ``weight`` and ``bias``.
        tlu: apply the thresholded linear unit ``max(y, tau)`` with a learned per-channel
            ``tau``; ``tlu=False`` drops it (then an activation should follow; timm's
            ``apply_act=False``).
        learn_eps: make eps learnable as in the paper's Sec. 3.1 for 1x1 activation maps:
            ``eps_eff = eps + |eps_learned|``, ``eps_learned`` a scalar initialised to 1e-4
            (not 0, where ``|.|`` has no gradient).
        device: device of the parameters.
        dtype: dtype of the parameters.

    Shape:
        - Input: ``(N, C, *)``, any number of spatial dims.
        - Output: same shape as the input.

        Input ``(N, C)`` without spatial dims has one value per sample and channel, so
        ``nu2 = x^2`` and the output is about ``weight * sign(x) + bias``: the layer warns
        (``UserWarning``) unless ``learn_eps=True``, the paper's remedy for that case.

    Raises:
        ValueError: on a non-positive ``eps``, or an input that is not ``(N, C, *)`` with
            C = ``num_features``.

    Examples:
        >>> import torch, normzoo
        >>> _ = torch.manual_seed(0)
        >>> frn = normzoo.create("filter_response", 4)
        >>> frn(torch.randn(2, 4, 8, 8)).shape
        torch.Size([2, 4, 8, 8])
        >>> frn.provides_activation  # no ReLU after it
        True
    """

    activation_option = "tlu"  # the constructor flag that turns its activation off

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        affine: bool = True,
        tlu: bool = True,
        learn_eps: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        check_eps(type(self).__name__, eps)
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_features, self.eps, self.affine = num_features, eps, affine
        self.weight = nn.Parameter(torch.ones(num_features, **factory)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features, **factory)) if affine else None
        self.tau = nn.Parameter(torch.zeros(num_features, **factory)) if tlu else None
        self.eps_learned = nn.Parameter(torch.full((), 1e-4, **factory)) if learn_eps else None

    @property
    def provides_activation(self) -> bool:
        """Whether the layer applies its own nonlinearity (the TLU; no activation should follow)."""
        return self.tau is not None

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, affine={self.affine}, "
            f"tlu={self.tau is not None}, learn_eps={self.eps_learned is not None}"
        )

    def forward(self, x: Tensor) -> Tensor:
        nzf.check_input(x, self.num_features, type(self).__name__)
        if x.dim() == 2 and self.eps_learned is None:
            warnings.warn(NO_SPATIAL_WARNING, UserWarning, stacklevel=2)
        eps = self.eps if self.eps_learned is None else self.eps + self.eps_learned.abs()
        return nzf.filter_response_norm(x, self.weight, self.bias, self.tau, eps)
