"""Filter Response Normalization with TLU (Singh & Krishnan 2020, "Filter Response
Normalization Layer: Eliminating Batch Dependence in the Training of Deep Neural Networks")."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normzoo import functional as nzf
from normzoo.layers.checks import check_eps


class FilterResponseNorm(nn.Module):
    """FRN + TLU: per sample and channel, ``nu2 = mean over (*) of x^2``,
    ``y = max(weight * x / sqrt(nu2 + eps) + bias, tau)`` (paper Eq. 1-3; no mean subtraction,
    batch-independent).

    FRN + TLU is normalization *and* activation (it replaces BN-ReLU, paper Sec. 3): backbones
    put no activation after it (``provides_activation``). ``tlu=False`` drops the thresholded
    linear unit (then ``tau`` does not exist and an activation should follow; timm's
    ``apply_act=False``). ``learn_eps=True`` makes eps learnable as in the paper's
    Section 3.1 for 1x1 activation maps: ``eps_eff = eps + |eps_learned|`` with a learned
    scalar ``eps_learned`` initialised to 1e-4 (not 0, where ``|.|`` has no gradient).
    Defaults equal timm's ``FilterResponseNormTlu2d`` (eps=1e-5; the paper uses 1e-6): the same
    parameter names (``weight``, ``bias``, ``tau``), so state dicts load both ways unless
    ``learn_eps`` adds ``eps_learned`` (timm has no learned eps) or ``affine=False`` removes
    weight and bias. Any rank (N, C, *); with one position per channel (N, C) ``nu2 = x^2``.
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
        eps = self.eps if self.eps_learned is None else self.eps + self.eps_learned.abs()
        return nzf.filter_response_norm(x, self.weight, self.bias, self.tau, eps)
