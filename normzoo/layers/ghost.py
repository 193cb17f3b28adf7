"""Ghost batch normalization (Hoffer, Hubara & Soudry 2017, "Train longer, generalize better:
closing the generalization gap in large batch training of neural networks", Algorithm 1)."""

from __future__ import annotations

import torch
from torch import Tensor

from normzoo import functional as nzf
from normzoo.layers.batch import BatchNorm


class GhostBatchNorm(BatchNorm):
    """Batch norm whose training statistics come from fixed-size chunks ("ghost batches").

    Training splits the batch along N into chunks of ``virtual_batch_size`` samples (the last
    chunk holds the remainder) and normalizes each with its own mean and biased variance,
    exactly as ``nn.BatchNorm`` run on each chunk separately. The running statistics are
    updated **once per chunk**, in order, as that sequence of ``nn.BatchNorm`` calls would
    (``num_batches_tracked`` counts chunks; with ``momentum=None`` the cumulative average is over
    chunks). This decouples the normalization batch from the optimization batch (Wu & He's
    protocol varies the former at a fixed latter). Eval normalizes with the running statistics;
    without them (``track_running_stats=False``, or ``stats_mode(..., "batch")``) eval uses the
    statistics of the whole batch, like ``nn.BatchNorm`` — ghost batches are a training device.
    A batch no larger than ``virtual_batch_size`` is plain batch norm. Buffers and parameters
    are batch norm's, so state dicts load both ways with ``nn.BatchNorm{1,2,3}d``.

    A training batch with NaN/inf in any chunk raises as in :class:`BatchNorm`, and the whole
    batch is undone (running statistics and ``num_batches_tracked`` as before it, also where
    earlier chunks were clean); ``layer.check_finite = False`` opts out.

    Args:
        num_features: channels C of the input.
        eps: added to the variance before the square root.
        momentum: weight of each new batch in the running statistics (torch's convention;
            ``None``: cumulative average).
        affine: learn the per-channel ``weight`` and ``bias``.
        track_running_stats: keep ``running_mean``/``running_var``; without them eval uses
            batch statistics.
        virtual_batch_size: samples per ghost batch.
        device: device of the parameters and buffers.
        dtype: dtype of the parameters and buffers.

    Shape:
        - Input: ``(N, C, *)``, any number of spatial dims.
        - Output: same shape as the input.

    Raises:
        ValueError: an invalid option (eps <= 0, momentum outside [0, 1]); in the forward, an
            input that is not ``(N, C, *)`` with C = ``num_features``, a training batch with
            one value per channel (also in its last chunk), or (on CPU) a training batch with
            NaN/inf.

    Examples:
        >>> import torch, normzoo
        >>> _ = torch.manual_seed(0)
        >>> gbn = normzoo.create("ghost_batch", 3, virtual_batch_size=4)
        >>> y = gbn(torch.randn(8, 3, 2, 2))  # two ghost batches of 4 samples
        >>> int(gbn.num_batches_tracked)  # one running-statistics update per chunk
        2
        >>> y[:4].mean(dim=(0, 2, 3)).abs().max().item() < 1e-5  # each chunk: mean 0
        True
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        virtual_batch_size: int = 32,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if (
            not isinstance(virtual_batch_size, int)
            or isinstance(virtual_batch_size, bool)
            or virtual_batch_size < 1
        ):
            raise ValueError(
                f"ghost_batch: virtual_batch_size={virtual_batch_size!r} must be a positive int "
                "(samples per ghost batch, e.g. 16 or 32)"
            )
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.virtual_batch_size = virtual_batch_size

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, virtual_batch_size={self.virtual_batch_size}"

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        self._check_input_dim(x)
        chunks = -(-x.shape[0] // self.virtual_batch_size)
        last = x.shape[0] - (chunks - 1) * self.virtual_batch_size
        if nzf.values_per_channel(x[:last]) <= 1:
            raise ValueError(
                f"ghost_batch: a batch of {x.shape[0]} split into ghost batches of "
                f"{self.virtual_batch_size} leaves a last chunk of {last} sample(s) with one "
                f"value per channel (shape {tuple(x.shape)}), which has no batch variance; use "
                f"a batch size that is a multiple of virtual_batch_size, or drop_last=True"
            )
        momenta = [self._step(ahead)[1] for ahead in range(1, chunks + 1)]
        running_mean, running_var = self._buffers_for_forward()
        y = nzf.ghost_batch_norm(
            x,
            running_mean,
            running_var,
            self.weight,
            self.bias,
            momenta,
            self.eps,
            self.virtual_batch_size,
            self.check_finite,
        )
        self._count(chunks)
        return y
