"""Batch Renormalization (Ioffe 2017, "Batch Renormalization: Towards Reducing Minibatch
Dependence in Batch-Normalized Models", Algorithm 1)."""

from __future__ import annotations

import torch
from torch import Tensor

from normzoo import functional as nzf
from normzoo.layers.batch import BatchNorm


class BatchRenorm(BatchNorm):
    """Batch norm whose training output is corrected towards the running statistics.

    Training: ``y = weight * ((x - mu_B) / sigma_B * r + d) + bias`` with stop-gradient
    ``r = clip(sigma_B / sigma, 1/r_max, r_max)`` and
    ``d = clip((mu_B - mu) / sigma, -d_max, d_max)``
    (``sigma = sqrt(running_var + eps)``, ``sigma_B = sqrt(biased batch var + eps)``).
    Schedule, counted in training steps by ``num_batches_tracked``: for the first ``warmup``
    steps r = 1, d = 0 (plain batch norm); over the next ``ramp`` steps the limits grow
    linearly from (1, 0) to (``rmax``, ``dmax``). Running statistics update exactly like
    :class:`BatchNorm`, and eval is batch norm eval, so a trained layer exports to
    ``nn.BatchNorm2d`` with ``load_state_dict``. Without running statistics
    (``track_running_stats=False``) r = 1, d = 0 always: plain batch norm.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        rmax: float = 3.0,
        dmax: float = 5.0,
        warmup: int = 0,
        ramp: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if not rmax >= 1.0:
            raise ValueError(
                f"batch_renorm: rmax={rmax} must be >= 1 (1 disables the r correction)"
            )
        if not dmax >= 0.0:
            raise ValueError(
                f"batch_renorm: dmax={dmax} must be >= 0 (0 disables the d correction)"
            )
        for name, value in (("warmup", warmup), ("ramp", ramp)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(
                    f"batch_renorm: {name}={value!r} must be a non-negative int (steps)"
                )
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.rmax, self.dmax, self.warmup, self.ramp = float(rmax), float(dmax), warmup, ramp

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, rmax={self.rmax}, dmax={self.dmax}, "
            f"warmup={self.warmup}, ramp={self.ramp}"
        )

    def _limits(self) -> tuple[Tensor, Tensor]:
        """Clip limits (r_max, d_max) of the current step; call after :meth:`_step`."""
        if self.num_batches_tracked is not None:
            step = self.num_batches_tracked - 1  # steps completed before this one
        else:
            step = torch.tensor(self.warmup + self.ramp)
        return nzf.renorm_limits(step, self.rmax, self.dmax, self.warmup, self.ramp)

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and self.running_mean is not None and self.running_var is not None):
            return super().forward(x)  # eval, or no running statistics to renormalize towards
        self._check_input_dim(x)
        _, factor = self._step()
        rmax, dmax = self._limits()
        return nzf.batch_renorm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            factor,
            self.eps,
            rmax.to(x.device),
            dmax.to(x.device),
        )
