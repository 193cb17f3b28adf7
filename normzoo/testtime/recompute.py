"""Exact population statistics of batch layers: PreciseBN (Wu & Johnson 2021) and AdaBN."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from normzoo.functional import channel_moments, merge_moments, values_per_channel
from normzoo.testtime.inputs import batch_inputs
from normzoo.testtime.modes import batch_layers, require_finite, stats_mode

log = logging.getLogger(__name__)

RECOMPUTE_METHODS = ("precise", "sequential")


@dataclass
class _Moments:
    """Per-channel count, mean and sum of squared deviations (M2) of one layer's input."""

    name: str = ""
    count: int = 0
    mean: Tensor | None = None
    m2: Tensor | None = None

    def update(self, x: Tensor) -> None:
        """Merge one batch: its moments in float64, then Chan's parallel combination; a batch
        with non-finite values raises ValueError (as a training forward does)."""
        n = values_per_channel(x)
        if n == 0:
            return
        mean, var = channel_moments(x.detach().to(torch.float64))
        require_finite(f"recompute_stats: layer {self.name!r}", mean, var)
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, var * n
        else:
            counts = torch.tensor([self.count, n], dtype=torch.float64, device=mean.device)
            _, self.mean, self.m2 = merge_moments(
                counts, torch.stack([self.mean, mean]), torch.stack([self.m2, var * n])
            )
            self.count += n


def _run_pass(
    model: nn.Module, batches: Any, num_batches: int | None, device: torch.device, label: str
) -> int:
    """One forward pass over the data; returns the number of batches, logs progress."""
    total = num_batches
    if hasattr(batches, "__len__") and not isinstance(batches, (Tensor, tuple)):
        total = len(batches) if total is None else min(total, len(batches))
    every = max(1, (total or 1000) // 10)
    start, done = time.perf_counter(), 0
    for x in batch_inputs(batches, num_batches):
        model(x.to(device))
        done += 1
        if done % every == 0:
            log.info(
                "%s: %d/%s batches, %.1fs", label, done, total or "?", time.perf_counter() - start
            )
    if done == 0:
        raise ValueError(f"recompute_stats got no batches from {type(batches).__name__}")
    return done


def _write(module: _BatchNorm, name: str, moments: _Moments) -> None:
    if moments.count < 2:
        raise ValueError(
            f"recompute_stats: layer {name!r} saw {moments.count} value(s) per channel; the "
            "unbiased variance needs at least 2. Pass more data."
        )
    module.running_mean.copy_(moments.mean.to(module.running_mean.dtype))
    module.running_var.copy_((moments.m2 / (moments.count - 1)).to(module.running_var.dtype))


@contextlib.contextmanager
def _collecting(targets: dict[nn.Module, _Moments], first_only: bool) -> Iterator[list]:
    """Accumulate the input moments of target layers; ``first_only`` keeps only the first layer
    that runs (the next one in execution order, for the sequential method)."""
    chosen: list[nn.Module] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if first_only:
            if not chosen:
                chosen.append(module)
            if module is not chosen[0]:
                return
        elif module not in chosen:
            chosen.append(module)
        targets[module].update(args[0] if args else next(iter(kwargs.values())))

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in targets]
    try:
        yield chosen
    finally:
        for handle in handles:
            handle.remove()


def recompute_stats(
    model: nn.Module, batches: Any, num_batches: int | None = None, method: str = "precise"
) -> nn.Module:
    """Set every batch layer's running stats to the exact population mean and unbiased variance
    of its input over ``batches``; returns ``model`` in eval mode.

    Statistics are merged batch by batch in float64 (Chan et al.'s parallel mean/M2 combination),
    so no activations are kept and large offsets do not cancel. ``num_batches_tracked`` is left
    alone: it is a training step counter (batch renorm's schedule runs on it, and torch's
    ``momentum=None`` averaging), not a count of the data seen here.

    - ``method="precise"`` (PreciseBN, Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm"): one
      pass in which every batch layer normalizes with batch statistics, as in a train-mode forward
      (for batch_renorm: without the r/d correction), while the input statistics of all layers are
      accumulated at once. Other modules (dropout, ...) run in eval mode.
    - ``method="sequential"``: layer by layer in execution order; the layer being estimated sees
      the upstream layers already recomputed and used in eval mode (running statistics), so the
      statistics match eval-time inputs exactly. One pass over the data per batch layer, so
      ``batches`` must be re-iterable (a list or DataLoader, not a generator).

    ``batches``: a tensor (one batch), an ``(x, y, ...)`` tuple (one batch), or an iterable of
    tensors / ``(x, y, ...)`` tuples or lists, e.g. a DataLoader. ``num_batches`` limits each pass.

    Args:
        model: a model with batch layers (every ``_BatchNorm``) that track running statistics.
        batches: the data, as :func:`~normzoo.testtime.inputs.batch_inputs` accepts it.
        num_batches: at most this many batches per pass (None: all).
        method: ``"precise"`` (default) or ``"sequential"`` (:data:`RECOMPUTE_METHODS`).

    Returns:
        ``model``, in eval mode, with new ``running_mean`` and ``running_var``.

    Raises:
        ValueError: unknown method, no batch layers, a layer without running buffers, no
            batches, or a layer that saw fewer than 2 values per channel.
        TypeError: ``method="sequential"`` with a one-shot iterator, or batches that are not
            floating-point tensors.

    Examples:
        >>> import torch, normzoo
        >>> from torch import nn
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(normzoo.create("batch", 2))
        >>> data = [torch.randn(8, 2) * 3 + 1 for _ in range(4)]
        >>> _ = normzoo.recompute_stats(model, data)
        >>> everything = torch.cat(data)
        >>> torch.allclose(model[0].running_mean, everything.mean(0))
        True
        >>> torch.allclose(model[0].running_var, everything.var(0))  # unbiased, over all data
        True
    """
    if method not in RECOMPUTE_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(RECOMPUTE_METHODS)}")
    if num_batches is not None and (isinstance(num_batches, bool) or num_batches < 1):
        raise ValueError(f"num_batches must be a positive int or None, got {num_batches!r}")
    layers = batch_layers(model)
    if not layers:
        raise ValueError(
            f"recompute_stats: {type(model).__name__} has no batch layers (torch/zoo BatchNorm, "
            "batch_renorm, SyncBatchNorm, ...); batch-independent norms have no statistics"
        )
    missing = [repr(n) for n, m in layers if m.running_mean is None or m.running_var is None]
    if missing:
        raise ValueError(
            f"recompute_stats: layer(s) {', '.join(missing)} have no running buffers "
            "(track_running_stats=False); there is nowhere to store statistics"
        )
    if method == "sequential" and isinstance(batches, Iterator):
        raise TypeError(
            "method='sequential' iterates the data once per batch layer; pass a list or a "
            "DataLoader instead of a one-shot iterator, or use method='precise'"
        )
    names = {m: name for name, m in layers}
    device = layers[0][1].running_mean.device
    model.eval()
    saved = {m: (m.running_mean.clone(), m.running_var.clone()) for _, m in layers}
    try:
        moments = _recompute(model, layers, names, batches, num_batches, method, device)
    except BaseException:
        with torch.no_grad():  # a failed pass (non-finite data, ...) leaves every layer as it was
            for module, (mean, var) in saved.items():
                module.running_mean.copy_(mean)
                module.running_var.copy_(var)
        raise
    unused = [names[m] for m, mom in moments.items() if mom.count == 0]
    if unused:
        log.warning("recompute_stats: layer(s) %s never ran; statistics kept", ", ".join(unused))
    return model


def _recompute(model, layers, names, batches, num_batches, method, device) -> dict:
    """The passes of `recompute_stats`; returns the moments of the layers not yet written."""
    with torch.no_grad():
        if method == "precise":
            moments = {m: _Moments(names[m]) for _, m in layers}
            with stats_mode(model, "batch"), _collecting(moments, first_only=False):
                _run_pass(model, batches, num_batches, device, "recompute_stats precise")
            for module, mom in moments.items():
                if mom.count:
                    _write(module, names[module], mom)
        else:
            pending = dict.fromkeys(m for _, m in layers)
            while pending:
                moments = {m: _Moments(names[m]) for m in pending}
                label = f"recompute_stats sequential, layer {len(layers) - len(pending) + 1}"
                with stats_mode(model, "running"), _collecting(moments, first_only=True) as chosen:
                    _run_pass(model, batches, num_batches, device, label)
                if not chosen:
                    break
                _write(chosen[0], names[chosen[0]], moments[chosen[0]])
                del pending[chosen[0]]
            moments = {m: _Moments(names[m]) for m in pending}
    return moments
