"""Paired significance tests, multiple-comparison correction, effect sizes and rank tests.

Pure functions from numpy arrays to small frozen result objects, thin over scipy
(style of rliable's ``metrics.py``). Nothing here touches files, W&B or Lightning.

Honesty rules, enforced here so every caller inherits them:

- every result carries ``n``, the test name, the correction, ``alpha`` and a ``verdict``;
- fewer than :data:`MIN_SEEDS` pairs -> verdict ``"insufficient data"``, never a claim;
- the primary test of a paired comparison is the paired t-test; a difference is
  ``"significant"`` only if its Holm-adjusted t-test p-value is below ``alpha``;
- the Wilcoxon signed-rank test is a robustness check; when the smallest p-value it can
  reach with the available pairs exceeds ``alpha`` (n < 6 at alpha = 0.05) it reports
  ``"underpowered"``, not ``"not significant"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import combinations

import numpy as np
from scipy import stats as sps

MIN_SEEDS = 2
PRIMARY_TEST = "paired t-test"
ROBUSTNESS_TEST = "Wilcoxon signed-rank"
INSUFFICIENT = "insufficient data"
UNDERPOWERED = "underpowered"
SIGNIFICANT = "significant"
NOT_SIGNIFICANT = "not significant"


def _as_1d(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}; pass one value per seed")
    if np.isnan(array).any():
        raise ValueError(f"{name} contains NaN; drop failed runs before testing")
    return array


def _is_constant(values: np.ndarray) -> bool:
    """All values equal up to float rounding (e.g. (x + 0.05) - x over several x)."""
    scale = max(1.0, float(np.abs(values).max()))
    return bool(np.ptp(values) <= 1e-12 * scale)


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha={alpha} is outside (0, 1); use e.g. 0.05")


def _percentile_bootstrap(
    samples: tuple[np.ndarray, ...],
    statistic,
    paired: bool,
    confidence_level: float,
    n_resamples: int,
    random_state: int,
) -> tuple[float, float]:
    """Percentile bootstrap CI (Efron & Tibshirani 1993, ch. 13), as rliable uses."""
    if all(_is_constant(s) for s in samples):
        value = float(statistic(*samples, axis=-1))
        return value, value  # every resample is identical: the CI is a point
    result = sps.bootstrap(
        samples,
        statistic,
        paired=paired,
        vectorized=True,
        confidence_level=confidence_level,
        n_resamples=n_resamples,
        method="percentile",
        random_state=random_state,
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def bootstrap_mean_ci(
    values: Sequence[float] | np.ndarray,
    confidence_level: float = 0.95,
    n_resamples: int = 2000,
    random_state: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap CI of the mean (NaNs for n < 2, a point when all values are equal)."""
    array = _as_1d(values, "values")
    if array.size < MIN_SEEDS:
        return float("nan"), float("nan")
    return _percentile_bootstrap(
        (array,), np.mean, False, confidence_level, n_resamples, random_state
    )


def t_half_width(
    sd: np.ndarray | float, n: np.ndarray | int, confidence_level: float = 0.95
) -> np.ndarray:
    """Student-t half-width of a mean: t_{(1+c)/2, n-1} * sd / sqrt(n) (NaN if n < 2)."""
    sd, n = np.asarray(sd, dtype=float), np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        half = sps.t.ppf((1 + confidence_level) / 2, n - 1) * sd / np.sqrt(n)
    return np.where(n >= 2, half, np.nan)


def mean_confidence_interval(
    values: Sequence[float] | np.ndarray, confidence_level: float = 0.95
) -> tuple[float, float, float]:
    """Mean and Student-t interval ``mean +- t_{(1+c)/2, n-1} * s / sqrt(n)``; NaN CI for n < 2."""
    array = _as_1d(values, "values")
    if array.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(array.mean())
    sd = array.std(ddof=1) if array.size > 1 else np.nan
    half = float(t_half_width(sd, array.size, confidence_level))
    return mean, mean - half, mean + half


def _constant_rows(rows: np.ndarray) -> np.ndarray:
    return np.array([_is_constant(row) for row in rows], dtype=bool)


def _cohens_dz_rows(d: np.ndarray) -> np.ndarray:
    mean = d.mean(axis=-1)
    constant = _constant_rows(d)
    with np.errstate(invalid="ignore", divide="ignore"):
        dz = mean / d.std(axis=-1, ddof=1)
    limit = np.where(np.abs(mean) <= 1e-12, 0.0, np.copysign(np.inf, mean))
    return np.where(constant, limit, dz)


def _t_test_rows(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    constant = _constant_rows(d)
    mean = d.mean(axis=-1)
    t = np.where(np.abs(mean) <= 1e-12, 0.0, np.copysign(np.inf, mean))
    p = np.where(np.abs(mean) <= 1e-12, 1.0, 0.0)
    if not constant.all():
        result = sps.ttest_rel(d[~constant], np.zeros_like(d[~constant]), axis=-1)
        t[~constant], p[~constant] = result.statistic, result.pvalue
    return t, p


def cohens_dz(differences: Sequence[float] | np.ndarray) -> float:
    """Cohen's d_z = mean(d) / sd(d, ddof=1) for paired differences (Cohen 1988; Lakens 2013).

    Zero spread gives 0 when the mean is 0 and +-inf otherwise; n < 2 gives NaN.
    """
    d = _as_1d(differences, "differences")
    return float(_cohens_dz_rows(d[None])[0]) if d.size >= 2 else float("nan")


def paired_t_test(differences: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Two-sided paired t-test on differences (scipy.stats.ttest_rel); (t, p).

    Zero spread is defined as its limit: p = 1 when all differences are 0, p = 0 with
    t = +-inf when they are all the same non-zero value; n < 2 gives NaNs.
    """
    d = _as_1d(differences, "differences")
    if d.size < 2:
        return float("nan"), float("nan")
    t, p = _t_test_rows(d[None])
    return float(t[0]), float(p[0])


def wilcoxon_min_pvalue(n: int) -> float:
    """Smallest two-sided p-value of the exact signed-rank test with n non-zero pairs: 2/2^n."""
    return min(1.0, 2.0 / 2.0**n) if n > 0 else 1.0


@dataclass(frozen=True)
class WilcoxonResult:
    """Wilcoxon (1945) signed-rank test on paired differences, zero differences dropped."""

    statistic: float
    pvalue: float
    n_nonzero: int
    method: str  # "exact", "approx" (ties among |d|), or "none" when underpowered
    underpowered: bool


def wilcoxon_test(differences: Sequence[float] | np.ndarray, alpha: float = 0.05) -> WilcoxonResult:
    """Exact two-sided signed-rank test (scipy.stats.wilcoxon); flagged if it cannot reach alpha."""
    _check_alpha(alpha)
    d = _as_1d(differences, "differences")
    nonzero = d[np.abs(d) > 1e-12]
    if wilcoxon_min_pvalue(nonzero.size) > alpha:
        return WilcoxonResult(float("nan"), float("nan"), int(nonzero.size), "none", True)
    # The exact null distribution assumes distinct |d|; with ties use the normal approximation.
    ties = np.unique(np.round(np.abs(nonzero), 12)).size < nonzero.size
    method = "approx" if ties else "exact"
    result = sps.wilcoxon(nonzero, zero_method="wilcox", method=method)
    return WilcoxonResult(
        float(result.statistic), float(result.pvalue), int(nonzero.size), method, False
    )


def _wilcoxon_rows(d: np.ndarray, alpha: float) -> list[WilcoxonResult]:
    """:func:`wilcoxon_test` per row; rows without zeros or tied |d| share one exact scipy call."""
    results: list[WilcoxonResult | None] = [None] * d.shape[0]
    rounded = np.round(np.abs(d), 12)
    simple = (rounded > 0).all(axis=-1) & np.array(
        [np.unique(row).size == row.size for row in rounded], dtype=bool
    )
    if wilcoxon_min_pvalue(d.shape[1]) <= alpha and simple.sum() > 1:
        batch = sps.wilcoxon(d[simple], method="exact", axis=-1)
        for i, stat, p in zip(np.flatnonzero(simple), batch.statistic, batch.pvalue, strict=True):
            results[i] = WilcoxonResult(float(stat), float(p), d.shape[1], "exact", False)
    return [
        r if r is not None else wilcoxon_test(row, alpha) for r, row in zip(results, d, strict=True)
    ]


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values; NaNs are left out of the family and stay NaN.

    With the m finite p-values sorted ascending, ``p_adj(i) = max_{j<=i} min(1, (m-j+1) p(j))``;
    rejecting where ``p_adj < alpha`` controls the family-wise error rate at ``alpha``.
    """
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be 1-D, got shape {p.shape}")
    if np.any((p < 0) | (p > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {p[(p < 0) | (p > 1)]}")
    adjusted = np.full_like(p, np.nan)
    finite = np.flatnonzero(~np.isnan(p))
    m = finite.size
    if m == 0:
        return adjusted
    order = finite[np.argsort(p[finite], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


@dataclass(frozen=True)
class ProbabilityOfImprovement:
    """P(X > Y) + P(X = Y)/2 with a percentile-bootstrap CI (Agarwal et al. 2021, rliable)."""

    estimate: float
    ci_low: float
    ci_high: float
    n_x: int
    n_y: int
    paired: bool


def _improvement_scores(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (np.sign(x - y) + 1.0) / 2.0


def _unpaired_poi(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    x, y = np.moveaxis(x, axis, -1), np.moveaxis(y, axis, -1)
    return _improvement_scores(x[..., :, None], y[..., None, :]).mean(axis=(-2, -1))


def probability_of_improvement(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    paired: bool = True,
    confidence_level: float = 0.95,
    n_resamples: int = 2000,
    random_state: int = 0,
) -> ProbabilityOfImprovement:
    """Probability that X beats Y, ties counting 1/2 (Agarwal et al. 2021, NeurIPS).

    Paired: mean over pairs of S(x_i, y_i); unpaired: mean over all (i, j) of S(x_i, y_j),
    with S = 1 if x > y, 1/2 if equal, 0 otherwise. Bootstrap resamples pairs (paired) or
    each sample independently (unpaired).
    """
    xa, ya = _as_1d(x, "x"), _as_1d(y, "y")
    if paired and xa.size != ya.size:
        raise ValueError(f"paired samples need equal lengths, got {xa.size} and {ya.size}")
    if xa.size == 0 or ya.size == 0:
        raise ValueError("probability_of_improvement needs at least one value in x and in y")
    if paired:
        scores = _improvement_scores(xa, ya)
        estimate = float(scores.mean())
        low, high = (
            (float("nan"), float("nan"))
            if scores.size < MIN_SEEDS
            else _percentile_bootstrap(
                (scores,), np.mean, False, confidence_level, n_resamples, random_state
            )
        )
    else:
        estimate = float(_unpaired_poi(xa, ya))
        low, high = (
            (float("nan"), float("nan"))
            if min(xa.size, ya.size) < MIN_SEEDS
            else _percentile_bootstrap(
                (xa, ya), _unpaired_poi, False, confidence_level, n_resamples, random_state
            )
        )
    return ProbabilityOfImprovement(estimate, low, high, int(xa.size), int(ya.size), paired)


@dataclass(frozen=True)
class PairedComparison:
    """Comparison of ``a`` against ``b`` over n paired seeds; differences are a - b."""

    a: str
    b: str
    n: int
    mean_a: float
    mean_b: float
    mean_difference: float
    ci_low: float
    ci_high: float
    confidence_level: float
    t_statistic: float
    pvalue: float
    p_adjusted: float
    cohens_dz: float
    wilcoxon_pvalue: float
    wilcoxon_p_adjusted: float
    wilcoxon_method: str
    wilcoxon_verdict: str
    probability_of_improvement: float
    poi_ci_low: float
    poi_ci_high: float
    alpha: float
    test: str = PRIMARY_TEST
    correction: str = "none"
    family_size: int = 1
    verdict: str = INSUFFICIENT
    better: str | None = None


def _verdict(n: int, p: float, alpha: float) -> str:
    if n < MIN_SEEDS or np.isnan(p):
        return INSUFFICIENT
    return SIGNIFICANT if p < alpha else NOT_SIGNIFICANT


def _paired_rows(
    a: np.ndarray,
    b: np.ndarray,
    names: list[tuple[str, str]],
    alpha: float,
    confidence_level: float,
    n_resamples: int,
    random_state: int,
) -> list[PairedComparison]:
    """Uncorrected comparisons of the rows of a and b, shape (m, n); one scipy call per test."""
    m, n = a.shape
    d = a - b
    nan = np.full(m, np.nan)
    mean_a, mean_b, mean_d = (
        (a.mean(axis=-1), b.mean(axis=-1), d.mean(axis=-1)) if n else (nan,) * 3
    )
    if n >= MIN_SEEDS:
        scores = _improvement_scores(a, b)
        # Differences and improvement scores share the resamples (same pairs drawn).
        stacked = np.concatenate([d, scores])
        ci = sps.bootstrap(
            (stacked,),
            np.mean,
            axis=-1,
            vectorized=True,
            method="percentile",
            confidence_level=confidence_level,
            n_resamples=n_resamples,
            random_state=random_state,
        ).confidence_interval
        point = stacked.mean(axis=-1)
        constant = _constant_rows(stacked)  # every resample identical: the CI is a point
        low, high = np.where(constant, point, ci.low), np.where(constant, point, ci.high)
        t, p = _t_test_rows(d)
        dz, poi = _cohens_dz_rows(d), scores.mean(axis=-1)
        wilcoxon = _wilcoxon_rows(d, alpha)
    else:
        low = high = np.full(2 * m, np.nan)
        t, p, dz, poi = nan, nan, nan, nan
        wilcoxon = [WilcoxonResult(np.nan, np.nan, n, "none", True)] * m
    results = []
    for i, ((name_a, name_b), w) in enumerate(zip(names, wilcoxon, strict=True)):
        verdict = _verdict(n, p[i], alpha)
        w_verdict = (
            INSUFFICIENT
            if n < MIN_SEEDS
            else UNDERPOWERED
            if w.underpowered
            else (_verdict(n, w.pvalue, alpha))
        )
        results.append(
            PairedComparison(
                a=name_a,
                b=name_b,
                n=n,
                mean_a=float(mean_a[i]),
                mean_b=float(mean_b[i]),
                mean_difference=float(mean_d[i]),
                ci_low=float(low[i]),
                ci_high=float(high[i]),
                confidence_level=confidence_level,
                t_statistic=float(t[i]),
                pvalue=float(p[i]),
                p_adjusted=float(p[i]),
                cohens_dz=float(dz[i]),
                wilcoxon_pvalue=w.pvalue,
                wilcoxon_p_adjusted=w.pvalue,
                wilcoxon_method=w.method,
                wilcoxon_verdict=w_verdict,
                probability_of_improvement=float(poi[i]),
                poi_ci_low=float(low[m + i]),
                poi_ci_high=float(high[m + i]),
                alpha=alpha,
                verdict=verdict,
                better=_better(name_a, name_b, float(mean_d[i]), verdict),
            )
        )
    return results


def _better(name_a: str, name_b: str, mean_difference: float, verdict: str) -> str | None:
    if verdict != SIGNIFICANT:
        return None
    return name_a if mean_difference > 0 else name_b


def paired_comparison(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    name_a: str = "a",
    name_b: str = "b",
    alpha: float = 0.05,
    confidence_level: float = 0.95,
    n_resamples: int = 2000,
    random_state: int = 0,
) -> PairedComparison:
    """One uncorrected paired comparison (a[i], b[i] share seed i); see :func:`compare_family`.

    Mean difference a - b with a percentile-bootstrap CI over pairs, paired t-test (primary),
    exact Wilcoxon signed-rank (robustness check), Cohen's d_z and the paired probability of
    improvement with its bootstrap CI (same resamples).
    """
    _check_alpha(alpha)
    xa, xb = _as_1d(a, name_a), _as_1d(b, name_b)
    if xa.size != xb.size:
        raise ValueError(
            f"paired samples need one value per seed each, got {xa.size} values "
            f"for {name_a!r} and {xb.size} for {name_b!r}; align them by seed"
        )
    return _paired_rows(
        xa[None], xb[None], [(name_a, name_b)], alpha, confidence_level, n_resamples, random_state
    )[0]


def compare_family(
    scores: Mapping[str, Sequence[float] | np.ndarray],
    reference: str | None = None,
    alpha: float = 0.05,
    confidence_level: float = 0.95,
    n_resamples: int = 2000,
    random_state: int = 0,
) -> list[PairedComparison]:
    """Paired comparisons over one family with Holm correction (Holm 1979) of both tests.

    ``scores`` maps a name to per-seed values aligned by position (NaN = missing seed; each
    pair uses the seeds both have). With ``reference`` the family is every other name vs the
    reference; without it, all pairs. Each result equals :func:`paired_comparison` on that
    pair, then Holm-adjusted over the family.
    """
    return compare_families(
        [scores], reference, alpha, confidence_level, n_resamples, random_state
    )[0]


def _family_pairs(arrays: dict[str, np.ndarray], reference: str | None) -> list[tuple[str, str]]:
    lengths = {a.shape for a in arrays.values()}
    if len(lengths) > 1 or any(len(shape) != 1 for shape in lengths):
        raise ValueError(
            f"scores need one 1-D array per name of equal length (NaN = missing "
            f"seed), got shapes {sorted(lengths)}"
        )
    if reference is not None and reference not in arrays:
        raise ValueError(f"reference {reference!r} is not among {sorted(arrays)}; pick one of them")
    if reference is not None:
        return [(name, reference) for name in arrays if name != reference]
    return list(combinations(arrays, 2))


def compare_families(
    families: Sequence[Mapping[str, Sequence[float] | np.ndarray]],
    reference: str | None = None,
    alpha: float = 0.05,
    confidence_level: float = 0.95,
    n_resamples: int = 2000,
    random_state: int = 0,
) -> list[list[PairedComparison]]:
    """:func:`compare_family` for many families at once (Holm within each family).

    Pairs with the same number of shared seeds are computed together, a few scipy calls in
    all, which keeps reports over hundreds of test conditions fast.
    """
    _check_alpha(alpha)
    jobs: dict[int, list[tuple[int, int, np.ndarray, np.ndarray, tuple[str, str]]]] = {}
    family_pairs = []
    for f, scores in enumerate(families):
        arrays = {name: np.asarray(v, dtype=float) for name, v in scores.items()}
        pairs = _family_pairs(arrays, reference)
        family_pairs.append(pairs)
        for i, (name_a, name_b) in enumerate(pairs):
            keep = ~(np.isnan(arrays[name_a]) | np.isnan(arrays[name_b]))
            job = (f, i, arrays[name_a][keep], arrays[name_b][keep], (name_a, name_b))
            jobs.setdefault(int(keep.sum()), []).append(job)
    results: list[list[PairedComparison | None]] = [[None] * len(p) for p in family_pairs]
    for group in jobs.values():
        rows = _paired_rows(
            np.stack([job[2] for job in group]),
            np.stack([job[3] for job in group]),
            [job[4] for job in group],
            alpha,
            confidence_level,
            n_resamples,
            random_state,
        )
        for (f, i, *_), row in zip(group, rows, strict=True):
            results[f][i] = row
    return [_holm_family(family, alpha) for family in results]


def _holm_family(results: list[PairedComparison], alpha: float) -> list[PairedComparison]:
    p_adj = holm([r.pvalue if r.n >= MIN_SEEDS else np.nan for r in results])
    w_adj = holm([r.wilcoxon_pvalue for r in results])
    family_size = int(np.sum(~np.isnan(p_adj)))
    corrected = []
    for r, p, w in zip(results, p_adj, w_adj, strict=True):
        verdict = _verdict(r.n, p, alpha)
        w_verdict = r.wilcoxon_verdict
        if w_verdict not in (UNDERPOWERED, INSUFFICIENT):
            w_verdict = _verdict(r.n, w, alpha)
        corrected.append(
            replace(
                r,
                p_adjusted=float(p),
                wilcoxon_p_adjusted=float(w),
                correction="Holm",
                family_size=family_size,
                verdict=verdict,
                wilcoxon_verdict=w_verdict,
                better=_better(r.a, r.b, r.mean_difference, verdict),
            )
        )
    return corrected


def average_ranks(scores: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Mean rank of each of k columns over N blocks (rows); rank 1 = best, ties share ranks."""
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
    """
    _check_alpha(alpha)
    if k < 2:
        raise ValueError(f"the Nemenyi test needs k >= 2 methods, got k={k}")
    return float(sps.studentized_range.ppf(1 - alpha, k, np.inf) / np.sqrt(2))


def critical_difference(k: int, n_blocks: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference CD = q_alpha sqrt(k (k + 1) / (6 N)) (Demšar 2006, 3.2.2)."""
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

    def significantly_different(self, a: str, b: str) -> bool:
        """Nemenyi: a and b differ when their average ranks differ by more than CD."""
        ranks = dict(zip(self.names, self.average_ranks, strict=True))
        return self.verdict == SIGNIFICANT and abs(ranks[a] - ranks[b]) > self.critical_difference


def friedman_nemenyi(
    scores: np.ndarray,
    names: Sequence[str],
    alpha: float = 0.05,
    higher_is_better: bool = True,
    tie_correction: bool = True,
) -> RankTestResult:
    """Friedman test (Friedman 1937) + Iman-Davenport F + Nemenyi CD, as in Demšar (2006).

    ``chi2_F = 12 N / (k (k+1)) [sum_j R_j^2 - k (k+1)^2 / 4]`` (divided by the tie
    correction of scipy.stats.friedmanchisquare when ``tie_correction``),
    ``F_F = (N-1) chi2_F / (N (k-1) - chi2_F)``. Verdict from the p-value of F_F; Nemenyi
    differences only count when that test rejects.
    """
    _check_alpha(alpha)
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
    elif denominator <= 0:  # ranks identical in every block: perfect agreement
        f_stat, p = float("inf"), 0.0
    else:
        f_stat = float((n - 1) * chi2 / denominator)
        p = float(sps.f.sf(f_stat, k - 1, (k - 1) * (n - 1)))
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
        verdict=_verdict(n, p, alpha),
    )


def nemenyi_cliques(result: RankTestResult) -> list[tuple[str, ...]]:
    """Maximal groups of methods whose average ranks lie within CD (the bars of a CD diagram)."""
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
