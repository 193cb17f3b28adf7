"""Cross-process batch statistics for the zoo's batch layers, on any backend (gloo included).

``torch.nn.SyncBatchNorm`` runs only on CUDA and its ``convert_sync_batchnorm`` would turn a
``batch_renorm`` or ``evonorm_b0`` layer into plain batch norm. :func:`sync_batch_stats` instead
replaces every batch layer of a model by a zoo sync layer (:class:`SyncBatchNorm`,
:class:`SyncBatchRenorm`, :class:`SyncEvoNormB0`, built as such and sharing the layer's
parameters and buffers) that, in training, normalizes with the statistics of the *global*
batch: each process's per-channel mean and sum of squared deviations, merged across processes
with Chan et al.'s formula (no sum-of-squares cancellation). The all-reduce carries gradients,
so each process gets the gradient of the summed loss, as with torch's SyncBatchNorm.
For Lightning DDP, pass ``plugins=[ZooLayerSync()]`` to the Trainer (instead of
``sync_batchnorm=True``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from normzoo import functional as nzf
from normzoo.convert import convert
from normzoo.layers import BatchNorm, BatchRenorm, EvoNormB0, GhostBatchNorm
from normzoo.layers.act import (
    BatchNormAct,
    BatchRenormAct,
    EvoNormB0Act,
    GhostBatchNormAct,
    NormActMixin,
)
from normzoo.layers.channels_last import (
    BatchNormChannelsLast,
    BatchRenormChannelsLast,
    make_channels_last,
)

__all__ = [
    "SyncBatchNorm",
    "SyncBatchRenorm",
    "SyncBatchRenormChannelsLast",
    "SyncBatchNormChannelsLast",
    "SyncEvoNormB0",
    "ZooLayerSync",
    "global_moments",
    "sync_batch_stats",
    "unsync_batch_stats",
]


class _AllReduceSum(torch.autograd.Function):
    """Sum all-reduce whose backward sum-all-reduces the gradient: ``y = sum_r x_r`` on every
    rank, so the gradient of the summed loss wrt ``x_r`` is ``sum_r' dL_r'/dy``, exactly.

    What ``torch.distributed.nn.functional.all_reduce`` computes (deprecated since torch 2.14);
    its suggested replacement, ``torch.distributed._functional_collectives.all_reduce``, gets
    this backward only in recent torch releases, and normzoo supports torch >= 2.3."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        ctx.group = group
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def _is_distributed(group) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def global_moments(x: Tensor, group=None) -> tuple[Tensor, Tensor, int]:
    """Per-channel mean and biased variance of ``x`` over (N, *) of every process, and the count.

    Each process computes the moments of its own batch (``functional.channel_moments``); one
    differentiable all-reduce gathers them (each process fills its row of a (world, 2C) table)
    and ``functional.merge_moments`` (Chan et al.) merges them, so every process gets the
    gradient of the summed loss, as with torch's SyncBatchNorm.
    """
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    counts = torch.zeros(world, dtype=torch.float64, device=x.device)
    counts[rank] = nzf.values_per_channel(x)
    dist.all_reduce(counts, group=group)
    total = int(counts.sum().item())
    if total <= 1:
        raise ValueError(
            f"sync batch norm: the global batch holds {total} value(s) per channel; batch "
            f"statistics need more than 1 (use larger per-process batches or eval mode)"
        )
    stat_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    channels = x.shape[1]
    if counts[rank] > 0:
        mean, var = nzf.channel_moments(x.to(stat_dtype))
        row = torch.cat([mean, var * counts[rank].to(stat_dtype)])
    else:  # an empty local batch contributes nothing
        row = torch.zeros(2 * channels, dtype=stat_dtype, device=x.device)
    table = torch.stack([row if r == rank else torch.zeros_like(row) for r in range(world)])
    table = _AllReduceSum.apply(table, group)
    _, mean, m2 = nzf.merge_moments(counts, table[:, :channels], table[:, channels:])
    return mean, m2 / total, total


class _SyncMixin:
    """Training forward with global-batch statistics; used by the sync layer classes.

    ``check_finite`` holds as in the plain layers, with no collective beyond the statistics'
    all-reduce: the merged statistics are the same on every rank (NaN/inf anywhere makes them
    non-finite everywhere), so every rank reaches the same verdict on its own. On CPU every
    rank raises, running statistics and ``num_batches_tracked`` unchanged; on accelerators the
    update is masked on the device. Only the ranks' reading of their own result syncs, which
    ``global_moments`` already does for the count.
    """

    def __init__(self, num_features: int, *, process_group=None, **opts) -> None:
        super().__init__(num_features, **opts)
        self.process_group = process_group

    def _update_mask(self, x: Tensor, mean: Tensor, var: Tensor) -> Tensor | None:
        if not (self.check_finite and self.track_running_stats and self.running_var is not None):
            return None
        return nzf.finite_update_mask(type(self).__name__, x, mean, var)

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and _is_distributed(self.process_group)):
            return super().forward(x)
        self._check_input_dim(x)
        _, factor = self._step()
        mean, var, total = global_moments(x, self.process_group)
        weight, bias = self.weight, self.bias
        if isinstance(self, BatchRenorm) and self.running_mean is not None:
            weight, bias = self._renorm(weight, bias, mean, var)
        ok = self._update_mask(x, mean.detach(), var.detach())
        if self.track_running_stats and self.running_mean is not None:
            if isinstance(self, BatchRenorm):  # the layer's own update (paper or variance EMA)
                nzf.renorm_update_(
                    self.running_mean,
                    self.running_var,
                    mean.detach(),
                    var.detach(),
                    total,
                    factor,
                    self.eps,
                    self.sigma_update,
                    ok,
                )
            else:
                unbiased = var * total / (total - 1)
                nzf.update_running_stats(
                    self.running_mean, self.running_var, mean, unbiased, factor, ok
                )
        self._count()
        return nzf.affine_normalize(x, mean, var, weight, bias, self.eps)

    def _renorm(self, weight, bias, mean, var):
        """Fold Algorithm 1's r and d (computed from the global statistics) into the affine
        parameters: ``weight' = weight * r``, ``bias' = weight * d + bias``."""
        rmax, dmax = self._limits()
        sigma_b = torch.sqrt(var + self.eps)
        r, d = nzf.renorm_correction(
            mean, sigma_b, self.running_mean, self.running_var, self.eps, rmax, dmax
        )
        if weight is None:
            return r, d
        return weight * r, weight * d if bias is None else torch.addcmul(bias, weight, d)


class SyncBatchNorm(_SyncMixin, BatchNorm):
    """:class:`~normzoo.layers.BatchNorm` whose training statistics span all processes."""


class SyncBatchRenorm(_SyncMixin, BatchRenorm):
    """:class:`~normzoo.layers.BatchRenorm` whose training statistics span all processes."""


class SyncEvoNormB0(_SyncMixin, EvoNormB0):
    """:class:`~normzoo.layers.EvoNormB0` whose batch variance ``s2_b`` spans all processes
    (the instance variance stays per sample). ``nn.SyncBatchNorm.convert_sync_batchnorm``
    would replace an EvoNorm-B0 by plain batch norm; :func:`sync_batch_stats` builds this."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and self.v is not None and _is_distributed(self.process_group)):
            return super().forward(x)  # eval, apply_act=False (no statistics) or one process
        self._check_input_dim(x)
        counting = self.track_running_stats and self.num_batches_tracked is not None
        factor = 0.0 if self.momentum is None else self.momentum
        if counting and self.momentum is None:
            factor = nzf.ema_factor(None, int(self.num_batches_tracked) + 1)
        mean, var, total = global_moments(x, self.process_group)
        ok = self._update_mask(x, mean.detach(), var.detach())
        if self.track_running_stats and self.running_var is not None:
            unbiased = var.detach() * (total / (total - 1))
            nzf.ema_update_(self.running_var, unbiased, factor, ok)
        if counting:
            self.num_batches_tracked.add_(1)
        return nzf.evonorm_b0_normalize(x, var, self.weight, self.bias, self.v, self.eps)


class SyncBatchNormAct(NormActMixin, SyncBatchNorm):
    """:class:`SyncBatchNorm` followed by ``drop`` and ``act``."""


class SyncBatchRenormAct(NormActMixin, SyncBatchRenorm):
    """:class:`SyncBatchRenorm` followed by ``drop`` and ``act``."""


class SyncEvoNormB0Act(NormActMixin, SyncEvoNormB0):
    """:class:`SyncEvoNormB0` followed by ``drop`` and ``act``."""


# token models' batch layers (normzoo.layers.channels_last): the same sync over (N * L, C)
SyncBatchNormChannelsLast = make_channels_last(
    SyncBatchNorm, ":class:`SyncBatchNorm` over the tokens of (N, L, C) input.", __name__
)
SyncBatchRenormChannelsLast = make_channels_last(
    SyncBatchRenorm, ":class:`SyncBatchRenorm` over the tokens of (N, L, C) input.", __name__
)

_SYNC_OF = {
    BatchNormChannelsLast: SyncBatchNormChannelsLast,
    BatchRenormChannelsLast: SyncBatchRenormChannelsLast,
    BatchNorm: SyncBatchNorm,
    BatchRenorm: SyncBatchRenorm,
    EvoNormB0: SyncEvoNormB0,
    BatchNormAct: SyncBatchNormAct,
    BatchRenormAct: SyncBatchRenormAct,
    EvoNormB0Act: SyncEvoNormB0Act,
}
_PLAIN_OF = {v: k for k, v in _SYNC_OF.items()}


def _rebuild(module: nn.Module, cls: type, **extra) -> nn.Module:
    """A ``cls`` layer with ``module``'s options that shares its parameters, buffers, drop and
    act modules (like ``nn.SyncBatchNorm.convert_sync_batchnorm``): optimizers and
    checkpoints holding them keep working."""
    if hasattr(module, "init_options"):
        opts = module.init_options()
    else:  # EvoNormB0: _BatchNorm's options and its own
        opts = {k: getattr(module, k) for k in ("eps", "momentum", "affine", "track_running_stats")}
        opts["apply_act"] = module.v is not None
    if isinstance(module, NormActMixin):
        opts.update(act_layer=module.act, drop_layer=module.drop)
    new = cls(module.num_features, **opts, **extra, device="meta")
    for name, param in module.named_parameters(recurse=False):
        setattr(new, name, param)
    for name, buf in module.named_buffers(recurse=False):
        setattr(new, name, buf)
    new.check_finite = module.check_finite
    new.train(module.training)
    return new


_LOCAL = (GhostBatchNorm, GhostBatchNormAct)


def _unsupported(module: nn.Module, action: str) -> TypeError:
    return TypeError(
        f"{action}: no sync layer for {type(module).__qualname__}, a batch-dependent layer that "
        f"is not plain batch norm or batch renorm (a subclass with code of its own); replacing "
        f"it would silently change what it computes. "
        f"Supported: torch's and timm's batch-norm layers and normzoo's "
        f"{sorted(c.__name__ for c in _SYNC_OF)}. Sync it yourself (e.g. subclass "
        f"normzoo.distributed.SyncBatchNorm), or train without syncing that layer"
    )


def _convertible_to_zoo(module: nn.Module) -> bool:
    """torch's own batch-norm classes and timm's (plain and norm+act): their semantics are
    batch norm (+ drop + act), which ``convert`` keeps."""
    return type(module) in _TORCH_BATCH_NORMS or type(module).__module__.startswith("timm.")


_TORCH_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _replace_children(model: nn.Module, replace) -> nn.Module:
    root = replace(model)
    if root is not None:
        return root
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            new = replace(child)
            if new is not None:
                setattr(parent, child_name, new)
    return model


def sync_batch_stats(model: nn.Module, process_group=None) -> nn.Module:
    """Make every batch layer of ``model`` use global-batch statistics in training (in place).

    torch's BatchNorm*/SyncBatchNorm layers (and timm's BatchNormAct2d) first become zoo
    ``batch`` layers, parameters and buffers kept; every zoo batch and batch_renorm layer is
    then rebuilt as its sync class, sharing the parameters, buffers and act/drop modules.
    ``evonorm_b0`` becomes :class:`SyncEvoNormB0` (global batch variance; torch's
    ``convert_sync_batchnorm`` would make it plain batch norm). ``ghost_batch`` keeps its local
    statistics (its chunks are local by design); other subclasses of batch norm (with code of
    their own) raise a TypeError rather than being replaced. Outside an initialized
    multi-process group the sync layers compute exactly what the plain ones do.
    Returns ``model`` (or the new layer when ``model`` itself is a batch layer).
    """

    def replace(module: nn.Module) -> nn.Module | None:
        if isinstance(module, _SyncMixin):  # synced already (maybe a user's sync subclass)
            module.process_group = process_group
            return None
        if not isinstance(module, _BatchNorm) or type(module) in _LOCAL:
            return None  # statistics local by design (see the docstring)
        if _convertible_to_zoo(module):
            module = convert(module, "batch")
        target = _SYNC_OF.get(type(module))
        if target is None:
            raise _unsupported(module, "sync_batch_stats")
        return _rebuild(module, target, process_group=process_group)

    return _replace_children(model, replace)


def unsync_batch_stats(model: nn.Module) -> nn.Module:
    """Undo :func:`sync_batch_stats` (former torch layers stay zoo ``batch`` layers)."""

    def replace(module: nn.Module) -> nn.Module | None:
        if not isinstance(module, _SyncMixin):
            return None
        plain = _PLAIN_OF.get(type(module))
        if plain is None:
            raise _unsupported(module, "unsync_batch_stats")
        return _rebuild(module, plain)

    return _replace_children(model, replace)


try:  # Lightning integration
    from lightning.pytorch.plugins.layer_sync import LayerSync

    class ZooLayerSync(LayerSync):
        """Lightning plugin: global batch statistics for zoo batch layers on any DDP backend.

        ``Trainer(strategy="ddp", plugins=[ZooLayerSync()])``; unlike ``sync_batchnorm=True`` it
        keeps batch renorm a batch renorm and works with gloo on CPU.
        """

        def apply(self, model: nn.Module) -> nn.Module:
            return sync_batch_stats(model)

        def revert(self, model: nn.Module) -> nn.Module:
            return unsync_batch_stats(model)

except ImportError:  # pragma: no cover - lightning is a dependency; keep the layers usable
    ZooLayerSync = None  # type: ignore[assignment,misc]
