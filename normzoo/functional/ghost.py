"""Ghost batch normalization (Hoffer et al. 2017): batch norm over fixed-size chunks."""

from __future__ import annotations

import torch
from torch import Tensor

from normzoo.functional.batch import batch_norm
from normzoo.functional.checks import _nonfinite_error, _NonFiniteBatchError

__all__ = ["ghost_batch_norm"]


def ghost_batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    momenta: list[float],
    eps: float,
    virtual_batch_size: int,
    check_finite: bool = True,
) -> Tensor:
    """Ghost batch norm in training (Hoffer et al. 2017, "Train longer, generalize better", Alg. 1).

    The batch is split along N into chunks of ``virtual_batch_size`` samples (the last one holds
    the remainder); each chunk is batch-normalized with its own statistics, exactly as
    ``F.batch_norm`` on that chunk, and updates the running buffers in turn with the matching
    factor of ``momenta`` (one per chunk), so the buffers end as if ``nn.BatchNorm`` had run on
    each chunk in sequence. ``check_finite`` as in :func:`batch_norm`, for the whole batch: when
    a chunk raises, the buffers get back their values from before the first chunk.
    """
    chunks = x.split(virtual_batch_size)
    if len(momenta) != len(chunks):
        raise ValueError(f"ghost batch norm: {len(chunks)} chunks but {len(momenta)} momenta")
    buffers = [b for b in (running_mean, running_var) if b is not None]
    before = [b.clone() for b in buffers] if len(chunks) > 1 else []
    try:
        outs = [
            batch_norm(
                chunk, running_mean, running_var, weight, bias, True, momentum, eps, check_finite
            )
            for chunk, momentum in zip(chunks, momenta, strict=True)
        ]
    except ValueError as err:  # an earlier chunk has updated the buffers: undo the batch
        with torch.no_grad():
            for buffer, value in zip(buffers, before, strict=False):
                buffer.copy_(value)
        if isinstance(err, _NonFiniteBatchError):
            raise _nonfinite_error("ghost batch norm", x) from None
        raise
    return outs[0] if len(outs) == 1 else torch.cat(outs)
