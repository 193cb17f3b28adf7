"""Batch Renormalization (Ioffe 2017, "Batch Renormalization: Towards Reducing Minibatch
Dependence in Batch-Normalized Models", Algorithm 1)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from normzoo import functional as nzf
from normzoo.functional import _cpp
from normzoo.functional.renorm import renorm_layer_step_cpp
from normzoo.layers.batch import BatchNorm
from normzoo.layers.checks import check_momentum, check_steps

__all__ = ["BatchRenorm", "auto_renorm_momentum"]

# The paper's ImageNet schedule ends when r_max reaches 3 (step 40,000; d_max reached 5 at
# 25,000), and Keras' default rate (renorm_momentum=0.99 there) is the rate normzoo calls 0.01.
PAPER_SCHEDULE_STEPS = 40_000
PAPER_RENORM_MOMENTUM = 0.01
# Highest rate "auto" gives: a time constant of 10 steps, still an average of ~19 batches.
AUTO_RENORM_MOMENTUM_CAP = 0.1


def auto_renorm_momentum(warmup: int, r_ramp: int, d_ramp: int) -> float:
    """The moving averages' rate for a schedule compressed from the paper's:
    ``min(0.01 * s, 0.1)`` with ``s = max(1, 40000 / (warmup + max(r_ramp, d_ramp)))``.

    The paper's rate (0.01, a time constant of 100 steps) is 1/50 of its 5,000 warmup steps,
    so mu and sigma have converged before renorm corrects anything. A schedule divided by
    ``s`` at the same rate leaves them stale (over 112 steps the initial value keeps weight
    0.99^112 = 0.32). Scaling the rate by ``s`` keeps the averages' time scale relative to the
    schedule, up to 0.1: beyond that the average holds too few batches and gets noisy (measured
    on study (b)'s 112- and 900-step runs: at 0.1 the mean r over the last 20 steps is 0.98-1.00
    and |mu - population mean| / sigma 0.01-0.09; at 0.01, 0.31-0.65 and up to 0.35 after 112
    steps). The paper's own schedule (and longer ones) gives exactly 0.01.
    """
    end = warmup + max(r_ramp, d_ramp)
    compression = max(1.0, PAPER_SCHEDULE_STEPS / end) if end > 0 else math.inf
    return min(PAPER_RENORM_MOMENTUM * compression, AUTO_RENORM_MOMENTUM_CAP)


class BatchRenorm(BatchNorm):
    """Batch norm whose training output is corrected towards the moving averages (mu, sigma).

    Training (Algorithm 1): ``y = weight * ((x - mu_B) / sigma_B * r + d) + bias`` with
    stop-gradient ``r = clip(sigma_B / sigma, 1/r_max, r_max)`` and
    ``d = clip((mu_B - mu) / sigma, -d_max, d_max)``, ``sigma_B = sqrt(biased batch var + eps)``;
    r and d use (mu, sigma) from before the step's update.

    Moving averages, ``sigma_update="paper"`` (default): ``mu += a * (mu_B - mu)`` and
    ``sigma += a * (sigma_B - sigma)``, the paper's update (also Keras'), so r is unbiased at any
    batch size (E[r] = 1 on stationary data, even at 4 values per channel). ``a =
    renorm_momentum``, default 0.01: Keras' default ``renorm_momentum=0.99`` (Keras counts the
    weight of the old value; torch and normzoo the weight of the new one); the paper leaves
    alpha to the user. ``renorm_momentum=None`` is a cumulative average;
    ``renorm_momentum="auto"`` scales 0.01 with the schedule's compression from the paper's
    (:func:`auto_renorm_momentum`: ``min(0.01 * 40000 / (warmup + max(r_ramp, d_ramp)), 0.1)``,
    0.01 for the paper's schedule), for runs that divide the paper's step counts: at 0.01 the
    averages would still hold their initial values when renorm starts correcting. Stored in
    torch's buffers as ``running_mean = mu`` and ``running_var = sigma^2 - eps`` (as Keras
    stores its ``moving_variance``), so eval normalizes with (mu, sigma) and a trained layer
    loads into ``nn.BatchNorm2d`` with identical eval output. ``sigma_update="variance_ema"``
    keeps batch norm's update instead (EMA of the unbiased variance at rate ``momentum``, sigma
    = ``sqrt(running_var + eps)``): r is then biased low at small batches (E[r] ~ 0.81 at 4
    values per channel); ``momentum`` applies only to this option, ``renorm_momentum`` only to
    the paper's.

    Schedule (the paper's shape, Sec. 4.1), counted in training steps by
    ``num_batches_tracked`` (which test-time tools must leave alone): plain batch norm (r = 1,
    d = 0) for ``warmup`` steps, then r_max grows linearly from 1 to ``rmax`` over ``r_ramp``
    steps and d_max from 0 to ``dmax`` over ``d_ramp`` steps. Defaults are the paper's
    ImageNet values: 5,000 warmup steps, r_max 1 -> 3 by step 40,000 (``r_ramp=35000``),
    d_max 0 -> 5 by step 25,000 (``d_ramp=20000``); scale them to your run length (shorter runs
    never leave warmup with these defaults, and then train exactly like batch norm), together
    with the averages' rate (``renorm_momentum="auto"``). Without
    running statistics (``track_running_stats=False``) r = 1, d = 0 always: plain batch norm.

    Args:
        num_features: channels C of the input.
        eps: added to the variance before the square root.
        momentum: ``sigma_update="variance_ema"`` only: batch norm's EMA weight (torch's
            convention; ``None``: cumulative average).
        affine: learn the per-channel ``weight`` and ``bias``.
        track_running_stats: keep ``running_mean``/``running_var``; without them eval uses
            batch statistics.
        rmax: the final r_max (>= 1; 1 disables the r correction).
        dmax: the final d_max (>= 0; 0 disables the d correction).
        warmup: training steps of plain batch norm.
        r_ramp: steps over which r_max grows from 1 to ``rmax`` after ``warmup``.
        d_ramp: steps over which d_max grows from 0 to ``dmax`` after ``warmup``.
        renorm_momentum: the rate of the paper's moving averages (default 0.01; ``None``:
            cumulative average).
        sigma_update: ``"paper"`` (default) or ``"variance_ema"``.
        device: device of the parameters and buffers.
        dtype: dtype of the parameters and buffers.

    Shape:
        - Input: ``(N, C, *)``, any number of spatial dims.
        - Output: same shape as the input.

    Raises:
        ValueError: an invalid option (rmax < 1, dmax < 0, negative step counts, an unknown
            ``sigma_update``, ``momentum`` given with ``sigma_update="paper"``); in the
            forward, as :class:`~normzoo.layers.batch.BatchNorm`.

    Examples:
        >>> import torch, normzoo
        >>> _ = torch.manual_seed(0)
        >>> brn = normzoo.create("batch_renorm", 3, warmup=0, r_ramp=0, d_ramp=0)
        >>> x = torch.randn(4, 3, 2, 2)
        >>> brn(x).shape
        torch.Size([4, 3, 2, 2])
        >>> bn = torch.nn.BatchNorm2d(3)  # a trained layer exports to torch's batch norm
        >>> _ = bn.load_state_dict(brn.state_dict())
        >>> torch.allclose(bn.eval()(x), brn.eval()(x))
        True
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        rmax: float = 3.0,
        dmax: float = 5.0,
        warmup: int = 5000,
        r_ramp: int = 35000,
        d_ramp: int = 20000,
        renorm_momentum: float | str | None = 0.01,
        sigma_update: str = "paper",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        for name, value, low, meaning in (
            ("rmax", rmax, 1.0, "1 disables the r correction"),
            ("dmax", dmax, 0.0, "0 disables the d correction"),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= low:
                raise ValueError(
                    f"batch_renorm: {name}={value!r} must be a number >= {low} ({meaning})"
                )
        for name, value in (("warmup", warmup), ("r_ramp", r_ramp), ("d_ramp", d_ramp)):
            check_steps("batch_renorm", name, value)
        if isinstance(renorm_momentum, str):
            if renorm_momentum != "auto":
                raise ValueError(
                    f"batch_renorm: renorm_momentum={renorm_momentum!r} must be a number in "
                    f"[0, 1] (the weight of each new batch), None (cumulative average) or "
                    f"'auto' (the paper's 0.01 scaled with the schedule)"
                )
        else:
            check_momentum("batch_renorm", renorm_momentum, "renorm_momentum")
        if sigma_update not in nzf.SIGMA_UPDATES:
            raise ValueError(
                f"batch_renorm: sigma_update={sigma_update!r}; choose 'paper' (moving average of "
                f"sigma_B, Algorithm 1) or 'variance_ema' (batch norm's EMA of the variance)"
            )
        if sigma_update == "paper" and momentum != 0.1:
            raise ValueError(
                f"batch_renorm: momentum={momentum!r} applies only to "
                f"sigma_update='variance_ema'; the paper's moving averages move at "
                f"renorm_momentum (default 0.01): pass renorm_momentum={momentum!r} instead"
            )
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.rmax, self.dmax = float(rmax), float(dmax)
        self.warmup, self.r_ramp, self.d_ramp = warmup, r_ramp, d_ramp
        self.renorm_momentum, self.sigma_update = renorm_momentum, sigma_update

    def init_options(self) -> dict:
        return {
            **super().init_options(),
            "rmax": self.rmax,
            "dmax": self.dmax,
            "warmup": self.warmup,
            "r_ramp": self.r_ramp,
            "d_ramp": self.d_ramp,
            "renorm_momentum": self.renorm_momentum,
            "sigma_update": self.sigma_update,
        }

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, rmax={self.rmax}, dmax={self.dmax}, warmup={self.warmup}, "
            f"r_ramp={self.r_ramp}, d_ramp={self.d_ramp}, "
            f"renorm_momentum={self.renorm_momentum!r}, sigma_update={self.sigma_update!r}"
        )

    def _step(self, ahead: int = 1) -> tuple[bool, float]:
        """(use batch stats, averaging rate) of the step ``ahead`` steps after those counted
        (see :meth:`BatchNorm._step`)."""
        if self.sigma_update == "variance_ema":
            return super()._step(ahead)
        rate = self.renorm_momentum
        if rate == "auto":
            rate = auto_renorm_momentum(self.warmup, self.r_ramp, self.d_ramp)
        elif rate is None:  # cumulative average over the steps so far, this one included
            counted = self.training and self.num_batches_tracked is not None
            rate = 1.0 / (float(self.num_batches_tracked) + ahead) if counted else 0.0
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        return use_batch_stats, rate

    def _limits(self) -> tuple[Tensor, Tensor] | tuple[float, float]:
        """Clip limits (r_max, d_max) of the current step; call before :meth:`_count`. Python
        floats when the step counter can be read without a device sync or a graph break (a CPU
        counter in eager mode), else tensors."""
        step = self.num_batches_tracked  # steps completed before this one
        if step is None:
            step = self.warmup + max(self.r_ramp, self.d_ramp)
        elif step.device.type == "cpu" and not torch.compiler.is_compiling():
            step = int(step)
        return nzf.renorm_limits(step, self.rmax, self.dmax, self.warmup, self.r_ramp, self.d_ramp)

    def _cpp_step(self, x: Tensor) -> Tensor | None:
        """The training step in one C++ call (counter, limits, rate, step: see
        :func:`normzoo.functional.renorm.renorm_layer_step_cpp`) in eager mode with the paper's
        update, where the kernels are built and the tensors suit them; else None."""
        if self.sigma_update != "paper" or torch.compiler.is_compiling():
            return None
        kernels = _cpp.kernels()
        if kernels is None:
            return None
        rate = self.renorm_momentum
        if rate == "auto":
            rate = auto_renorm_momentum(self.warmup, self.r_ramp, self.d_ramp)
        return renorm_layer_step_cpp(
            kernels,
            x,
            self.weight,
            self.bias,
            self.running_mean,
            self.running_var,
            self.num_batches_tracked,
            rate,
            self.eps,
            self.rmax,
            self.dmax,
            self.warmup,
            self.r_ramp,
            self.d_ramp,
            self.check_finite,
        )

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and self.running_mean is not None and self.running_var is not None):
            return super().forward(x)  # eval, or no running statistics to renormalize towards
        self._check_input_dim(x)
        y = self._cpp_step(x)
        if y is not None:
            return y
        _, rate = self._step()
        rmax, dmax = self._limits()
        y = nzf.batch_renorm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            rate,
            self.eps,
            rmax.to(x.device) if isinstance(rmax, Tensor) else rmax,
            dmax.to(x.device) if isinstance(dmax, Tensor) else dmax,
            self.sigma_update,
            self.check_finite,
        )
        self._count()
        return y
