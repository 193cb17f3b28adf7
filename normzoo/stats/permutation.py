"""Exact sign-flip permutation tests of paired differences (Fisher 1935; Good 2005, ch. 3).

Under H0 (the differences are symmetric about 0) every pattern of signs is equally likely, so
the p-value is the share of the 2^n sign patterns whose statistic is at least as extreme as the
observed one. The observed pattern and its mirror image always count: the smallest p-value
is 2 / 2^n (0.25 at n = 3, 0.0625 at n = 5). Exact up to :data:`EXACT_MAX_N` pairs, Monte Carlo
beyond ((1 + hits) / (1 + B), which is a valid p-value; Phipson & Smyth 2010).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import stats as sps

from normzoo.stats._common import as_1d, check_alpha

EXACT_MAX_N = 20
MONTE_CARLO_RESAMPLES = 20_000
_CHUNK = 1 << 15


def min_pvalue(n: int) -> float:
    """Smallest two-sided p-value a sign-flip test on n non-zero pairs can give: 2 / 2^n.

    Examples:
        >>> min_pvalue(5), min_pvalue(10)
        (0.0625, 0.001953125)
    """
    return min(1.0, 2.0 / 2.0**n) if n > 0 else 1.0


@lru_cache(maxsize=32)
def _patterns(n: int, start: int, stop: int) -> np.ndarray:
    """Sign patterns ``start..stop-1`` of 2^n as a (stop - start, n) array of +-1."""
    codes = np.arange(start, stop, dtype=np.int64)[:, None]
    bits = (codes >> np.arange(n, dtype=np.int64)) & 1
    return (1 - 2 * bits).astype(float)


def sign_flip_pvalues(
    x: np.ndarray, n_resamples: int = MONTE_CARLO_RESAMPLES, random_state: int = 0
) -> tuple[np.ndarray, str]:
    """Two-sided sign-flip p-values of |sum(x)| for each row of ``x`` (m, n); and the method.

    The statistic |sum| is equivalent to |mean| (fixed n) and, with signed ranks as ``x``, to
    the Wilcoxon signed-rank statistic (exact also with tied ranks).
    """
    x = np.atleast_2d(np.asarray(x, dtype=float))
    m, n = x.shape
    if n == 0:
        return np.ones(m), "exact"
    observed = np.abs(x.sum(axis=-1))
    tolerance = 1e-9 * np.maximum(1.0, np.abs(x).sum(axis=-1))
    hits = np.zeros(m)
    if n <= EXACT_MAX_N:
        total = 1 << n
        for start in range(0, total, _CHUNK):
            signs = _patterns(n, start, min(total, start + _CHUNK))
            sums = np.abs(signs @ x.T)  # (patterns, m)
            hits += (sums >= observed - tolerance).sum(axis=0)
        return np.minimum(1.0, hits / total), "exact"
    rng = np.random.default_rng(random_state)
    for start in range(0, n_resamples, _CHUNK):
        count = min(_CHUNK, n_resamples - start)
        signs = rng.choice((-1.0, 1.0), size=(count, n))
        hits += (np.abs(signs @ x.T) >= observed - tolerance).sum(axis=0)
    return (1.0 + hits) / (1.0 + n_resamples), f"Monte Carlo ({n_resamples} sign patterns)"


@dataclass(frozen=True)
class PermutationTest:
    """Exact (or Monte Carlo) two-sided sign-flip test of the paired mean."""

    statistic: float  # mean difference
    pvalue: float
    n: int
    method: str
    min_pvalue: float


def sign_flip_test(differences: Sequence[float] | np.ndarray) -> PermutationTest:
    """Sign-flip permutation test of mean(d) = 0 (Fisher 1935); all 2^n patterns for n <= 20.

    Args:
        differences: per-seed differences a_i - b_i.

    Returns:
        A :class:`PermutationTest` (exact up to 20 pairs, else Monte Carlo).

    Example (every difference positive at n = 5: the smallest p, 2/32):
        >>> sign_flip_test([0.01, 0.02, 0.03, 0.04, 0.05]).pvalue
        0.0625
    """
    d = as_1d(differences, "differences")
    p, method = sign_flip_pvalues(d[None])
    return PermutationTest(
        float(d.mean()) if d.size else np.nan, float(p[0]), d.size, method, min_pvalue(d.size)
    )


@dataclass(frozen=True)
class WilcoxonResult:
    """Wilcoxon (1945) signed-rank test, zero differences dropped, exact null with ties.

    ``underpowered`` when even the smallest reachable p-value, Holm-adjusted over the family
    (``family_size * 2 / 2^n``), is not below alpha: no p-value is computed then.
    """

    statistic: float  # min(W+, W-), as scipy.stats.wilcoxon reports it
    pvalue: float
    n_nonzero: int
    method: str  # "exact sign-flip of signed ranks", Monte Carlo, or "none" when underpowered
    underpowered: bool


def signed_ranks(d: np.ndarray) -> np.ndarray:
    """Signed average ranks of |d| per row (rows must hold no zeros)."""
    return np.sign(d) * sps.rankdata(np.abs(np.round(d, 12)), axis=-1)


def wilcoxon_test(
    differences: Sequence[float] | np.ndarray, alpha: float = 0.05, family_size: int = 1
) -> WilcoxonResult:
    """Wilcoxon (1945) two-sided signed-rank test with the exact permutation null (ties too).

    Args:
        differences: per-seed differences; zeros are dropped.
        alpha: the level the verdict will use.
        family_size: comparisons in the Holm family (for "underpowered").

    Returns:
        A :class:`WilcoxonResult`, ``underpowered`` when even the smallest reachable p-value,
        times ``family_size``, is not below ``alpha``.

    Examples:
        >>> r = wilcoxon_test([0.5, 1.0, 1.5, 2.0, 2.5, -0.1])
        >>> r.statistic, r.pvalue, r.underpowered
        (1.0, 0.0625, False)
    """
    check_alpha(alpha)
    d = as_1d(differences, "differences")
    nonzero = d[np.abs(d) > 1e-12]
    n = int(nonzero.size)
    if min(1.0, family_size * min_pvalue(n)) >= alpha or n == 0:
        return WilcoxonResult(float("nan"), float("nan"), n, "none", True)
    ranks = signed_ranks(nonzero[None])
    p, method = sign_flip_pvalues(ranks)
    positive = float(ranks[ranks > 0].sum())
    statistic = min(positive, float(np.abs(ranks).sum()) - positive)
    return WilcoxonResult(statistic, float(p[0]), n, f"{method} sign-flip of signed ranks", False)
