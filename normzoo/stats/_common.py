"""Shared vocabulary of the statistics package: verdicts, input checks, constants."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MIN_SEEDS = 2
PRIMARY_TEST = "paired t-test"
ROBUSTNESS_TEST = "sign-flip permutation test"
INSUFFICIENT = "insufficient data"
DEGENERATE = "degenerate: all seeds agree"
UNDERPOWERED = "underpowered"
SIGNIFICANT = "significant"
NOT_SIGNIFICANT = "not significant"
DESCRIPTIVE = "descriptive only (blocks share trained models)"
NOT_TESTED = "not tested (untrained condition)"


def as_1d(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}; pass one value per seed")
    if np.isnan(array).any():
        raise ValueError(f"{name} contains NaN; drop failed runs before testing")
    return array


def constant_rows(rows: np.ndarray) -> np.ndarray:
    """Per row: all values equal up to float rounding (e.g. (x + 0.05) - x over several x)."""
    rows = np.atleast_2d(rows)
    if rows.shape[-1] == 0:
        return np.ones(rows.shape[0], dtype=bool)
    scale = np.maximum(1.0, np.abs(rows).max(axis=-1))
    return np.ptp(rows, axis=-1) <= 1e-12 * scale


def check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha={alpha} is outside (0, 1); use e.g. 0.05")
