"""Validation of the constructor options every zoo layer shares, with errors that say the fix."""

from __future__ import annotations

import math

__all__ = ["check_eps", "check_momentum", "check_steps"]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_eps(layer: str, eps) -> None:
    """``eps`` must be a finite number > 0 (it keeps ``1 / sqrt(var + eps)`` finite)."""
    if not (_is_number(eps) and math.isfinite(eps) and eps > 0):
        raise ValueError(
            f"{layer}: eps={eps!r} must be a finite number > 0 (added to the variance before the "
            f"square root; e.g. eps=1e-5, torch's default)"
        )


def check_momentum(layer: str, momentum, name: str = "momentum") -> None:
    """``momentum`` must be a number in [0, 1] (weight of the new batch) or None (average)."""
    if momentum is None:
        return
    if not (_is_number(momentum) and math.isfinite(momentum) and 0.0 <= momentum <= 1.0):
        raise ValueError(
            f"{layer}: {name}={momentum!r} must be a number in [0, 1] (the weight of each new "
            f"batch in the running average, torch's convention, e.g. 0.1) or None (cumulative "
            f"average); Keras' momentum=0.99 is {name}=0.01 here"
        )


def check_steps(layer: str, name: str, value) -> None:
    """A step count: a non-negative int."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{layer}: {name}={value!r} must be a non-negative int (training steps)")
