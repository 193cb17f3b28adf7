"""Batch normalization (Ioffe & Szegedy 2015) for inputs of any rank (N, C, *)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from normzoo import functional as nzf
from normzoo.layers.checks import check_eps, check_momentum


class BatchNorm(_BatchNorm):
    """Batch norm over (N, *) per channel; one class for what torch splits into BatchNorm1d/2d/3d.

    Training normalizes with the biased batch statistics and updates the running mean and the
    running *unbiased* variance by EMA (``momentum=None``: cumulative average); eval normalizes
    with the running statistics, or with batch statistics when ``track_running_stats=False``.
    Parameter and buffer names are torch's, so state dicts load both ways with
    ``nn.BatchNorm{1,2,3}d``, and ``isinstance(layer, _BatchNorm)`` holds for every tool that
    looks for batch norm layers.

    A training batch with NaN/inf raises instead of poisoning the running statistics (on CPU;
    on other devices the update is skipped without a host sync; see
    :func:`normzoo.functional.batch_norm`); opt out per layer with ``layer.check_finite = False``.

    Args:
        num_features: channels C of the input.
        eps: added to the variance before the square root.
        momentum: weight of each new batch in the running statistics (torch's convention;
            ``None``: cumulative average).
        affine: learn the per-channel ``weight`` and ``bias``.
        track_running_stats: keep ``running_mean``/``running_var``; without them eval uses
            batch statistics.
        device: device of the parameters and buffers.
        dtype: dtype of the parameters and buffers.

    Shape:
        - Input: ``(N, C, *)``, any number of spatial dims.
        - Output: same shape as the input.

    Raises:
        ValueError: an invalid option (eps <= 0, momentum outside [0, 1]); in the forward, an
            input that is not ``(N, C, *)`` with C = ``num_features``, a training batch with
            one value per channel, or (on CPU) a training batch with NaN/inf.

    Examples:
        >>> import torch, normzoo
        >>> _ = torch.manual_seed(0)
        >>> bn = normzoo.create("batch", 3)
        >>> x = torch.randn(8, 3, 4, 4) * 2 + 5
        >>> y = bn(x)
        >>> y.mean(dim=(0, 2, 3)).abs().max().item() < 1e-5
        True
        >>> torch.allclose(bn.running_mean, 0.1 * x.mean(dim=(0, 2, 3)))  # 0.9 * 0 + 0.1 * mean
        True
    """

    check_finite = True  # raise on a non-finite training batch; set False on a layer to opt out

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        name = type(self).__name__
        check_eps(name, eps)
        check_momentum(name, momentum)
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)

    def init_options(self) -> dict:
        """Constructor keyword options that rebuild this layer (with ``num_features``)."""
        return {
            "eps": self.eps,
            "momentum": self.momentum,
            "affine": self.affine,
            "track_running_stats": self.track_running_stats,
        }

    def _check_input_dim(self, x: Tensor) -> None:
        nzf.check_input(x, self.num_features, type(self).__name__)

    def _counting(self) -> bool:
        return self.training and self.track_running_stats and self.num_batches_tracked is not None

    def _step(self, ahead: int = 1) -> tuple[bool, float]:
        """(use batch stats, EMA factor) of the training step ``ahead`` steps after those counted
        so far, as torch computes them. The counter itself advances in :meth:`_count`, after the
        step went through: a rejected batch (NaN/inf, too few values) is no step."""
        factor = 0.0 if self.momentum is None else self.momentum
        if self.momentum is None and self._counting():
            factor = nzf.ema_factor(None, int(self.num_batches_tracked) + ahead)
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        return use_batch_stats, factor

    def _count(self, steps: int = 1) -> None:
        """Advance the step counter by ``steps`` finished training steps."""
        if self._counting():
            self.num_batches_tracked.add_(steps)

    def _buffers_for_forward(self) -> tuple[Tensor | None, Tensor | None]:
        if not self.training or self.track_running_stats:
            return self.running_mean, self.running_var
        return None, None

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        use_batch_stats, factor = self._step()
        running_mean, running_var = self._buffers_for_forward()
        y = nzf.batch_norm(
            x,
            running_mean,
            running_var,
            self.weight,
            self.bias,
            use_batch_stats,
            factor,
            self.eps,
            self.check_finite,
        )
        self._count()
        return y
