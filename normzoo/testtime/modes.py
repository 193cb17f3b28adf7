"""Test-time statistics of batch layers: which mean and variance a trained model normalizes with.

`stats_mode` switches every batch layer of a model (zoo, torch, SyncBatchNorm, timm norm+act) to
running, batch, mixed or online statistics for the duration of a ``with`` block.

It works through forward pre/post hooks that swap a layer's ``training`` flag and running
buffers for the duration of one forward call, so the layer's own forward (activation and drop
of a norm+act layer included) runs unchanged and, between forward calls, the model looks
exactly as the user left it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from normzoo import functional as nzf

log = logging.getLogger(__name__)

STATS_MODES = ("running", "batch", "mix", "online")


def batch_layers(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """(qualified name, module) of every batch-dependent layer, i.e. every torch ``_BatchNorm``."""
    return [
        (name or type(module).__name__, module)
        for name, module in model.named_modules()
        if isinstance(module, _BatchNorm)
    ]


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
    if nzf.values_per_channel(x) < 2:
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
    if mode == "mix":  # Schneider et al. 2020: n = samples in the test batch
        batch_mean, batch_var = nzf.channel_moments(x.detach(), correction=0)
        mean, var = nzf.mix_moments(
            module.running_mean, module.running_var, batch_mean, batch_var, policy.prior, len(x)
        )
        return mean.to(module.running_mean.dtype), var.to(module.running_var.dtype)
    # online: EMA update of the running buffers (unbiased variance, as torch does), then use them
    _require_two_values(policy, x)
    batch_mean, batch_var = nzf.channel_moments(x.detach(), correction=1)
    if module.num_batches_tracked is not None:
        module.num_batches_tracked.add_(1)
    momentum = policy.momentum if policy.momentum is not None else module.momentum
    factor = nzf.ema_factor(momentum, module.num_batches_tracked)
    nzf.update_running_stats(module.running_mean, module.running_var, batch_mean, batch_var, factor)
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
