"""Pure tensor functions behind every normzoo layer.

Layers hold state (parameters, running buffers, step counters); these functions hold the math.
Where torch has a fused kernel that computes the same thing (``F.batch_norm``,
``F.group_norm``) we call it, so the zoo is as fast as torch's own layers.
"""

from __future__ import annotations

import math
import struct

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "SIGMA_UPDATES",
    "affine_normalize",
    "batch_norm",
    "batch_stats",
    "batch_renorm",
    "channel_moments",
    "check_input",
    "ema_factor",
    "ema_update_",
    "evonorm_b0",
    "evonorm_b0_normalize",
    "evonorm_s0",
    "filter_response_norm",
    "finite_update_mask",
    "ghost_batch_norm",
    "group_norm",
    "merge_moments",
    "mix_moments",
    "renorm_correction",
    "renorm_limits",
    "rms_norm",
    "standardize_weight",
    "renorm_update_",
    "update_running_stats",
    "values_per_channel",
]


def check_input(x: Tensor, num_features: int, layer: str, min_dim: int = 2) -> None:
    """Raise a clear error unless ``x`` is channels-first ``(N, C, *)`` with C == num_features."""
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
    if x.shape[1] != num_features:
        raise ValueError(
            f"{layer}: input has {x.shape[1]} channels in dim 1 but the layer was built with "
            f"num_features={num_features}; inputs are channels-first (N, C, *) — permute "
            f"channels-last data with x.movedim(-1, 1), or build the layer with "
            f"num_features={x.shape[1]}"
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
    not ``x``.
    """
    if _must_mask(x):
        return torch.stack([torch.isfinite(s).all() for s in stats]).all()
    if all(s.dtype != torch.float64 for s in stats):
        # a float64 sum of float32/half values cannot overflow, and NaN/inf propagate: finite
        # exactly when every value is; one reduction and one read per statistic
        ok = math.isfinite(sum(float(s.sum(dtype=torch.float64)) for s in stats))
    else:
        ok = all(bool(torch.isfinite(s).all()) for s in stats)
    if not ok:
        raise _nonfinite_error(layer, x)
    return None


def batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    use_batch_stats: bool,
    momentum: float,
    eps: float,
    check_finite: bool = True,
) -> Tensor:
    """Batch normalization (Ioffe & Szegedy 2015), identical to ``F.batch_norm``.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` per channel. With ``use_batch_stats`` the
    biased batch statistics over (N, *) normalize and, when running buffers are given, update them
    in place: ``running = (1 - momentum) * running + momentum * batch`` (unbiased variance).
    Otherwise the running buffers normalize.

    ``check_finite``: a batch with NaN/inf (seen in its per-channel statistics, C values, so
    the check costs no extra pass over ``x``) must not poison the running buffers. On CPU it
    raises ValueError with the buffers restored; on other devices and under ``torch.compile``,
    where raising needs a host sync every step, the buffers silently keep their previous values
    (the output is NaN, so the loss shows it).
    """
    if not use_batch_stats:
        return F.batch_norm(x, running_mean, running_var, weight, bias, False, momentum, eps)
    _check_batch_stats(x, "batch norm")
    if not (check_finite and running_mean is not None and running_var is not None):
        return F.batch_norm(x, running_mean, running_var, weight, bias, True, momentum, eps)
    before = running_mean.clone(), running_var.clone()
    y, mean_b, invstd_b = torch.native_batch_norm(
        x, weight, bias, running_mean, running_var, True, momentum, eps
    )
    ok = torch.isfinite(mean_b).all() & torch.isfinite(invstd_b).all()
    with torch.no_grad():
        if _must_mask(x):
            running_mean.copy_(torch.where(ok, running_mean, before[0]))
            running_var.copy_(torch.where(ok, running_var, before[1]))
        elif not ok:
            running_mean.copy_(before[0])
            running_var.copy_(before[1])
            raise _nonfinite_error("batch norm", x)
    return y


def renorm_limits(
    step: Tensor | int, rmax: float, dmax: float, warmup: int, r_ramp: int, d_ramp: int
) -> tuple[Tensor, Tensor] | tuple[float, float]:
    """Clip limits (r_max, d_max) of Batch Renormalization at 0-based training step ``step``.

    The paper's schedule (Ioffe 2017, Sec. 4.1), linear in between: plain batch norm
    (r_max = 1, d_max = 0) for ``warmup`` steps; then r_max grows linearly from 1 to ``rmax``
    over ``r_ramp`` steps and, separately, d_max from 0 to ``dmax`` over ``d_ramp`` steps
    (a step function at ``warmup`` when a ramp is 0). Tensor math keeps the schedule free of
    graph breaks under ``torch.compile``; a Python ``step`` gives Python floats (the eager CPU
    path, where a dozen scalar tensor ops would cost more than the layer's arithmetic).
    """
    if not isinstance(step, Tensor):  # Python numbers: the same float64 arithmetic, no tensors

        def frac_number(ramp: int) -> float:
            if ramp > 0:
                return min(max((step - warmup) / ramp, 0.0), 1.0)
            return float(step >= warmup)

        return 1.0 + (rmax - 1.0) * frac_number(r_ramp), dmax * frac_number(d_ramp)
    step = step.to(torch.float64)

    def frac(ramp: int) -> Tensor:
        if ramp > 0:
            return ((step - warmup) / ramp).clamp(0.0, 1.0)
        return (step >= warmup).to(torch.float64)

    return 1.0 + (rmax - 1.0) * frac(r_ramp), dmax * frac(d_ramp)


def _reciprocal_in(value: float, dtype: torch.dtype) -> float:
    """``1 / value`` computed in ``dtype`` as the tensor path computes it (float32: the value
    rounded to float32, divided in float32), as a Python float that the dtype holds exactly.
    A float32 quotient rounded from the double quotient of float32 operands is the correctly
    rounded float32 quotient (53 >= 2 * 24 + 2 bits)."""
    if dtype != torch.float32:
        return 1.0 / value
    return _to_float32(1.0 / _to_float32(value))


def _to_float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def _in_dtype(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t.to(dtype)`` without the dispatch when ``t`` has that dtype already (a no-op
    ``.to`` still costs a few microseconds, and batch renorm's step has a dozen of them)."""
    return t if t.dtype == dtype else t.to(dtype)


def renorm_correction(
    mean_b: Tensor,
    sigma_b: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    eps: float,
    rmax: Tensor | float,
    dmax: Tensor | float,
    sigma: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Batch Renormalization's ``r = clip(sigma_B / sigma, 1/rmax, rmax)`` and
    ``d = clip((mu_B - mu) / sigma, -dmax, dmax)``, ``sigma = sqrt(running_var + eps)``,
    without gradient (Ioffe 2017, Algorithm 1), in the dtype of the batch statistics.
    ``sigma``: that value when the caller has it already."""
    with torch.no_grad():
        if isinstance(rmax, Tensor):
            rmax = rmax.to(dtype=mean_b.dtype, device=mean_b.device)
            rmin = 1.0 / rmax
        else:  # 1 / rmax as the tensor path rounds it: rmax to the statistics' dtype first
            rmin = _reciprocal_in(rmax, mean_b.dtype)
        if isinstance(dmax, Tensor):
            dmax = dmax.to(dtype=mean_b.dtype, device=mean_b.device)
        if sigma is None:
            sigma = (_in_dtype(running_var, mean_b.dtype) + eps).sqrt()
        # under no_grad the results carry no graph: no detach needed; in-place clamps
        r = (sigma_b / sigma).clamp_(rmin, rmax)
        d = (mean_b - _in_dtype(running_mean, mean_b.dtype)).div_(sigma).clamp_(-dmax, dmax)
    return r, d


SIGMA_UPDATES = ("paper", "variance_ema")


def renorm_update_(
    running_mean: Tensor,
    running_var: Tensor,
    mean_b: Tensor,
    var_b: Tensor,
    count: int,
    momentum: float,
    eps: float,
    sigma_update: str = "paper",
    ok: Tensor | None = None,
    sigma: Tensor | None = None,
) -> None:
    """Batch Renormalization's update of the moving averages, in place (no gradient).

    ``"paper"`` (Ioffe 2017, Algorithm 1; Keras' ``moving_stddev``): ``mu += a * (mu_B - mu)``
    and ``sigma += a * (sigma_B - sigma)`` with ``sigma_B = sqrt(var_B + eps)`` (biased batch
    variance), stored as ``running_var = max(sigma^2 - eps, 0)`` (as Keras does), so that
    ``sqrt(running_var + eps) = sigma`` and ``nn.BatchNorm2d`` evaluates with (mu, sigma).
    ``"variance_ema"`` (batch norm's update): ``running_var += a * (unbiased var_B -
    running_var)``; sigma is then biased low at a few values per channel.
    ``a = momentum``; ``count`` = values per channel of the batch. ``ok`` (a bool tensor):
    when False, the buffers keep their values (no host sync). ``sigma``:
    ``sqrt(running_var + eps)`` before the update when the caller has it already.
    """
    if sigma_update not in SIGMA_UPDATES:
        raise ValueError(f"sigma_update={sigma_update!r}; choose one of {SIGMA_UPDATES}")
    if sigma_update == "variance_ema":
        unbiased = var_b * (count / (count - 1))
        update_running_stats(running_mean, running_var, mean_b, unbiased, momentum, ok)
        return
    with torch.no_grad():
        if sigma is None or sigma.dtype != running_var.dtype:
            sigma = (running_var + eps).sqrt()
        sigma_b = (_in_dtype(var_b, running_var.dtype) + eps).sqrt_()
        new_var = sigma.lerp(sigma_b, momentum).square_().sub_(eps).clamp_min_(0.0)
        ema_update_(running_mean, mean_b, momentum, ok)
        running_var.copy_(new_var if ok is None else torch.where(ok, new_var, running_var))


def _fold_renorm(weight: Tensor | None, bias: Tensor | None, r: Tensor, d: Tensor):
    """Scale ``weight * r`` and shift ``weight * d + bias``, in the statistics' dtype."""
    if weight is None:
        return r, d if bias is None else d + _in_dtype(bias, d.dtype)
    weight = _in_dtype(weight, r.dtype)
    shift = weight * d if bias is None else torch.addcmul(_in_dtype(bias, d.dtype), weight, d)
    return weight * r, shift


def _renorm_statistics_(
    x, running_mean, running_var, momentum, eps, rmax, dmax, sigma_update, check
):
    """Batch renorm's step without the output: batch statistics (one pass over ``x``), r and d
    from the moving averages before the update, then the update; returns (mu_B, var_B,
    invstd_B, r, d). An opaque custom op (below), so that compilers keep r and d as computed
    here and never recompute them from the running buffers, which the step has updated."""
    mean_b, var_b = channel_moments(x)
    invstd_b = (var_b + eps).rsqrt()
    sigma_b = invstd_b.reciprocal()
    with torch.no_grad():
        sigma = (_in_dtype(running_var, mean_b.dtype) + eps).sqrt_()  # for r, d and the update
    r, d = renorm_correction(mean_b, sigma_b, running_mean, running_var, eps, rmax, dmax, sigma)
    ok = finite_update_mask("batch renorm", x, mean_b, var_b) if check else None
    count = values_per_channel(x)
    renorm_update_(
        running_mean, running_var, mean_b, var_b, count, momentum, eps, sigma_update, ok, sigma
    )
    return mean_b, var_b, invstd_b, r, d


_renorm_statistics_op = torch.library.custom_op(
    "normzoo::batch_renorm_statistics_",
    _renorm_statistics_,
    mutates_args=("running_mean", "running_var"),
    schema="(Tensor x, Tensor(a!) running_mean, Tensor(b!) running_var, float momentum, "
    "float eps, Tensor rmax, Tensor dmax, str sigma_update, bool check) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor)",
)


@_renorm_statistics_op.register_fake
def _(x, running_mean, running_var, momentum, eps, rmax, dmax, sigma_update, check):
    stat_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    return tuple(x.new_empty(x.shape[1], dtype=stat_dtype) for _ in range(5))


class _RenormAffine(torch.autograd.Function):
    """``y = weight * ((x - mu_B) * invstd_B * r + d) + bias`` with r, d, mu_B, invstd_B
    constant, as one eval-mode batch-norm kernel call (r and d folded into its scale and
    shift); the backward is batch norm's training backward from the saved statistics, so the
    gradient equals plain autograd through Algorithm 1 (stop_gradient on r and d)."""

    # forward(ctx, ...) rather than a separate setup_context: with setup_context,
    # Function.apply binds its arguments through inspect.signature on every call (~0.1 ms on
    # a 2-core CPU, as much as batch norm's whole forward at a small shape)
    @staticmethod
    def forward(ctx, x, weight, bias, mean_b, var_b, invstd_b, r, d, eps):
        scale, shift = _fold_renorm(weight, bias, r, d)
        ctx.save_for_backward(x, weight, mean_b, invstd_b, r, d)
        ctx.eps = eps
        ctx.bias_dtype = None if bias is None else bias.dtype
        return torch.native_batch_norm(x, scale, shift, mean_b, var_b, False, 0.0, eps)[0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight, mean_b, invstd_b, r, d = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        scale = r if weight is None else _in_dtype(weight, r.dtype) * r
        mask = [need_x, need_w, need_w or need_b]
        gx, gw_hat, g_sum = torch.ops.aten.native_batch_norm_backward(
            grad, x, scale, None, None, mean_b, invstd_b, True, ctx.eps, mask
        )
        gw = _in_dtype(torch.addcmul(g_sum * d, gw_hat, r), weight.dtype) if need_w else None
        gb = _in_dtype(g_sum, ctx.bias_dtype) if need_b else None
        return gx, gw, gb, None, None, None, None, None, None


def batch_renorm(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    momentum: float,
    eps: float,
    rmax: Tensor | float,
    dmax: Tensor | float,
    sigma_update: str = "paper",
    check_finite: bool = True,
) -> Tensor:
    """Batch Renormalization in training (Ioffe 2017, Algorithm 1).

    ``y = weight * ((x - mu_B) / sigma_B * r + d) + bias`` with
    ``r = stop_grad(clip(sigma_B / sigma, 1/rmax, rmax))``,
    ``d = stop_grad(clip((mu_B - mu) / sigma, -dmax, dmax))``,
    ``sigma_B = sqrt(biased batch var + eps)``, ``sigma = sqrt(running_var + eps)``; r and d use
    the moving averages from *before* this step's update, which then follows
    :func:`renorm_update_` (``sigma_update``, rate ``momentum``).

    Implementation, at batch norm's cost: one pass over ``x`` for the batch statistics and the
    update (:func:`_renorm_statistics_`, a custom op); r and d fold into the per-channel scale and
    shift of one eval-mode batch-norm kernel call; the backward is batch norm's, from the saved
    statistics. ``check_finite`` as in
    :func:`batch_norm` (here the check comes before the update).
    """
    _check_batch_stats(x, "batch renorm")
    if not (
        isinstance(rmax, Tensor) or isinstance(dmax, Tensor) or torch.compiler.is_compiling()
    ):  # eager with Python limits: the same function without the custom op's dispatch
        mean_b, var_b, invstd_b, r, d = _renorm_statistics_(
            x.detach(),
            running_mean,
            running_var,
            float(momentum),
            float(eps),
            float(rmax),
            float(dmax),
            sigma_update,
            bool(check_finite),
        )
        return _RenormAffine.apply(x, weight, bias, mean_b, var_b, invstd_b, r, d, eps)
    rmax = torch.as_tensor(rmax, dtype=torch.float64)
    dmax = torch.as_tensor(dmax, dtype=torch.float64)
    mean_b, var_b, invstd_b, r, d = _renorm_statistics_op(
        x.detach(),
        running_mean,
        running_var,
        float(momentum),
        float(eps),
        rmax,
        dmax,
        sigma_update,
        bool(check_finite),
    )
    return _RenormAffine.apply(x, weight, bias, mean_b, var_b, invstd_b, r, d, eps)


def batch_stats(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Per-channel batch mean and ``1 / sqrt(biased var + eps)`` from torch's batch-norm kernels.

    These kernels are numerically stable (Welford) and several times faster on CPU than
    ``torch.var_mean`` over (N, *); no gradient flows through the result.
    """
    with torch.no_grad():
        if x.is_cuda:
            return torch.batch_norm_stats(x, eps)
        _, mean, invstd = torch.native_batch_norm(x, None, None, None, None, True, 0.0, eps)
        return mean, invstd


def group_norm(
    x: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    """Group normalization (Wu & He 2018), identical to ``F.group_norm``.

    Per sample, channels are split into ``num_groups`` groups; each group is normalized by the
    mean and biased variance over its channels and all spatial positions, then a per-channel
    affine transform applies. ``num_groups=1`` is layer norm over (C, *), ``num_groups=C`` is
    instance norm over (*).
    """
    return F.group_norm(x, num_groups, weight, bias, eps)


# --------------------------------------------------------------------------------------------
# Moments and running statistics: the math that batch layers, sync layers and test-time
# statistics (normzoo.testtime) share.


def channel_moments(x: Tensor, correction: int = 0) -> tuple[Tensor, Tensor]:
    """Per-channel mean and variance of channels-first ``x`` over (N, *).

    ``var = sum((x - mean)^2) / (n - correction)`` with ``n = N * prod(spatial)`` values per
    channel: ``correction=0`` is the biased variance batch norm normalizes with, ``1`` the
    unbiased one it keeps as running variance (NaN for a single value, as ``torch.var``). Half
    precision is computed in float32. When ``x`` requires grad (and grad mode is on) the result
    is differentiable (``torch.var_mean``); otherwise it comes from torch's batch-norm
    statistics kernel (Welford), several times faster on CPU, without gradient.
    """
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    if torch.is_grad_enabled() and x.requires_grad:
        var, mean = torch.var_mean(x, dim=[0, *range(2, x.dim())], correction=correction)
        return mean, var
    if x.device.type == "cpu":  # mean and biased variance in one pass, no output written
        with torch.no_grad():
            mean, var = torch.batch_norm_update_stats(x.detach(), None, None, 0.0)
    else:  # with eps = 0 the kernel returns 1/sqrt(biased var), or 0 where the variance is 0
        mean, invstd = batch_stats(x.detach(), 0.0)
        var = torch.where(invstd > 0, invstd.reciprocal().square(), torch.zeros_like(invstd))
    if correction:
        count = values_per_channel(x)
        factor = count / (count - correction) if count > correction else math.nan  # as torch.var
        var = var * factor
    return mean, var


def merge_moments(count: Tensor, mean: Tensor, m2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Merge k sets of per-channel moments, stacked along dim 0, into those of their union.

    Chan, Golub & LeVeque 1979 (the parallel algorithm for the variance):
    ``n = sum_i n_i``, ``mean = sum_i n_i * mean_i / n``,
    ``M2 = sum_i M2_i + sum_i n_i * (mean_i - mean)^2`` with ``M2_i`` the sum of squared
    deviations from ``mean_i``; no ``E[x^2] - E[x]^2`` cancellation. ``count``: (k,) values per
    set; ``mean``, ``m2``: (k, C). Returns (n, mean, M2); the variance is ``M2 / (n - correction)``.
    Differentiable in ``mean`` and ``m2``.
    """
    weight = count.to(mean.dtype).view(-1, *([1] * (mean.dim() - 1)))
    total = weight.sum(0)
    merged = (weight * mean).sum(0) / total
    m2 = (m2 + weight * (mean - merged).square()).sum(0)
    return count.sum(0), merged, m2


def mix_moments(
    source_mean: Tensor,
    source_var: Tensor,
    batch_mean: Tensor,
    batch_var: Tensor,
    prior: float,
    n: int,
) -> tuple[Tensor, Tensor]:
    """Source statistics worth ``prior`` samples mixed with those of a batch of ``n`` samples.

    Schneider et al. 2020, "Improving robustness against common corruptions by covariate shift
    adaptation": ``mean = (N*m_src + n*m_batch) / (N+n)``, ``var = (N*v_src + n*v_batch) / (N+n)``
    with ``N = prior`` in [0, inf]: ``N = 0`` gives the batch statistics and ``N = inf`` the source
    statistics, both exactly. Computed in the batch statistics' dtype.
    """
    if not (prior >= 0):  # also rejects NaN
        raise ValueError(f"mix_moments: prior must be in [0, inf], got {prior!r}")
    weight = n / (prior + n) if math.isfinite(prior) else 0.0
    if weight == 0.0:  # also where the batch statistics are undefined (NaN)
        return source_mean.to(batch_mean.dtype), source_var.to(batch_var.dtype)
    mean = torch.lerp(source_mean.to(batch_mean.dtype), batch_mean, weight)
    var = torch.lerp(source_var.to(batch_var.dtype), batch_var, weight)
    return mean, var


def ema_factor(momentum: float | None, num_batches_tracked: Tensor | int | None) -> float:
    """The weight of a new batch in the running statistics, as torch's batch norm computes it:
    ``momentum``, or ``1 / num_batches_tracked`` (a cumulative average) when ``momentum`` is
    None; ``num_batches_tracked`` counts the batches including the new one."""
    if momentum is not None:
        return momentum
    count = 0 if num_batches_tracked is None else int(num_batches_tracked)
    return 1.0 / count if count > 0 else 1.0


def ema_update_(running: Tensor, value: Tensor, factor: float, ok: Tensor | None = None) -> None:
    """In place and without gradient: ``running := (1 - factor) * running + factor * value``, the
    EMA update of a running buffer as torch's batch norm does it. ``ok`` (a bool tensor): where
    False the buffer keeps its value (a masked update, no host sync)."""
    with torch.no_grad():
        value = _in_dtype(value, running.dtype)  # no graph under no_grad: no detach needed
        if ok is None:
            running.lerp_(value, factor)
        else:
            running.copy_(torch.where(ok, running.lerp(value, factor), running))


def update_running_stats(
    running_mean: Tensor,
    running_var: Tensor,
    mean: Tensor,
    var: Tensor,
    factor: float,
    ok: Tensor | None = None,
) -> None:
    """:func:`ema_update_` of both running buffers with the batch's mean and *unbiased* variance
    (torch's batch-norm update)."""
    ema_update_(running_mean, mean, factor, ok)
    ema_update_(running_var, var, factor, ok)


def affine_normalize(
    x: Tensor,
    mean: Tensor,
    var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> Tensor:
    """``y = (x - mean) / sqrt(var + eps) * weight + bias`` per channel of channels-first ``x``.

    Unlike ``F.batch_norm`` with given statistics, gradients flow into ``mean`` and ``var`` too
    (the sync layers need them for global-batch statistics). Computed in the statistics' dtype,
    returned in ``x``'s.
    """
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    shape = [1, -1] + [1] * (x.dim() - 2)
    return (x.to(scale.dtype) * scale.view(shape) + shift.view(shape)).to(x.dtype)


def _spatial_dims(x: Tensor) -> list[int]:
    return list(range(2, x.dim()))


def _stat_dtype(x: Tensor) -> Tensor:
    """``x`` in the dtype statistics are computed in: float32 for half types, else its own."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _per_channel(t: Tensor, x: Tensor) -> Tensor:
    """A (C,) tensor shaped (1, C, 1, ...) to broadcast against ``x`` in x's dtype."""
    return t.to(x.dtype).view(1, -1, *([1] * (x.dim() - 2)))


def channel_affine(y: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """``y * weight + bias`` with per-channel (C,) ``weight``/``bias`` (either may be None)."""
    if weight is not None:
        y = y * _per_channel(weight, y)
    if bias is not None:
        y = y + _per_channel(bias, y)
    return y


def _mean_square(x: Tensor, dims: list[int]) -> Tensor:
    """Mean of x^2 over ``dims`` (keepdim) in float32/64. Without gradient from one read of x
    (``vector_norm``); with gradient as ``mean(x^2)``, whose backward (``2x/M``) is cheaper than
    the norm's."""
    if not dims:
        return _stat_dtype(x).square()
    if torch.is_grad_enabled() and x.requires_grad:
        return _stat_dtype(x).square().mean(dim=dims, keepdim=True)
    count = math.prod(x.shape[d] for d in dims)
    dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else None
    norm = torch.linalg.vector_norm(x, 2, dim=dims, keepdim=True, dtype=dtype)
    return norm.square() / count


def _biased_var(xs: Tensor, dims: list[int]) -> Tensor:
    """Biased variance over ``dims`` (keepdim), two passes (mean, then mean square deviation):
    exact at large offsets and, on CPU, several times faster than ``torch.var`` over these
    dims."""
    mean = xs.mean(dim=dims, keepdim=True)
    return (xs - mean).square().mean(dim=dims, keepdim=True)


def _scaled(x: Tensor, inv: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """``x * inv * weight + bias`` with ``inv * weight`` folded into one small scale tensor, so
    the full-size tensor is read and written once."""
    scale = inv if weight is None else inv * _per_channel(weight, inv)
    scale = scale.to(x.dtype)
    if bias is None:
        return x * scale
    return torch.addcmul(_per_channel(bias, x), x, scale)


def filter_response_norm(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    tau: Tensor | None,
    eps: float | Tensor,
) -> Tensor:
    """Filter Response Normalization with TLU (Singh & Krishnan 2020, Eq. 1-3).

    Per sample and channel, ``nu2 = mean over (*) of x^2``, ``x_hat = x / sqrt(nu2 + eps)``,
    ``y = weight * x_hat + bias`` and the thresholded linear unit ``z = max(y, tau)`` (skipped
    when ``tau`` is None). No mean is subtracted. With one position per channel (input (N, C))
    ``nu2 = x^2``, the case for which the paper learns ``eps``. Computes what timm's
    ``FilterResponseNormTlu2d`` does, with ``weight / sqrt(nu2 + eps)`` folded into one
    per-(sample, channel) scale (fewer passes over x; equal up to float rounding).
    """
    inv = _mean_square(x, _spatial_dims(x)).add(eps).rsqrt()
    y = _scaled(x, inv, weight, bias)
    if tau is None:
        return y
    tau = _per_channel(tau, y)
    if not (torch.is_grad_enabled() and (y.requires_grad or tau.requires_grad)):
        return torch.maximum(y, tau)
    # with gradient, max(y, tau) as tau + relu(y - tau): on CPU its backward is ~4x cheaper than
    # maximum's (which splits ties); equal up to float rounding; at ties the gradient goes to y
    return torch.relu(y - tau) + tau


def _instance_var(x: Tensor) -> Tensor:
    """Per sample and channel biased variance over (*), in float32/64; 0 without spatial dims."""
    dims = _spatial_dims(x)
    xs = _stat_dtype(x)
    if not dims:
        return torch.zeros_like(xs)
    return _biased_var(xs, dims)


def evonorm_b0(
    x: Tensor,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    v: Tensor,
    use_batch_stats: bool,
    momentum: float,
    eps: float,
    check_finite: bool = True,
) -> Tensor:
    """EvoNorm-B0 (Liu et al. 2020, "Evolving Normalization-Activation Layers", Table 1).

    ``y = x / max(sqrt(s2_b + eps), v * x + sqrt(s2_i + eps)) * weight + bias`` with ``s2_b``
    the biased batch variance per channel over (N, *) (gradients flow through it) and ``s2_i``
    the biased variance of each sample and channel over (*). With ``use_batch_stats`` and a
    running buffer, ``running_var := (1 - momentum) * running_var + momentum * s2_b * n/(n-1)``
    (unbiased, n values per channel); otherwise ``s2_b := running_var``. Same operations as
    timm's ``EvoNorm2dB0``. ``check_finite`` as in :func:`batch_norm` (the check comes before
    the update).
    """
    if use_batch_stats:
        _check_batch_stats(x, "evonorm_b0")
        _, var = channel_moments(x)
        if running_var is not None:
            n = values_per_channel(x)
            ok = finite_update_mask("evonorm_b0", x, var) if check_finite else None
            ema_update_(running_var, var * (n / (n - 1)), momentum, ok)
    else:
        var = running_var
    return evonorm_b0_normalize(x, var, weight, bias, v, eps)


def evonorm_b0_normalize(
    x: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, v: Tensor, eps: float
) -> Tensor:
    """:func:`evonorm_b0`'s output for a given per-channel variance ``s2_b`` = ``var`` (the
    sync layer passes the global batch's, differentiable)."""
    left = _per_channel(var.add(eps).sqrt(), x)
    right = x * _per_channel(v, x) + _instance_var(x).add(eps).sqrt().to(x.dtype)
    return channel_affine(x / torch.maximum(left, right), weight, bias)


def evonorm_s0(
    x: Tensor,
    groups: int,
    weight: Tensor | None,
    bias: Tensor | None,
    v: Tensor,
    eps: float,
) -> Tensor:
    """EvoNorm-S0 (Liu et al. 2020, Table 1): ``y = x * sigmoid(v * x) / group_std(x) * weight
    + bias``, ``group_std = sqrt(biased variance over each group of C/groups channels and (*)
    + eps)`` per sample, as in group norm. Computes what timm's ``EvoNorm2dS0`` does, with
    ``weight / group_std`` folded into one per-(sample, channel) scale."""
    n, c = x.shape[:2]
    grouped = _stat_dtype(x).reshape(n, groups, -1)
    inv = _biased_var(grouped, [2]).add(eps).rsqrt()
    inv = inv.expand(n, groups, c // groups).reshape(n, c, *([1] * (x.dim() - 2)))
    return _scaled(x * (x * _per_channel(v, x)).sigmoid(), inv, weight, bias)


def rms_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """RMS norm (Zhang & Sennrich 2019, Eq. 4) over channels-first maps.

    Per sample, ``y = x / sqrt(mean over (C, *) of x^2 + eps) * weight + bias`` with a
    per-channel ``weight`` (and optional ``bias``); no mean is subtracted. Equals ``F.rms_norm``
    over all non-batch dimensions followed by the per-channel affine, computed with the gain
    folded into one per-(sample, channel) scale.
    """
    inv = _mean_square(x, list(range(1, x.dim()))).add(eps).rsqrt()
    return _scaled(x, inv, weight, bias)


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


def standardize_weight(weight: Tensor, eps: float) -> Tensor:
    """Weight Standardization (Qiao et al. 2019, Eq. 5): each output filter's weights minus their
    mean, divided by ``sqrt(biased variance + eps)`` over (in_channels, *kernel); computed with
    ``F.batch_norm`` over a (1, out_channels, fan_in) view, as timm's ``StdConv2d``."""
    flat = weight.reshape(1, weight.shape[0], -1)
    return F.batch_norm(flat, None, None, training=True, momentum=0.0, eps=eps).reshape_as(weight)
