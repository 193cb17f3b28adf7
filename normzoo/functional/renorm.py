"""Batch Renormalization (Ioffe 2017, Algorithm 1): the clip schedule, r and d, the moving
averages' update, and the training forward at batch norm's cost."""

from __future__ import annotations

import struct

import numpy as np
import torch
from torch import Tensor

from normzoo.functional import _cpp
from normzoo.functional._common import _in_dtype
from normzoo.functional.checks import (
    _check_batch_stats,
    _nonfinite_error,
    finite_update_mask,
    values_per_channel,
)
from normzoo.functional.moments import channel_moments, update_running_stats

__all__ = ["renorm_limits", "renorm_correction", "SIGMA_UPDATES", "renorm_update_", "batch_renorm"]


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

    Examples:
        >>> from normzoo.functional import renorm_limits
        >>> [renorm_limits(s, 3.0, 5.0, warmup=10, r_ramp=20, d_ramp=10) for s in (0, 10, 20, 30)]
        [(1.0, 0.0), (1.0, 0.0), (2.0, 5.0), (3.0, 5.0)]
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
    sigma_b: Tensor | None = None,
) -> None:
    """Batch Renormalization's update of the moving averages, in place (no gradient).

    ``"paper"`` (Ioffe 2017, Algorithm 1; Keras' ``moving_stddev``): ``mu += a * (mu_B - mu)``
    and ``sigma += a * (sigma_B - sigma)`` with ``sigma_B = sqrt(var_B + eps)`` (biased batch
    variance), stored as ``running_var = max(sigma^2 - eps, 0)`` (as Keras does), so that
    ``sqrt(running_var + eps) = sigma`` and ``nn.BatchNorm2d`` evaluates with (mu, sigma). Each
    average is ``lerp(old, new, a)`` computed by :func:`_average` in separately rounded
    operations, never a fused multiply-add, so that the eager CPU path (NumPy) and the tensor
    path give the same bits.
    ``"variance_ema"`` (batch norm's update): ``running_var += a * (unbiased var_B -
    running_var)``; sigma is then biased low at a few values per channel.
    ``a = momentum``; ``count`` = values per channel of the batch. ``ok`` (a bool tensor):
    when False, the buffers keep their values (no host sync). ``sigma`` and ``sigma_b``:
    ``sqrt(running_var + eps)`` before the update and ``sqrt(var_b + eps)``, when the caller
    has them already.
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
        if sigma_b is None or sigma_b.dtype != running_var.dtype:
            sigma_b = (_in_dtype(var_b, running_var.dtype) + eps).sqrt_()
        new_sigma = _average(sigma, sigma_b, momentum)
        mean_b = _in_dtype(mean_b, running_mean.dtype)
        new_mean = _average(running_mean, mean_b, momentum)
        if ok is None:
            torch.mul(new_sigma, new_sigma, out=running_var).sub_(eps).clamp_min_(0.0)
            running_mean.copy_(new_mean)
            return
        new_var = new_sigma.mul_(new_sigma).sub_(eps).clamp_min_(0.0)
        running_var.copy_(torch.where(ok, new_var, running_var))
        running_mean.copy_(torch.where(ok, new_mean, running_mean))


def _average(old, new, rate: float):
    """``lerp(old, new, rate)`` in separately rounded operations (torch's CPU ``lerp`` fuses a
    multiply-add, which NumPy cannot reproduce), for tensors and NumPy arrays alike:
    ``old + rate * (new - old)`` below rate 0.5, ``new - (1 - rate) * (new - old)`` from it
    (exact at rate 0 and 1, as ``lerp``); the first form is Keras' moving-average update."""
    if rate < 0.5:
        return old + (new - old) * rate
    return new - (new - old) * (1.0 - rate)


def _fold_renorm(weight: Tensor | None, bias: Tensor | None, r: Tensor, d: Tensor):
    """Scale ``weight * r`` and shift ``weight * d + bias``, in the statistics' dtype, as plain
    constants (the parameters' gradients come from :class:`_RenormAffine`); each product and
    the sum rounded, as the NumPy path (:func:`_renorm_step_numpy`) computes them."""
    if weight is None:
        return r, d if bias is None else d + _in_dtype(bias.detach(), d.dtype)
    weight = _in_dtype(weight.detach(), r.dtype)
    shift = weight * d
    return weight * r, shift if bias is None else shift.add_(_in_dtype(bias.detach(), d.dtype))


def _renorm_statistics_(
    x, running_mean, running_var, momentum, eps, rmax, dmax, sigma_update, check
):
    """Batch renorm's step without the output: batch statistics (one pass over ``x``), r and d
    from the moving averages before the update, then the update; returns (mu_B, var_B,
    invstd_B, r, d). An opaque custom op (below), so that compilers keep r and d as computed
    here and never recompute them from the running buffers, which the step has updated."""
    mean_b, var_b = channel_moments(x)
    sigma_b = (var_b + eps).sqrt_()
    invstd_b = sigma_b.reciprocal()
    with torch.no_grad():
        sigma = (_in_dtype(running_var, mean_b.dtype) + eps).sqrt_()  # for r, d and the update
    r, d = renorm_correction(mean_b, sigma_b, running_mean, running_var, eps, rmax, dmax, sigma)
    ok = finite_update_mask("batch renorm", x, mean_b, var_b) if check else None
    count = values_per_channel(x)
    renorm_update_(
        running_mean,
        running_var,
        mean_b,
        var_b,
        count,
        momentum,
        eps,
        sigma_update,
        ok,
        sigma,
        sigma_b,
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


def _numpy_path(x: Tensor, *per_channel: Tensor | None) -> bool:
    """Whether the per-channel work can run in NumPy on zero-copy views: eager CPU float32 or
    float64 ``x``, and every per-channel tensor (running buffers, weight, bias) a contiguous
    CPU tensor of that dtype. A NumPy operation on C values costs about a microsecond, a torch
    operator several (its dispatch), and more between large kernels that have just evicted
    the caches: with a few dozen of them per step, that was most of batch renorm's overhead
    over batch norm at small and medium shapes."""
    dtype = x.dtype
    if not x.is_cpu or dtype not in _NUMPY_DTYPES:
        return False
    return all(
        t is None or (t.is_cpu and t.dtype == dtype and t.is_contiguous()) for t in per_channel
    )


_NUMPY_DTYPES = (torch.float32, torch.float64)


def _renorm_step_numpy(
    x, running_mean, running_var, weight, bias, momentum, eps, rmax, dmax, sigma_update, check
):
    """:func:`_renorm_statistics_` and :func:`_fold_renorm` for :func:`_numpy_path` inputs, the
    per-channel arithmetic in NumPy on views of the tensors (the same formulas, the same
    roundings: the same bits); returns (mu_B, var_B, invstd_B, r, d, scale, shift), r and d as
    NumPy arrays."""
    mean_b, var_b = torch.batch_norm_update_stats(x, None, None, 0.0)
    m, v = mean_b.numpy(), var_b.numpy()
    if check:
        finite_update_mask("batch renorm", x, m, v)  # raises on CPU: nothing to mask
    # in place where a temporary can be reused: each NumPy call costs about a microsecond
    sigma_b = np.add(v, eps)
    np.sqrt(sigma_b, out=sigma_b)
    invstd_b = np.reciprocal(sigma_b)
    mu, var = running_mean.numpy(), running_var.numpy()
    sigma = np.add(var, eps)
    np.sqrt(sigma, out=sigma)
    r = np.divide(sigma_b, sigma)  # clamp(r, rmin, rmax) as torch: max(., rmin), then min
    np.minimum(np.maximum(r, _reciprocal_in(rmax, x.dtype), out=r), rmax, out=r)
    d = np.subtract(m, mu)
    np.divide(d, sigma, out=d)
    np.minimum(np.maximum(d, -dmax, out=d), dmax, out=d)
    if sigma_update == "paper":
        new_sigma = _average(sigma, sigma_b, momentum)
        np.multiply(new_sigma, new_sigma, out=var)
        np.maximum(np.subtract(var, eps, out=var), 0.0, out=var)
        mu[...] = _average(mu, m, momentum)
    else:
        renorm_update_(
            running_mean,
            running_var,
            mean_b,
            var_b,
            values_per_channel(x),
            momentum,
            eps,
            sigma_update,
        )
    if weight is None:
        scale, shift = r, d if bias is None else d + bias.detach().numpy()
    else:
        w = weight.detach().numpy()
        scale, shift = w * r, w * d
        if bias is not None:
            shift += bias.detach().numpy()
    # r and d stay arrays: only the backward reads them (in NumPy too)
    as_tensor = torch.from_numpy
    return mean_b, var_b, as_tensor(invstd_b), r, d, as_tensor(scale), as_tensor(shift)


class _RenormAffine(torch.autograd.Function):
    """``y = weight * ((x - mu_B) * invstd_B * r + d) + bias`` with r, d, mu_B, invstd_B
    constant, as one eval-mode batch-norm kernel call with r and d folded into its ``scale``
    and ``shift`` (r and d: tensors, or NumPy arrays from :func:`_renorm_step_numpy`); the
    backward is batch norm's training backward from the saved statistics, so the gradient
    equals plain autograd through Algorithm 1 (stop_gradient on r and d)."""

    # forward(ctx, ...) rather than a separate setup_context: with setup_context,
    # Function.apply binds its arguments through inspect.signature on every call (~0.1 ms on
    # a 2-core CPU, as much as batch norm's whole forward at a small shape). The per-channel
    # constants are kept on ctx, not saved: none is an input or output of the graph.
    @staticmethod
    def forward(ctx, x, weight, bias, mean_b, var_b, invstd_b, r, d, scale, shift, eps):
        ctx.save_for_backward(x)
        ctx.stats = (mean_b, invstd_b, r, d, scale)
        ctx.eps = eps
        ctx.dtypes = (
            None if weight is None else weight.dtype,
            None if bias is None else bias.dtype,
        )
        return torch.native_batch_norm(x, scale, shift, mean_b, var_b, False, 0.0, eps)[0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        mean_b, invstd_b, r, d, scale = ctx.stats
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        mask = [need_x, need_w, need_w or need_b]
        gx, g_scale, g_shift = torch.ops.aten.native_batch_norm_backward(
            grad, x, scale, None, None, mean_b, invstd_b, True, ctx.eps, mask
        )
        w_dtype, b_dtype = ctx.dtypes
        gw = None
        if need_w and isinstance(r, np.ndarray):  # the NumPy path: the dtypes all agree
            gw = g_scale.numpy() * r
            gw += g_shift.numpy() * d
            gw = torch.from_numpy(gw)
        elif need_w:
            gw = _in_dtype((g_scale * r).add_(g_shift * d), w_dtype)
        gb = _in_dtype(g_shift, b_dtype) if need_b else None
        return gx, gw, gb, None, None, None, None, None, None, None, None


def _renorm_cpp(
    kernels, x, running_mean, running_var, weight, bias, momentum, eps, rmax, dmax, check
):
    """Batch renorm's training step (``"paper"`` update) as one C++ autograd function
    (``csrc/batch_renorm.cpp``) for :func:`_numpy_path` inputs: the kernels of the Python path
    and its per-channel arithmetic, operation for operation (the same bits), without the few
    dozen Python-level calls that cost 10-30% of a batch-norm call at small shapes."""
    try:
        return kernels.batch_renorm_train(
            x,
            weight,
            bias,
            running_mean,
            running_var,
            momentum,
            eps,
            rmax,
            dmax,
            check,
        )
    except RuntimeError as error:
        _raise_nonfinite(kernels, error, x)
        raise


def _raise_nonfinite(kernels, error: RuntimeError, x: Tensor) -> None:
    """The C++ step's non-finite-statistics error as normzoo's own (raised before the running
    averages moved); any other error is left to the caller."""
    if kernels.NON_FINITE in str(error):
        raise _nonfinite_error("batch renorm", x) from None


def renorm_layer_step_cpp(
    kernels,
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor,
    running_var: Tensor,
    counter: Tensor | None,
    rate: float | None,
    eps: float,
    rmax: float,
    dmax: float,
    warmup: int,
    r_ramp: int,
    d_ramp: int,
    check: bool,
) -> Tensor | None:
    """:class:`~normzoo.layers.BatchRenorm`'s whole training step (``"paper"`` update) in one
    C++ call: the step counter ``counter`` read, :func:`renorm_limits` at that step, the rate
    (``rate=None``: the cumulative average, ``1 / (steps + 1)``), :func:`batch_renorm`, and the
    counter advanced. None where the inputs do not suit the kernels (not dense CPU
    float32/float64 with contiguous per-channel tensors): the caller takes the Python path."""
    _check_batch_stats(x, "batch renorm")
    try:
        return kernels.batch_renorm_layer_step(
            x,
            weight,
            bias,
            running_mean,
            running_var,
            counter,
            0.0 if rate is None else float(rate),
            rate is None,
            float(eps),
            float(rmax),
            float(dmax),
            int(warmup),
            int(r_ramp),
            int(d_ramp),
            bool(check),
        )
    except RuntimeError as error:
        _raise_nonfinite(kernels, error, x)
        raise


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
    python_limits = not (isinstance(rmax, Tensor) or isinstance(dmax, Tensor))
    if python_limits and not torch.compiler.is_compiling():
        args = (float(momentum), float(eps), float(rmax), float(dmax), sigma_update)
        if _numpy_path(x, running_mean, running_var, weight, bias):
            kernels = _cpp.kernels() if sigma_update == "paper" else None
            if kernels is not None:
                return _renorm_cpp(
                    kernels,
                    x,
                    running_mean,
                    running_var,
                    weight,
                    bias,
                    *args[:4],
                    bool(check_finite),
                )
            stats = _renorm_step_numpy(
                x.detach(), running_mean, running_var, weight, bias, *args, bool(check_finite)
            )
        else:  # the same function without the custom op's dispatch
            stats = _renorm_statistics_(
                x.detach(), running_mean, running_var, *args, bool(check_finite)
            )
            stats = (*stats, *_fold_renorm(weight, bias, *stats[3:]))
        return _RenormAffine.apply(x, weight, bias, *stats, eps)
    rmax = torch.as_tensor(rmax, dtype=torch.float64)
    dmax = torch.as_tensor(dmax, dtype=torch.float64)
    stats = _renorm_statistics_op(
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
    return _RenormAffine.apply(
        x, weight, bias, *stats, *_fold_renorm(weight, bias, *stats[3:]), eps
    )
