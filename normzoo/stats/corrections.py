"""Multiple-comparison correction: Holm (1979) step-down over one declared family."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values over a family of m = len(pvalues) hypotheses.

    With the p-values sorted ascending, ``p_adj(i) = max_{j<=i} min(1, (m-j+1) p(j))``;
    rejecting where ``p_adj < alpha`` controls the family-wise error rate at ``alpha``.
    A NaN (a declared comparison that could not be tested) stays NaN but still counts in m,
    as if its p-value were 1: the family size never depends on which p-values are missing.

    Example:
        >>> holm([0.01, 0.04, float("nan")]).round(3).tolist()
        [0.03, 0.08, nan]
    """
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be 1-D, got shape {p.shape}")
    if np.any((p < 0) | (p > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {p[(p < 0) | (p > 1)]}")
    m = p.size
    adjusted = np.full_like(p, np.nan)
    finite = np.flatnonzero(~np.isnan(p))
    if finite.size == 0:
        return adjusted
    order = finite[np.argsort(p[finite], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(order.size)) * p[order])
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def holm_levels(pvalues: Sequence[float] | np.ndarray, alpha: float) -> np.ndarray:
    """Per hypothesis, the level Holm tests it at; intervals at ``1 - level`` agree with Holm.

    Step j (0-based, p ascending) tests at ``alpha / (m - j)``. Rejected hypotheses keep their
    step's level, so their interval excludes 0; the others get the level of the first step that
    failed, so their interval contains 0 (every later p-value is at least as large). Each
    interval is at least as wide as the nominal one. It is not the simultaneous compatible
    interval of Strassburger & Bretz (2008), which this package does not implement.

    Example:
        >>> holm_levels([0.001, 0.04, 0.2], 0.05).round(4).tolist()
        [0.0167, 0.025, 0.025]
    """
    p = np.asarray(pvalues, dtype=float)
    m = p.size
    levels = np.full(m, alpha / max(m, 1))
    finite = np.flatnonzero(~np.isnan(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    steps = alpha / (m - np.arange(order.size))
    failed = np.flatnonzero(p[order] >= steps)
    first_fail = failed[0] if failed.size else order.size
    levels[order[:first_fail]] = steps[:first_fail]
    levels[order[first_fail:]] = steps[first_fail] if first_fail < order.size else alpha
    # untestable hypotheses: the last step's level (they never reject)
    return levels
