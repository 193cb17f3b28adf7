"""Rank tests over blocks: Friedman, Iman-Davenport F, Nemenyi critical difference (Demšar 2006).

Blocks must be independent replications (Demšar's data sets): in the benchmark, distinct
trained models, not the same models evaluated under several test conditions.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from normzoo.stats._common import (
    DESCRIPTIVE,
    INSUFFICIENT,
    MIN_SEEDS,
    NOT_SIGNIFICANT,
    SIGNIFICANT,
    check_alpha,
)

# Below this many blocks the chi2 / F approximations of Friedman's statistic do not hold their
# level (Demšar 2006 asks for N > 10; with 2-3 blocks the F test rejected 6-8% at alpha 0.05):
# the p-value comes from the permutation distribution within blocks, and Nemenyi's asymptotic
# critical difference is shown for description only (no pairwise verdict).
ASYMPTOTIC_MIN_BLOCKS = 10
EXACT_MAX_PATTERNS = 200_000
MONTE_CARLO_PERMUTATIONS = 20_000


def _verdict(n: int, p: float, alpha: float) -> str:
    if n < MIN_SEEDS or np.isnan(p):
        return INSUFFICIENT
    return SIGNIFICANT if p < alpha else NOT_SIGNIFICANT


def average_ranks(scores: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Mean rank of each of k columns over N blocks (rows); rank 1 = best, ties share ranks.

    Examples:
        >>> average_ranks(np.array([[0.9, 0.8, 0.8], [0.5, 0.7, 0.6]])).tolist()
        [2.0, 1.75, 2.25]
    """
    table = np.asarray(scores, dtype=float)
    if table.ndim != 2 or table.shape[0] < 1 or table.shape[1] < 2:
        raise ValueError(f"scores must be (N blocks, k >= 2 methods), got shape {table.shape}")
    if np.isnan(table).any():
        raise ValueError("scores contain NaN; keep only blocks where every method has a value")
    ranks = sps.rankdata(-table if higher_is_better else table, axis=1, method="average")
    return ranks.mean(axis=0)


def nemenyi_q(k: int, alpha: float = 0.05) -> float:
    """Nemenyi critical value q_alpha = studentized range quantile(1 - alpha, k, inf) / sqrt(2).

    Demšar (2006), Table 5a: q_0.05 = 1.960, 2.343, 2.569, ... for k = 2, 3, 4, ...

    Examples:
        >>> round(nemenyi_q(4), 3)
        2.569
    """
    check_alpha(alpha)
    if k < 2:
        raise ValueError(f"the Nemenyi test needs k >= 2 methods, got k={k}")
    return float(sps.studentized_range.ppf(1 - alpha, k, np.inf) / np.sqrt(2))


def critical_difference(k: int, n_blocks: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference CD = q_alpha sqrt(k (k + 1) / (6 N)) (Demšar 2006, 3.2.2).

    Example (Demšar's worked example: k = 4, N = 14):
        >>> round(critical_difference(4, 14), 2)
        1.25
    """
    if n_blocks < 1:
        raise ValueError(f"need at least one block (data set / condition), got {n_blocks}")
    return nemenyi_q(k, alpha) * float(np.sqrt(k * (k + 1) / (6.0 * n_blocks)))


@dataclass(frozen=True)
class RankTestResult:
    """Friedman test with Iman-Davenport F and Nemenyi post-hoc over N blocks and k methods."""

    names: tuple[str, ...]
    average_ranks: tuple[float, ...]
    n: int  # blocks (N)
    k: int
    chi2: float
    chi2_pvalue: float
    f_statistic: float  # Iman & Davenport (1980) F_F, df (k-1, (k-1)(N-1))
    pvalue: float  # of F_F: the test the verdict uses (Demšar 2006 recommends it over chi2)
    critical_difference: float
    q_alpha: float
    alpha: float
    tie_correction: bool
    test: str = "Friedman (Iman-Davenport F)"
    correction: str = "Nemenyi"
    verdict: str = INSUFFICIENT
    independent_blocks: bool = True  # False: blocks share trained models, ranks are descriptive
    method: str = "asymptotic F"  # or the exact / Monte Carlo permutation distribution
    posthoc: bool = True  # False: too few blocks for Nemenyi's asymptotics, CD descriptive

    def significantly_different(self, a: str, b: str) -> bool:
        """Nemenyi: a and b differ when their average ranks differ by more than CD (only with
        enough blocks for its asymptotics, and only when the Friedman test rejects)."""
        ranks = dict(zip(self.names, self.average_ranks, strict=True))
        gap = abs(ranks[a] - ranks[b])
        return self.posthoc and self.verdict == SIGNIFICANT and gap > self.critical_difference


def friedman_permutation_pvalue(
    scores: np.ndarray, higher_is_better: bool = True, random_state: int = 0
) -> tuple[float, str]:
    """P-value of Friedman's statistic from its permutation distribution within blocks.

    Under H0 every ordering of the k (tied) ranks in a block is equally likely, independently
    across blocks (Friedman 1937; Hollander & Wolfe 1999, 7.1). The statistic is the sum of
    squared rank sums (monotone in chi2_F for fixed N, k). Permuting the methods of every block
    alike leaves it unchanged, so block 0 stays fixed: exact over the (k!)^(N-1) patterns up to
    ``EXACT_MAX_PATTERNS``, else Monte Carlo with ``(1 + hits) / (1 + B)`` (Phipson & Smyth 2010).

    Example (N = 2 blocks that agree, k = 3: exact p = 1/3! = 1/6):
        >>> friedman_permutation_pvalue(np.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]]))
        (0.16666666666666666, 'exact permutation (6 patterns)')
    """
    table = np.asarray(scores, dtype=float)
    ranks = sps.rankdata(-table if higher_is_better else table, axis=1, method="average")
    n, k = ranks.shape
    observed = np.sum(ranks.sum(axis=0) ** 2)
    tolerance = 1e-9 * max(1.0, observed)
    perms = np.array(list(itertools.permutations(range(k))))
    if len(perms) ** (n - 1) <= EXACT_MAX_PATTERNS:
        sums = ranks[0][None, :]
        for block in ranks[1:]:
            # every rank-sum vector so far, plus every ordering of this block
            sums = (sums[:, None, :] + block[perms][None, :, :]).reshape(-1, k)
        hits = np.sum(np.sum(sums**2, axis=1) >= observed - tolerance)
        return float(hits / len(sums)), f"exact permutation ({len(sums)} patterns)"
    rng = np.random.default_rng(random_state)
    draws = MONTE_CARLO_PERMUTATIONS
    order = np.argsort(rng.random((draws, n - 1, k)), axis=-1)
    shuffled = np.take_along_axis(np.broadcast_to(ranks[1:], order.shape), order, axis=-1)
    sums = ranks[0] + shuffled.sum(axis=1)
    hits = np.sum(np.sum(sums**2, axis=1) >= observed - tolerance)
    return float((1 + hits) / (1 + draws)), f"Monte Carlo permutation ({draws} draws)"


def friedman_nemenyi(
    scores: np.ndarray,
    names: Sequence[str],
    alpha: float = 0.05,
    higher_is_better: bool = True,
    tie_correction: bool = True,
    independent_blocks: bool = True,
) -> RankTestResult:
    """Friedman test (Friedman 1937) + Iman-Davenport F + Nemenyi CD, as in Demšar (2006).

    ``chi2_F = 12 N / (k (k+1)) [sum_j R_j^2 - k (k+1)^2 / 4]`` (divided by the tie
    correction of scipy.stats.friedmanchisquare when ``tie_correction``),
    ``F_F = (N-1) chi2_F / (N (k-1) - chi2_F)``. Verdict from the p-value of F_F; Nemenyi
    differences only count when that test rejects. The test assumes independent blocks
    (Demšar's data sets); with ``independent_blocks=False`` (blocks that share trained models)
    the result carries ranks, statistics and CD for description and the verdict
    :data:`DESCRIPTIVE`, never "significant". With fewer than :data:`ASYMPTOTIC_MIN_BLOCKS`
    blocks the p-value is the permutation test's (:func:`friedman_permutation_pvalue`) and
    Nemenyi gives no pairwise verdict (``posthoc=False``).

    Args:
        scores: (N blocks, k methods), no NaN.
        names: the k methods.
        alpha: level of the Friedman test and Nemenyi's CD.
        higher_is_better: rank 1 = the highest score.
        tie_correction: divide chi2 by scipy's tie correction.
        independent_blocks: False when blocks share trained models.

    Returns:
        A :class:`RankTestResult`.

    Example (Demšar 2006, Table 6 gives chi2 = 9.28 on its 14 data sets; here 3 blocks, exact):
        >>> r = friedman_nemenyi(np.array([[3.0, 2, 1], [3, 1, 2], [3, 2, 1]]), ["a", "b", "c"])
        >>> round(r.pvalue, 4), r.method, r.verdict, r.posthoc
        (0.1944, 'exact permutation (36 patterns)', 'not significant', False)
    """
    check_alpha(alpha)
    table = np.asarray(scores, dtype=float)
    ranks = average_ranks(table, higher_is_better)
    n, k = table.shape
    if len(names) != k:
        raise ValueError(f"got {len(names)} names for {k} columns of scores")
    if k < 3 or n < MIN_SEEDS:
        nan = float("nan")
        cd = critical_difference(k, n, alpha)
        return RankTestResult(
            tuple(names),
            tuple(float(r) for r in ranks),
            n,
            k,
            nan,
            nan,
            nan,
            nan,
            cd,
            nemenyi_q(k, alpha),
            alpha,
            tie_correction,
            independent_blocks=independent_blocks,
            posthoc=n >= ASYMPTOTIC_MIN_BLOCKS,
        )
    chi2 = 12.0 * n / (k * (k + 1)) * (np.sum(ranks**2) - k * (k + 1) ** 2 / 4.0)
    if tie_correction:
        if np.all(table == table[:, :1]):
            chi2 = float("nan")  # every block is a full tie: no information
        else:
            chi2 = float(sps.friedmanchisquare(*table.T).statistic)
    chi2_p = float(sps.chi2.sf(chi2, k - 1)) if np.isfinite(chi2) else float("nan")
    denominator = n * (k - 1) - chi2
    if not np.isfinite(chi2):
        f_stat, p = float("nan"), float("nan")
    elif denominator <= 0:
        # Ranks identical in every block: F is infinite, and the exact p-value is the chance
        # that N - 1 random rankings all equal the first, (1/k!)^(N-1) (never 0).
        f_stat, p = float("inf"), float(math.factorial(k) ** -(n - 1))
    else:
        f_stat = float((n - 1) * chi2 / denominator)
        p = float(sps.f.sf(f_stat, k - 1, (k - 1) * (n - 1)))
    method = "asymptotic F"
    if n < ASYMPTOTIC_MIN_BLOCKS and np.isfinite(chi2):
        p, method = friedman_permutation_pvalue(table, higher_is_better)
    return RankTestResult(
        tuple(names),
        tuple(float(r) for r in ranks),
        n,
        k,
        float(chi2),
        chi2_p,
        f_stat,
        p,
        critical_difference(k, n, alpha),
        nemenyi_q(k, alpha),
        alpha,
        tie_correction,
        verdict=_verdict(n, p, alpha) if independent_blocks else DESCRIPTIVE,
        independent_blocks=independent_blocks,
        method=method,
        posthoc=n >= ASYMPTOTIC_MIN_BLOCKS,
    )


def nemenyi_cliques(result: RankTestResult) -> list[tuple[str, ...]]:
    """Maximal groups of methods whose average ranks lie within CD (the bars of a CD diagram).

    Args:
        result: a :class:`RankTestResult`.

    Returns:
        Tuples of names, best first.

    Example (12 blocks; a and b swap places in half of them):
        >>> r = friedman_nemenyi(np.array([[3.0, 2, 1], [2, 3, 1]] * 6), ["a", "b", "c"])
        >>> round(r.critical_difference, 3), nemenyi_cliques(r)
        (0.957, [('a', 'b')])
    """
    order = np.argsort(result.average_ranks, kind="stable")
    ranks = np.asarray(result.average_ranks)[order]
    names = [result.names[i] for i in order]
    cliques: list[tuple[str, ...]] = []
    for i in range(len(names)):
        j = i
        while j + 1 < len(names) and ranks[j + 1] - ranks[i] <= result.critical_difference:
            j += 1
        group = tuple(names[i : j + 1])
        if len(group) > 1 and not any(set(group) <= set(c) for c in cliques):
            cliques.append(group)
    return cliques
