"""Multiple-comparison correction: Holm (1979) step-down over one declared family."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values over a family of m = len(pvalues) hypotheses
    (or over each row of a (families, m) array: one family per row).

    With the p-values sorted ascending, ``p_adj(i) = max_{j<=i} min(1, (m-j+1) p(j))``;
    rejecting where ``p_adj < alpha`` controls the family-wise error rate at ``alpha``.
    A NaN (a declared comparison that could not be tested) stays NaN but still counts in m,
    as if its p-value were 1: the family size never depends on which p-values are missing.

    Examples:
        >>> holm([0.01, 0.04, float("nan")]).round(3).tolist()
        [0.03, 0.08, nan]
    """
    p = np.asarray(pvalues, dtype=float)
    if p.ndim < 1:
        raise ValueError(f"pvalues must be 1-D (or (families, m)), got shape {p.shape}")
    if np.any((p < 0) | (p > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {p[(p < 0) | (p > 1)]}")
    m = p.shape[-1]
    # NaN sorts last and scales as if p were 1; it is put back as NaN
    order = np.argsort(np.where(np.isnan(p), np.inf, p), axis=-1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=-1)
    scaled = np.minimum(1.0, (m - np.arange(m)) * np.nan_to_num(ranked, nan=1.0))
    adjusted = np.empty_like(p)
    np.put_along_axis(adjusted, order, np.maximum.accumulate(scaled, axis=-1), axis=-1)
    return np.where(np.isnan(p), np.nan, adjusted)


def holm_levels(pvalues: Sequence[float] | np.ndarray, alpha: float) -> np.ndarray:
    """Per hypothesis, the level Holm tests it at; intervals at ``1 - level`` agree with Holm.

    Step j (0-based, p ascending) tests at ``alpha / (m - j)``. Rejected hypotheses keep their
    step's level, so their interval excludes 0; the others get the level of the first step that
    failed, so their interval contains 0 (every later p-value is at least as large). Each
    interval is at least as wide as the nominal one. It is not the simultaneous compatible
    interval of Strassburger & Bretz (2008), which this package does not implement.

    Examples:
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
