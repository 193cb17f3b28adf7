"""Input checks shared by every family: channels-first shape, enough values per channel for
batch statistics, and finite batches before they reach running statistics."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["check_input", "values_per_channel", "finite_update_mask"]


def check_input(x: Tensor, num_features: int, layer: str, min_dim: int = 2) -> None:
    """Raise a clear error unless ``x`` is channels-first ``(N, C, *)`` with C == num_features.

    Raises:
        TypeError: ``x`` is not a tensor.
        ValueError: fewer than ``min_dim`` dims, or dim 1 is not ``num_features`` (the message
            recognises channels-last tokens ``(N, L, C)`` and says so).

    Examples:
        >>> import torch
        >>> from normzoo.functional import check_input
        >>> check_input(torch.zeros(2, 3, 5), 3, "BatchNorm")  # fine: returns None
        >>> try:
        ...     check_input(torch.zeros(2, 197, 192), 192, "GroupNorm")
        ... except ValueError as err:
        ...     print(str(err)[:72])
        GroupNorm: input of shape (2, 197, 192) looks like (N, L, C) tokens with
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{layer}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() < min_dim:
        spatial = " with at least one spatial dimension, e.g. (N, C, L) or (N, C, H, W)"
        need = "(N, C, *)" + (spatial if min_dim > 2 else "")
        raise ValueError(
            f"{layer}: expected channels-first input {need}, got shape {tuple(x.shape)} "
            f"(rank {x.dim()}); add the missing dimensions "
            "(e.g. x.unsqueeze(0) for a single sample)"
        )
    if x.shape[1] != num_features and x.dim() >= 3 and x.shape[-1] == num_features:
        raise ValueError(_channels_last_message(x, num_features, layer))
    if x.shape[1] != num_features:
        raise ValueError(
            f"{layer}: input has {x.shape[1]} channels in dim 1 but the layer was built with "
            f"num_features={num_features}; inputs are channels-first (N, C, *) — permute "
            f"channels-last data with x.movedim(-1, 1), or build the layer with "
            f"num_features={x.shape[1]}"
        )


def _channels_last_message(x: Tensor, num_features: int, layer: str) -> str:
    """The error for channels-last input whose last dim holds the layer's channels, e.g. a
    transformer's (N, L, C) tokens (a ViT's (N, 197, 192): 197 tokens, 192 channels)."""
    if x.dim() == 3:
        looks = f"(N, L, C) tokens with C={num_features} channels last (L={x.shape[1]} tokens)"
    else:
        looks = f"channels-last (N, *, C) with C={num_features} channels in the last dim"
    return (
        f"{layer}: input of shape {tuple(x.shape)} looks like {looks}, but channels-first "
        f"layers need (N, C, *) with the {num_features} channels in dim 1. Permute around the "
        f"layer (layer(x.movedim(-1, 1)).movedim(1, -1)), or keep a norm over the last dim "
        f"where a model normalizes tokens: build it with its own norm_layer and call "
        f"normzoo.convert(model, name), which replaces channels-first norms and leaves token "
        f"norms (nn.LayerNorm) alone"
    )


def values_per_channel(x: Tensor) -> int:
    """Number of values each channel's batch statistics are computed from: N * prod(spatial)."""
    return x.numel() // x.shape[1] if x.shape[1] else 0


def _check_batch_stats(x: Tensor, layer: str) -> None:
    if values_per_channel(x) <= 1:
        raise ValueError(
            f"{layer}: batch statistics need more than 1 value per channel, got input shape "
            f"{tuple(x.shape)}. Train with batch size >= 2 (or spatial inputs), call "
            f"model.eval() to use running statistics, use normzoo.stats_mode(model, 'mix', "
            f"prior=...) at test time, or pick a batch-independent norm ('group', 'layer')"
        )


class _NonFiniteBatchError(ValueError):
    """A training batch with NaN/inf, rejected before it reached the running statistics."""


def _nonfinite_error(layer: str, x: Tensor) -> ValueError:
    return _NonFiniteBatchError(
        f"{layer}: the training batch (shape {tuple(x.shape)}) holds NaN or inf values, which "
        f"would turn the running statistics into NaN for good; running statistics were left "
        f"unchanged. Find the source (a diverged loss, bad data), or set "
        f"layer.check_finite = False to skip this check"
    )


def _must_mask(x: Tensor) -> bool:
    """Raising on a non-finite batch needs a host sync; on accelerators and under
    ``torch.compile`` the update is masked on the device instead."""
    return x.device.type != "cpu" or torch.compiler.is_compiling()


def finite_update_mask(layer: str, x: Tensor, *stats: Tensor) -> Tensor | None:
    """Guard a running-statistics update with batch statistics ``stats`` of the batch ``x``.

    On CPU: raise ValueError (naming ``layer`` and the ``check_finite`` opt-out) when a
    statistic is NaN/inf, else return None (update unmasked). On accelerators and under
    ``torch.compile``: return a bool tensor, False when a statistic is non-finite, to mask the
    update with (no host sync). The statistics are per channel, so the check reads C values,
    not ``x``; on CPU they may be NumPy arrays (views of the statistics).
    """
    if _must_mask(x):
        return torch.stack([torch.isfinite(s).all() for s in stats]).all()
    if all(isinstance(s, np.ndarray) for s in stats):  # batch renorm's NumPy path (CPU)
        ok = all(np.isfinite(s).all() for s in stats)  # a microsecond each, no dispatch
    elif all(s.dtype != torch.float64 for s in stats):
        # a float64 sum of float32/half values cannot overflow, and NaN/inf propagate: finite
        # exactly when every value is; one reduction and one read per statistic (detached: a
        # statistic that carries a graph would grow it, and warn on the conversion)
        ok = math.isfinite(sum(float(s.detach().sum(dtype=torch.float64)) for s in stats))
    else:
        ok = all(bool(torch.isfinite(s).all()) for s in stats)
    if not ok:
        raise _nonfinite_error(layer, x)
    return None
