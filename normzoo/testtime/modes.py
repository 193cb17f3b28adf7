"""Test-time statistics of batch layers: which mean and variance a trained model normalizes with.

`stats_mode` switches every batch layer of a model (zoo, torch, SyncBatchNorm, timm norm+act) to
running, batch, mixed or online statistics for the duration of a ``with`` block.

It works through forward pre/post hooks that swap a layer's ``training`` flag and running
buffers for the duration of one forward call, so the layer's own forward (activation and drop
of a norm+act layer included) runs unchanged and, between forward calls, the model looks
exactly as the user left it.
"""

from __future__ import annotations

import logging
import math
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from normzoo import functional as nzf

log = logging.getLogger(__name__)

STATS_MODES = ("running", "batch", "mix", "online")
VARIANCES = ("biased", "unbiased")


def batch_layers(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """(qualified name, module) of every batch-dependent layer, i.e. every torch ``_BatchNorm``."""
    return [
        (name or type(module).__name__, module)
        for name, module in model.named_modules()
        if isinstance(module, _BatchNorm)
    ]


_Buffers = tuple[Tensor, Tensor, "Tensor | None"]


@dataclass(eq=False)  # compared by identity: nested contexts may hold equal policies
class _Policy:
    """What one entered `stats_mode` context asks of one layer."""

    mode: str
    name: str
    prior: float | None = None
    momentum: float | None = None
    var: str = "biased"
    # online: the layer's (running_mean, running_var, num_batches_tracked) before this context
    snapshot: _Buffers | None = None


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


def require_finite(where: str, *stats: Tensor) -> None:
    """Raise ValueError when a batch statistic is NaN or infinite (as a training forward does),
    before any running statistic is updated with it."""
    if not all(bool(torch.isfinite(t).all()) for t in stats):
        raise ValueError(
            f"{where}: the batch holds non-finite values (NaN or inf), so its statistics are"
            " not finite; running statistics are left untouched. Clean or drop such batches"
            " (e.g. x.nan_to_num() or a mask of torch.isfinite(x))"
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
        if math.isinf(policy.prior):
            return module.running_mean, module.running_var
        correction = 1 if policy.var == "unbiased" else 0
        if correction or policy.prior == 0:
            _require_two_values(policy, x)
        batch_mean, batch_var = nzf.channel_moments(x.detach(), correction=correction)
        mean, var = nzf.mix_moments(
            module.running_mean, module.running_var, batch_mean, batch_var, policy.prior, len(x)
        )
        return mean.to(module.running_mean.dtype), var.to(module.running_var.dtype)
    # online: EMA update of the running buffers (unbiased variance, as torch does), then use them
    _require_two_values(policy, x)
    batch_mean, batch_var = nzf.channel_moments(x.detach(), correction=1)
    require_finite(f"stats_mode 'online': layer {policy.name!r}", batch_mean, batch_var)
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


def _push(module: _BatchNorm, policy: _Policy) -> None:
    hooks = _ACTIVE.get(module)
    if hooks is None:
        hooks = _LayerHooks()
        hooks.handles = [
            module.register_forward_pre_hook(_pre_hook, with_kwargs=True),
            # prepend: user forward hooks see the layer restored; always_call: restore on errors
            module.register_forward_hook(_post_hook, prepend=True, always_call=True),
        ]
        _ACTIVE[module] = hooks
    if policy.mode == "online":
        count = module.num_batches_tracked
        policy.snapshot = (
            module.running_mean.clone(),
            module.running_var.clone(),
            None if count is None else count.clone(),
        )
    hooks.policies.append(policy)


def _pop(module: _BatchNorm, policy: _Policy) -> None:
    """Remove one context's policy; undo its online updates now, or hand the undo on.

    An online context exited while a later online context on the same layer is still active
    (exits out of order) cannot undo its updates alone: the later context's snapshot already
    contains them. It hands its snapshot to the next online context above it, whose exit then
    restores the buffers to what they were before both; whatever the exit order, the buffers
    end as they were before the first online context.
    """
    hooks = _ACTIVE.get(module)
    if hooks is None:
        return
    index = next((i for i, p in enumerate(hooks.policies) if p is policy), None)
    if index is None:
        return
    if policy.snapshot is not None:
        heir = next((p for p in hooks.policies[index + 1 :] if p.snapshot is not None), None)
        if heir is not None:
            heir.snapshot = policy.snapshot
        else:
            _restore(module, policy.snapshot)
    del hooks.policies[index]
    if not hooks.policies:
        for handle in hooks.handles:
            handle.remove()
        del _ACTIVE[module]


def _restore(module: _BatchNorm, buffers: _Buffers) -> None:
    with torch.no_grad():
        for name, value in zip(
            ("running_mean", "running_var", "num_batches_tracked"), buffers, strict=True
        ):
            current = getattr(module, name)
            if value is not None and current is not None and current.shape == value.shape:
                current.copy_(value)


def _check_mode(mode: str, prior: float | None, momentum: float | None, var: str) -> None:
    if mode not in STATS_MODES:
        raise ValueError(f"unknown stats mode {mode!r}; choose one of {', '.join(STATS_MODES)}")
    if mode == "mix":
        if prior is None or isinstance(prior, bool):
            raise ValueError(
                "stats_mode 'mix' needs prior=N, the number of pseudo-samples the running "
                "statistics count for (Schneider et al. 2020 use N=16 for batch size 1..64; "
                "N=0 is 'batch', N=float('inf') is 'running')"
            )
        if not (isinstance(prior, (int, float)) and prior >= 0):  # NaN fails too
            raise ValueError(
                f"stats_mode 'mix': prior must be a number in [0, inf] (0 = batch statistics, "
                f"inf = running statistics), got {prior!r}"
            )
    elif prior is not None:
        raise ValueError(f"prior={prior!r} only applies to stats_mode 'mix', not {mode!r}")
    if var not in VARIANCES:
        raise ValueError(f"stats_mode: var must be one of {VARIANCES}, got {var!r}")
    if var != "biased" and mode != "mix":
        raise ValueError(f"var={var!r} only applies to stats_mode 'mix', not {mode!r}")
    if momentum is not None:
        if mode != "online":
            raise ValueError(f"momentum={momentum!r} only applies to stats_mode 'online'")
        if isinstance(momentum, bool) or not (0.0 < momentum <= 1.0):
            raise ValueError(f"stats_mode 'online': momentum must be in (0, 1], got {momentum!r}")


class StatsMode:
    """The context manager `stats_mode` returns; reusable and re-entrant.

    Each ``__enter__`` installs a fresh set of per-layer policies and each ``__exit__`` removes
    the set of the most recent entry of this object, so one object can be entered again after
    it exits, or while it is active (``with ctx: with ctx: ...``).
    """

    def __init__(
        self,
        model: nn.Module,
        mode: str,
        prior: float | None = None,
        momentum: float | None = None,
        var: str = "biased",
    ) -> None:
        _check_mode(mode, prior, momentum, var)
        self.model, self.mode, self.prior, self.momentum, self.var = (
            model,
            mode,
            None if prior is None else float(prior),
            momentum,
            var,
        )
        self._entries: list[list[tuple[_BatchNorm, _Policy]]] = []

    def __repr__(self) -> str:
        opts = {"prior": self.prior, "momentum": self.momentum}
        extra = "".join(f", {k}={v!r}" for k, v in opts.items() if v is not None)
        extra += f", var={self.var!r}" if self.var != "biased" else ""
        return f"stats_mode({type(self.model).__name__}, {self.mode!r}{extra})"

    def __enter__(self) -> nn.Module:
        layers = batch_layers(self.model)
        if self.mode != "batch":
            missing = [
                repr(n) for n, m in layers if m.running_mean is None or m.running_var is None
            ]
            if missing:
                raise ValueError(
                    f"stats_mode {self.mode!r} needs running statistics, but layer(s) "
                    f"{', '.join(missing)} have none (track_running_stats=False or buffers set "
                    "to None); use mode 'batch', or recompute_stats(model, data) on a model "
                    "whose layers track running stats"
                )
        entry = [
            (m, _Policy(self.mode, name, self.prior, self.momentum, self.var)) for name, m in layers
        ]
        pushed = []
        try:
            for module, policy in entry:
                _push(module, policy)
                pushed.append((module, policy))
        except BaseException:
            for module, policy in reversed(pushed):
                _pop(module, policy)
            raise
        self._entries.append(entry)
        return self.model

    def __exit__(self, *exc_info: object) -> None:
        if not self._entries:
            raise RuntimeError(f"{self!r} exited more often than it was entered")
        for module, policy in reversed(self._entries.pop()):
            _pop(module, policy)


def stats_mode(
    model: nn.Module,
    mode: str,
    prior: float | None = None,
    momentum: float | None = None,
    var: str = "biased",
) -> StatsMode:
    """Make every batch layer of ``model`` normalize with the chosen statistics inside the block.

    Modes (per channel; batch layers are all ``torch.nn.modules.batchnorm._BatchNorm``):

    - ``"running"``: running mean/variance, as trained; a layer in training mode then behaves as
      frozen batch norm and does not update its buffers.
    - ``"batch"``: mean and biased variance of the current batch; buffers untouched. A batch
      with one value per channel (one sample, no spatial dims) raises ValueError.
    - ``"mix"``: ``mean = (N*m_src + n*m_batch)/(N+n)``, ``var = (N*v_src + n*v_batch)/(N+n)``
      with ``N = prior`` pseudo-samples (required, in [0, inf]: 0 gives the batch statistics,
      ``float("inf")`` the running ones) and ``n`` the number of SAMPLES in the test batch
      (values per channel divided by the spatial size), as in Schneider et al. 2020, "Improving
      robustness against common corruptions by covariate shift adaptation". ``var="biased"``
      (default) mixes the biased batch variance, as the paper's text; ``var="unbiased"`` the
      unbiased one (n*H*W - 1 denominator), as their code (bethgelab/robustness,
      ``BayesianBatchNorm``, whose ``prior`` weight is ``N / (N + n)``). Works at batch size 1
      (biased).
    - ``"online"``: running statistics keep adapting by EMA with ``momentum`` (default: the
      layer's own, ``None`` = cumulative average) as batches stream through, and normalization
      uses the updated values; buffers are restored on exit.

    Batch-independent layers are untouched. Buffers (outside ``online``), ``training`` flags,
    ``requires_grad`` and user hooks stay as they are, and everything is restored on exit, also
    on exceptions. Contexts nest (the innermost active mode wins), may exit in any order (online
    buffers end as they were before the first online context), and the returned object may be
    entered again, also while active. ``running``/``mix``/``online`` need running buffers and
    raise ValueError naming a layer that has none.

    Args:
        model: any model; its batch layers (every ``_BatchNorm``) are switched.
        mode: ``"running"``, ``"batch"``, ``"mix"`` or ``"online"`` (:data:`STATS_MODES`).
        prior: ``mix`` only (required there): the pseudo-sample count N of the running
            statistics, in [0, inf].
        momentum: ``online`` only: the EMA weight of each new batch, in (0, 1]; default the
            layer's own.
        var: ``mix`` only: ``"biased"`` (default) or ``"unbiased"`` batch variance.

    Returns:
        A reusable, re-entrant context manager (:class:`StatsMode`); entering it
            returns ``model``.

    Raises:
        ValueError: at the call, for an unknown mode or an option that does not apply to the
            mode; on entering, for a layer without running buffers (all modes but ``batch``);
            in the forward, for a batch with one value per channel where batch statistics are
            needed.

    Examples:
        >>> import torch, normzoo
        >>> from torch import nn
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), normzoo.create("batch", 4)).eval()
        >>> x = torch.randn(1, 3, 8, 8) * 5 + 3  # one shifted test sample
        >>> with normzoo.stats_mode(model, "mix", prior=16):
        ...     y = model(x)
        >>> y.shape
        torch.Size([1, 4, 6, 6])
        >>> with normzoo.stats_mode(model, "batch"):  # its own statistics: mean 0 per channel
        ...     print(model(x).mean(dim=(0, 2, 3)).abs().max().item() < 1e-5)
        True
        >>> model[1].running_mean.tolist()  # buffers untouched
        [0.0, 0.0, 0.0, 0.0]
    """
    return StatsMode(model, mode, prior, momentum, var)
