"""Collapse as its own outcome: how often a norm's runs collapse, compared by an exact test.

A run *collapses* when it does not learn (test accuracy within a declared margin of chance, or
training accuracy that never reaches the gate). A rare collapse is a bimodal seed distribution
that no test of means handles at 10-14 seeds, so the report counts collapses per norm and
compares the counts with Fisher's (1935) exact test of two proportions, Holm-corrected over the
declared family, and states the power that test had.

Fisher's test conditions on the total number of collapses and treats the two norms' runs as
independent samples. Seeds pair the runs (same init and data order); the paired alternative,
McNemar's exact test, uses only the discordant seeds and has less power at these n. Under a
positive correlation of collapses within a seed Fisher's test is conservative.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import stats as sps

from normzoo.stats._common import (
    INSUFFICIENT,
    NOT_SIGNIFICANT,
    NOT_TESTED,
    SIGNIFICANT,
    check_alpha,
)
from normzoo.stats.corrections import holm

COLLAPSE_TEST = "Fisher's exact test (two-sided)"
NO_COLLAPSE = "no run collapsed"
DETECTABLE_POWER = 0.8


@lru_cache(maxsize=256)
def fisher_table(n_a: int, n_b: int) -> np.ndarray:
    """Two-sided Fisher p-values for every outcome: ``table[x, y]`` for x of n_a and y of n_b.

    Args:
        n_a: runs of the first norm.
        n_b: runs of the second norm.

    Returns:
        (n_a + 1, n_b + 1) array of p-values (``scipy.stats.fisher_exact``, two-sided:
        the summed probability of tables no more likely than the observed one).

    Examples:
        >>> round(float(fisher_table(10, 10)[0, 5]), 4)
        0.0325
    """
    if n_a < 0 or n_b < 0:
        raise ValueError(f"run counts must be >= 0, got n_a={n_a}, n_b={n_b}")
    table = np.ones((n_a + 1, n_b + 1))
    for x in range(n_a + 1):
        for y in range(n_b + 1):
            if n_a and n_b:
                table[x, y] = sps.fisher_exact([[x, n_a - x], [y, n_b - y]]).pvalue
    table.setflags(write=False)
    return table


def collapse_power(
    rate_a: float, rate_b: float, n_a: int, n_b: int, alpha: float = 0.05, family_size: int = 1
) -> float:
    """Power of the two-sided Fisher test at level ``alpha / family_size``, exactly.

    Sums ``Binom(x; n_a, rate_a) Binom(y; n_b, rate_b)`` over the outcomes (x, y) whose
    p-value, times ``family_size``, is below ``alpha``. With ``family_size = m`` this is the
    power at Holm's first step (Bonferroni), a lower bound on Holm's power for that comparison.

    Args:
        rate_a: true collapse rates of the two norms.
        rate_b: true collapse rates of the two norms.
        n_a: runs (seeds) of each.
        n_b: runs (seeds) of each.
        alpha: family-wise level.
        family_size: comparisons in the Holm family.

    Returns:
        The probability of a significant verdict.

    Example (0% vs 50% collapse at 10 seeds: 62% alone, 17% after Holm over 6):
        >>> round(collapse_power(0.0, 0.5, 10, 10), 3), round(collapse_power(0, 0.5, 10, 10,
        ...     family_size=6), 3)
        (0.623, 0.172)
    """
    check_alpha(alpha)
    for rate in (rate_a, rate_b):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"collapse rates must lie in [0, 1], got {rate}")
    reject = fisher_table(n_a, n_b) * family_size < alpha
    pa = sps.binom.pmf(np.arange(n_a + 1), n_a, rate_a)
    pb = sps.binom.pmf(np.arange(n_b + 1), n_b, rate_b)
    return float(pa @ reject @ pb)


def chance_to_see_collapse(rate: float, n: int) -> float:
    """Probability that n seeds show at least one collapse of a norm that collapses at
    ``rate``: 1 - (1 - rate)^n. A rare collapse is absent from most small samples.

    Example (20% collapse: 10 seeds show it 89% of the time, 5 seeds 67%):
        >>> round(chance_to_see_collapse(0.2, 10), 3), round(chance_to_see_collapse(0.2, 5), 3)
        (0.893, 0.672)
    """
    if not 0.0 <= rate <= 1.0 or n < 0:
        raise ValueError(f"need a rate in [0, 1] and n >= 0, got rate={rate}, n={n}")
    return float(1.0 - (1.0 - rate) ** n)


def detectable_collapse_rate(
    n_a: int, n_b: int, alpha: float = 0.05, family_size: int = 1, power: float = DETECTABLE_POWER
) -> float:
    """Smallest collapse rate (on a 0.01 grid) that the test tells from a norm that never
    collapses with ``power``; NaN when even 100% is not detectable (n too small).

    Examples:
        >>> detectable_collapse_rate(10, 10), detectable_collapse_rate(3, 3)
        (0.59, nan)
    """
    for rate in np.round(np.arange(0.01, 1.0001, 0.01), 2):
        if collapse_power(float(rate), 0.0, n_a, n_b, alpha, family_size) >= power:
            return float(rate)
    return float("nan")


@dataclass(frozen=True)
class CollapseComparison:
    """Collapse counts of ``a`` and ``b`` and Fisher's exact test of equal rates."""

    a: str
    b: str
    n_a: int
    n_b: int
    seeds_a: tuple[int, ...]  # the seeds whose run of a collapsed
    seeds_b: tuple[int, ...]
    pvalue: float
    p_adjusted: float
    detectable_rate: float  # vs never collapsing, 80% power at the family level
    power_half: float  # power to tell 0% from 50% collapse at the family level
    alpha: float
    family_size: int
    verdict: str
    more_often: str | None  # the norm that collapses significantly more often

    def row(self) -> dict:
        """Flat columns for tables and CSV files."""
        return {
            "a": self.a,
            "b": self.b,
            "collapsed_a": f"{len(self.seeds_a)}/{self.n_a}",
            "collapsed_b": f"{len(self.seeds_b)}/{self.n_b}",
            "collapsed_seeds_a": " ".join(map(str, self.seeds_a)),
            "collapsed_seeds_b": " ".join(map(str, self.seeds_b)),
            "collapse_pvalue": self.pvalue,
            "collapse_p_adjusted": self.p_adjusted,
            "collapse_detectable_rate": self.detectable_rate,
            "collapse_power_0_vs_50": self.power_half,
            "collapse_test": COLLAPSE_TEST,
            "collapse_verdict": self.verdict,
            "collapses_more": self.more_often,
        }


def compare_collapse(
    collapsed: Sequence[tuple[Sequence[bool], Sequence[bool]]],
    names: Sequence[tuple[str, str]],
    seeds: Sequence[tuple[Sequence[int], Sequence[int]]],
    alpha: float = 0.05,
    tested: Sequence[bool] | None = None,
) -> list[CollapseComparison]:
    """Fisher's exact test of equal collapse rates per pair, ONE Holm family over all pairs.

    Args:
        collapsed: per comparison, (flags of a's runs, flags of b's runs); True = collapsed.
        names: per comparison, (a, b).
        seeds: per comparison, the seeds of a's and b's runs (listed for collapsed runs).
        alpha: family-wise level.
        tested: per comparison, False where no test is made (an untrained condition, where
            every run misses the gate): verdict "not tested", still counted in Holm's m.

    Returns:
        One :class:`CollapseComparison` per pair. A non-significant verdict is not evidence of
        equal rates: each result carries the power the test had.

    Examples:
        >>> r = compare_collapse([([False] * 10, [True] * 6 + [False] * 4)], [("a", "b")],
        ...     [(range(10), range(10))])[0]
        >>> r.verdict, r.more_often, r.seeds_b, round(r.pvalue, 4)
        ('significant', 'b', (0, 1, 2, 3, 4, 5), 0.0108)
    """
    check_alpha(alpha)
    m = len(names)
    if not len(collapsed) == len(seeds) == m:
        raise ValueError(f"got {len(collapsed)} flag pairs, {len(seeds)} seed pairs, {m} names")
    flags = [(np.asarray(x, bool), np.asarray(y, bool)) for x, y in collapsed]
    mask = np.ones(m, bool) if tested is None else np.asarray(tested, bool)
    p = np.array([_pvalue(x, y) if t else np.nan for (x, y), t in zip(flags, mask, strict=True)])
    p_adj = holm(p) if m else p
    results = []
    for i, ((x, y), (name_a, name_b)) in enumerate(zip(flags, names, strict=True)):
        seeds_a, seeds_b = (np.asarray(s) for s in seeds[i])
        if not mask[i]:
            verdict = NOT_TESTED
        elif x.size == 0 or y.size == 0:
            verdict = INSUFFICIENT
        elif not x.any() and not y.any():
            verdict = NO_COLLAPSE
        else:
            verdict = SIGNIFICANT if p_adj[i] < alpha else NOT_SIGNIFICANT
        more = None
        if verdict == SIGNIFICANT:
            more = name_a if x.mean() > y.mean() else name_b
        results.append(
            CollapseComparison(
                name_a,
                name_b,
                int(x.size),
                int(y.size),
                tuple(int(s) for s in seeds_a[x]),
                tuple(int(s) for s in seeds_b[y]),
                float(p[i]),
                float(p_adj[i]),
                detectable_collapse_rate(x.size, y.size, alpha, m),
                collapse_power(0.0, 0.5, x.size, y.size, alpha, m),
                alpha,
                m,
                verdict,
                more,
            )
        )
    return results


def _pvalue(x: np.ndarray, y: np.ndarray) -> float:
    if x.size == 0 or y.size == 0:
        return float("nan")
    return float(fisher_table(x.size, y.size)[int(x.sum()), int(y.sum())])
