"""Test-time statistics of batch layers: which mean and variance a trained model normalizes with.

`stats_mode` switches every batch layer of a model (zoo, torch, SyncBatchNorm, timm norm+act) to
running, batch, mixed or online statistics for the duration of a ``with`` block;
`recompute_stats` replaces running statistics by exact population statistics (PreciseBN, AdaBN).

Both work through forward pre/post hooks that swap a layer's ``training`` flag and running
buffers for the duration of one forward call, so the layer's own forward (activation and drop
of a norm+act layer included) runs unchanged and, between forward calls, the model looks
exactly as the user left it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from normzoo.functional import batch_stats, values_per_channel

log = logging.getLogger(__name__)

STATS_MODES = ("running", "batch", "mix", "online")
RECOMPUTE_METHODS = ("precise", "sequential")


def batch_layers(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """(qualified name, module) of every batch-dependent layer, i.e. every torch ``_BatchNorm``."""
    return [
        (name or type(module).__name__, module)
        for name, module in model.named_modules()
        if isinstance(module, _BatchNorm)
    ]


def channel_moments(x: Tensor, correction: int) -> tuple[Tensor, Tensor]:
    """Per-channel (mean, variance) of a channels-first tensor over all dims but dim 1."""
    x = x.detach()
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    # torch's batch-norm statistics kernel (Welford) is several times faster than var_mean over
    # (N, *) on CPU; with eps = 0 it returns 1/sqrt(biased var), or 0 where the variance is 0
    mean, invstd = batch_stats(x, 0.0)
    var = torch.where(invstd > 0, invstd.reciprocal().square(), torch.zeros_like(invstd))
    if correction:
        count = values_per_channel(x)
        var = var * (count / (count - correction))
    return mean, var


@dataclass(eq=False)  # compared by identity: nested contexts may hold equal policies
class _Policy:
    """What one `stats_mode` context asks of one layer."""

    mode: str
    name: str
    prior: float | None = None
    momentum: float | None = None


@dataclass
class _LayerHooks:
    """Hooks installed on one layer, shared by nested contexts (the innermost policy wins)."""

    policies: list[_Policy] = field(default_factory=list)
    saved: list[tuple[bool, Tensor | None, Tensor | None]] = field(default_factory=list)
    handles: list[Any] = field(default_factory=list)


_ACTIVE: weakref.WeakKeyDictionary[nn.Module, _LayerHooks] = weakref.WeakKeyDictionary()


def _require_two_values(policy: _Policy, x: Tensor) -> None:
    if values_per_channel(x) < 2:
        raise ValueError(
            f"stats_mode {policy.mode!r}: layer {policy.name!r} got input of shape "
            f"{tuple(x.shape)}, i.e. one value per channel: no batch variance exists. "
            "Use stats_mode 'mix' with a prior (e.g. prior=16), or 'running', or feed batches "
            "with at least 2 samples."
        )


def _override(module: _BatchNorm, policy: _Policy, x: Tensor) -> tuple[Tensor | None, ...]:
    """The (running_mean, running_var) this forward call should normalize with."""
    mode = policy.mode
    if mode == "running":
        return module.running_mean, module.running_var
    if mode == "batch":
        _require_two_values(policy, x)
        return None, None
    if mode == "mix":
        # Schneider et al. 2020: n = samples in the test batch, N = prior pseudo-samples.
        n, prior = x.shape[0], float(policy.prior)
        mean_b, var_b = channel_moments(x, correction=0)
        src_mean, src_var = module.running_mean, module.running_var
        mean = (prior * src_mean.to(mean_b.dtype) + n * mean_b) / (prior + n)
        var = (prior * src_var.to(var_b.dtype) + n * var_b) / (prior + n)
        return mean.to(src_mean.dtype), var.to(src_var.dtype)
    # online: EMA update of the running buffers (unbiased variance, as torch does), then use them
    _require_two_values(policy, x)
    mean_b, var_b = channel_moments(x, correction=1)
    with torch.no_grad():
        momentum = policy.momentum if policy.momentum is not None else module.momentum
        if module.num_batches_tracked is not None:
            module.num_batches_tracked.add_(1)
        if momentum is None:  # cumulative average, as torch does for momentum=None
            count = module.num_batches_tracked
            momentum = 1.0 / float(count) if count is not None and count > 0 else 1.0
        module.running_mean.lerp_(mean_b.to(module.running_mean.dtype), momentum)
        module.running_var.lerp_(var_b.to(module.running_var.dtype), momentum)
    return module.running_mean, module.running_var


def _pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
    hooks = _ACTIVE.get(module)
    if hooks is None or not hooks.policies:
        return None
    x = args[0] if args else next(iter(kwargs.values()))
    running_mean, running_var = _override(module, hooks.policies[-1], x)
    hooks.saved.append((module.training, module.running_mean, module.running_var))
    module.training = False  # this module only: children (a norm+act layer's drop/act) keep theirs
    module.running_mean = running_mean
    module.running_var = running_var
    return None


def _post_hook(module: nn.Module, args: tuple, output: Any) -> None:
    hooks = _ACTIVE.get(module)
    if hooks is None or not hooks.saved:
        return None
    module.training, module.running_mean, module.running_var = hooks.saved.pop()
    return None


def _push(module: nn.Module, policy: _Policy) -> None:
    hooks = _ACTIVE.get(module)
    if hooks is None:
        hooks = _LayerHooks()
        hooks.handles = [
            module.register_forward_pre_hook(_pre_hook, with_kwargs=True),
            # prepend: user forward hooks see the layer restored; always_call: restore on errors
            module.register_forward_hook(_post_hook, prepend=True, always_call=True),
        ]
        _ACTIVE[module] = hooks
    hooks.policies.append(policy)


def _pop(module: nn.Module, policy: _Policy) -> None:
    hooks = _ACTIVE.get(module)
    if hooks is None:
        return
    hooks.policies = [p for p in hooks.policies if p is not policy]
    if not hooks.policies:
        for handle in hooks.handles:
            handle.remove()
        del _ACTIVE[module]


def _check_mode(mode: str, prior: float | None, momentum: float | None) -> None:
    if mode not in STATS_MODES:
        raise ValueError(f"unknown stats mode {mode!r}; choose one of {', '.join(STATS_MODES)}")
    if mode == "mix":
        if prior is None or isinstance(prior, bool):
            raise ValueError(
                "stats_mode 'mix' needs prior=N, the number of pseudo-samples the running "
                "statistics count for (Schneider et al. 2020 use N=16 for batch size 1..64)"
            )
        if not (isinstance(prior, (int, float)) and math.isfinite(prior) and prior > 0):
            raise ValueError(f"stats_mode 'mix': prior must be a finite number > 0, got {prior!r}")
    elif prior is not None:
        raise ValueError(f"prior={prior!r} only applies to stats_mode 'mix', not {mode!r}")
    if momentum is not None:
        if mode != "online":
            raise ValueError(f"momentum={momentum!r} only applies to stats_mode 'online'")
        if isinstance(momentum, bool) or not (0.0 < momentum <= 1.0):
            raise ValueError(f"stats_mode 'online': momentum must be in (0, 1], got {momentum!r}")


@contextlib.contextmanager
def stats_mode(
    model: nn.Module, mode: str, prior: float | None = None, momentum: float | None = None
) -> Iterator[nn.Module]:
    """Make every batch layer of ``model`` normalize with the chosen statistics inside the block.

    Modes (per channel; batch layers are all ``torch.nn.modules.batchnorm._BatchNorm``):

    - ``"running"``: running mean/variance, as trained; a layer in training mode then behaves as
      frozen batch norm and does not update its buffers.
    - ``"batch"``: mean and biased variance of the current batch; buffers untouched. A batch
      with one value per channel (one sample, no spatial dims) raises ValueError.
    - ``"mix"``: ``mean = (N*m_src + n*m_batch)/(N+n)``, ``var = (N*v_src + n*v_batch)/(N+n)``
      with the biased batch variance, ``N = prior`` pseudo-samples (required, > 0) and ``n`` the
      number of SAMPLES in the test batch (values per channel divided by the spatial size), as in
      Schneider et al. 2020, "Improving robustness against common corruptions by covariate
      shift adaptation". Works at batch size 1.
    - ``"online"``: running statistics keep adapting by EMA with ``momentum`` (default: the
      layer's own, ``None`` = cumulative average) as batches stream through, and normalization
      uses the updated values; buffers are restored on exit.

    Batch-independent layers are untouched. Buffers (outside ``online``), ``training`` flags,
    ``requires_grad`` and user hooks stay as they are, and everything is restored on exit, also
    on exceptions. Contexts nest: the innermost mode wins. ``running``/``mix``/``online`` need
    running buffers and raise ValueError naming a layer that has none.
    """
    _check_mode(mode, prior, momentum)
    layers = batch_layers(model)
    if mode != "batch":
        missing = [repr(n) for n, m in layers if m.running_mean is None or m.running_var is None]
        if missing:
            raise ValueError(
                f"stats_mode {mode!r} needs running statistics, but layer(s) {', '.join(missing)} "
                "have none (track_running_stats=False or buffers set to None); use mode 'batch', "
                "or recompute_stats(model, data) on a model whose layers track running stats"
            )
    snapshots = []
    if mode == "online":
        snapshots = [
            (m, m.running_mean.clone(), m.running_var.clone(), _clone(m.num_batches_tracked))
            for _, m in layers
        ]
    policies = [(m, _Policy(mode, name, prior, momentum)) for name, m in layers]
    try:
        for module, policy in policies:
            _push(module, policy)
        yield model
    finally:
        for module, policy in policies:
            _pop(module, policy)
        with torch.no_grad():
            for module, mean, var, count in snapshots:
                _restore(module, "running_mean", mean)
                _restore(module, "running_var", var)
                _restore(module, "num_batches_tracked", count)


def _clone(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.clone()


def _restore(module: nn.Module, name: str, value: Tensor | None) -> None:
    current = getattr(module, name)
    if value is not None and current is not None and current.shape == value.shape:
        current.copy_(value)


# --------------------------------------------------------------------------------------------
# recompute_stats


@dataclass
class _Moments:
    """Per-channel count, mean and sum of squared deviations, merged with Chan et al. 1979."""

    count: int = 0
    batches: int = 0
    mean: Tensor | None = None
    m2: Tensor | None = None

    def update(self, x: Tensor) -> None:
        """Merge one batch: per-batch mean/M2 in float64, then Chan's parallel combination."""
        n_b = values_per_channel(x)
        if n_b == 0:
            return
        var_b, mean_b = torch.var_mean(
            x.detach().to(torch.float64), dim=[0, *range(2, x.dim())], correction=0
        )
        m2_b = var_b * n_b
        if self.mean is None:
            self.count, self.mean, self.m2 = n_b, mean_b, m2_b
        else:
            total = self.count + n_b
            delta = mean_b - self.mean
            self.mean = self.mean + delta * (n_b / total)
            self.m2 = self.m2 + m2_b + delta.square() * (self.count * n_b / total)
            self.count = total
        self.batches += 1


def _inputs(batches: Any, num_batches: int | None) -> Iterator[Tensor]:
    """Yield model inputs: a tensor is one batch, a tuple ``(x, y, ...)`` is one batch, any other
    iterable yields batches that are tensors or ``(x, y, ...)`` tuples/lists."""
    if isinstance(batches, Tensor) or (
        isinstance(batches, tuple) and batches and isinstance(batches[0], Tensor)
    ):
        batches = [batches]
    if not isinstance(batches, Iterable):
        raise TypeError(
            f"batches must be a tensor, an (x, y, ...) tuple or an iterable of them (e.g. a "
            f"DataLoader), got {type(batches).__name__}"
        )
    for index, batch in enumerate(batches):
        if num_batches is not None and index >= num_batches:
            return
        x = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
        if not isinstance(x, Tensor):
            raise TypeError(
                f"batch {index} has input of type {type(x).__name__}; expected a tensor or an "
                "(x, y, ...) tuple/list whose first element is the model input"
            )
        if not x.is_floating_point():
            raise TypeError(
                f"batch {index} has a {x.dtype} input; expected a floating-point model input. "
                "If you passed one (x, y) batch as a list, pass it as a tuple (x, y) instead."
            )
        if x.shape[0] == 0:
            raise ValueError(f"batch {index} is empty (shape {tuple(x.shape)}); drop empty batches")
        yield x


def _run_pass(
    model: nn.Module, batches: Any, num_batches: int | None, device: torch.device, label: str
) -> int:
    """One forward pass over the data; returns the number of batches, logs progress."""
    total = num_batches
    if hasattr(batches, "__len__") and not isinstance(batches, (Tensor, tuple)):
        total = len(batches) if total is None else min(total, len(batches))
    every = max(1, (total or 1000) // 10)
    start, done = time.perf_counter(), 0
    for x in _inputs(batches, num_batches):
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
    if module.num_batches_tracked is not None:
        module.num_batches_tracked.fill_(moments.batches)


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
    so no activations are kept and large offsets do not cancel. ``num_batches_tracked`` is set to
    the number of batches a layer saw.

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
    with torch.no_grad():
        if method == "precise":
            moments = {m: _Moments() for _, m in layers}
            with stats_mode(model, "batch"), _collecting(moments, first_only=False):
                _run_pass(model, batches, num_batches, device, "recompute_stats precise")
            for module, mom in moments.items():
                if mom.count:
                    _write(module, names[module], mom)
        else:
            pending = dict.fromkeys(m for _, m in layers)
            while pending:
                moments = {m: _Moments() for m in pending}
                label = f"recompute_stats sequential, layer {len(layers) - len(pending) + 1}"
                with stats_mode(model, "running"), _collecting(moments, first_only=True) as chosen:
                    _run_pass(model, batches, num_batches, device, label)
                if not chosen:
                    break
                _write(chosen[0], names[chosen[0]], moments[chosen[0]])
                del pending[chosen[0]]
            moments = {m: _Moments() for m in pending}
    unused = [names[m] for m, mom in moments.items() if mom.count == 0]
    if unused:
        log.warning("recompute_stats: layer(s) %s never ran; statistics kept", ", ".join(unused))
    return model
