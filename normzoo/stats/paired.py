"""Paired comparisons over seeds: t-interval, t-test, sign-flip test, Wilcoxon, TOST, power.

A comparison of ``a`` against ``b`` uses the per-seed differences d_i = a_i - b_i (the same seed
trained or evaluated both ways). Rules every caller inherits:

- the primary test is the two-sided paired t-test; the reported interval is the paired
  t-interval (df = n - 1) at the level Holm tests the comparison at, so a printed interval
  excludes 0 exactly when the verdict is "significant";
- Holm corrects over the whole declared family (every comparison passed in one call), and the
  family size counts every declared comparison, testable or not;
- n < 2 -> "insufficient data"; all differences equal (zero spread) -> "degenerate: all seeds
  agree"; neither ever gets a p-value of 0 or an infinite effect size;
- robustness checks: the exact sign-flip permutation test of the mean (min p = 2/2^n) and the
  Wilcoxon signed-rank test with its exact null, "underpowered" when even its smallest
  reachable p-value, Holm-adjusted, cannot reach alpha;
- "equivalent" only from TOST (Schuirmann 1987) against a declared margin.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy import stats as sps

from normzoo.stats._common import (
    DEGENERATE,
    INSUFFICIENT,
    MIN_SEEDS,
    NOT_SIGNIFICANT,
    PRIMARY_TEST,
    SIGNIFICANT,
    UNDERPOWERED,
    as_1d,
    check_alpha,
    constant_rows,
)
from normzoo.stats.corrections import holm, holm_levels
from normzoo.stats.intervals import Interval, t_interval_rows
from normzoo.stats.permutation import min_pvalue, sign_flip_pvalues, signed_ranks

EQUIVALENT = "equivalent"
NOT_EQUIVALENT = "not shown equivalent"
DEFAULT_POWER_DELTA = 0.01  # one accuracy point, when no equivalence margin is declared


@dataclass(frozen=True)
class TestResult:
    """One two-sided test of mean(d) = 0: raw and family-adjusted p-values."""

    test: str
    statistic: float
    pvalue: float
    p_adjusted: float
    method: str = ""


@dataclass(frozen=True)
class WilcoxonCheck:
    """Wilcoxon signed-rank robustness check (exact null with ties; zeros dropped)."""

    statistic: float
    pvalue: float
    p_adjusted: float
    n_nonzero: int
    verdict: str


@dataclass(frozen=True)
class Equivalence:
    """TOST against a declared margin: equivalent when both one-sided tests reject."""

    margin: float
    pvalue: float
    p_adjusted: float
    verdict: str


@dataclass(frozen=True)
class Power:
    """Power of the family-level t-test (level alpha / family size) to detect a difference delta,
    with the observed sd of the differences (noncentral t)."""

    delta: float
    level: float
    power: float


@dataclass(frozen=True)
class PairedComparison:
    """Comparison of ``a`` against ``b`` over n paired seeds; differences are a - b."""

    a: str
    b: str
    n: int
    mean_a: float
    mean_b: float
    mean_difference: float
    ci: Interval  # paired t-interval at the Holm-compatible level (>= the nominal level)
    ci_nominal: Interval  # the same at the nominal level, unadjusted
    t_test: TestResult
    permutation: TestResult
    wilcoxon: WilcoxonCheck
    sign_proportion: float  # share of seeds with a > b, ties 1/2 (not rliable's estimand)
    cohens_dz: float
    power: Power
    equivalence: Equivalence | None
    alpha: float
    correction: str
    family_size: int
    verdict: str
    better: str | None

    def row(self) -> dict:
        """Flat columns for tables and CSV files."""
        eq = self.equivalence
        return {
            "a": self.a,
            "b": self.b,
            "n": self.n,
            "mean_a": self.mean_a,
            "mean_b": self.mean_b,
            "mean_difference": self.mean_difference,
            "ci_low": self.ci.low,
            "ci_high": self.ci.high,
            "ci_level": self.ci.confidence_level,
            "ci_nominal_low": self.ci_nominal.low,
            "ci_nominal_high": self.ci_nominal.high,
            "t_statistic": self.t_test.statistic,
            "pvalue": self.t_test.pvalue,
            "p_adjusted": self.t_test.p_adjusted,
            "permutation_pvalue": self.permutation.pvalue,
            "permutation_p_adjusted": self.permutation.p_adjusted,
            "wilcoxon_pvalue": self.wilcoxon.pvalue,
            "wilcoxon_p_adjusted": self.wilcoxon.p_adjusted,
            "wilcoxon_verdict": self.wilcoxon.verdict,
            "sign_proportion": self.sign_proportion,
            "cohens_dz": self.cohens_dz,
            "power_delta": self.power.delta,
            "power": self.power.power,
            "equivalence_margin": eq.margin if eq else np.nan,
            "tost_p_adjusted": eq.p_adjusted if eq else np.nan,
            "equivalence": eq.verdict if eq else "",
            "alpha": self.alpha,
            "test": self.t_test.test,
            "correction": self.correction,
            "family_size": self.family_size,
            "verdict": self.verdict,
            "better": self.better,
        }


def cohens_dz(differences: Sequence[float] | np.ndarray) -> float:
    """Cohen's d_z = mean(d) / sd(d, ddof=1) for paired differences (Cohen 1988; Lakens 2013).

    NaN when it is undefined: n < 2 or zero spread (never +-inf).
    """
    d = as_1d(differences, "differences")
    if d.size < MIN_SEEDS or constant_rows(d)[0]:
        return float("nan")
    return float(d.mean() / d.std(ddof=1))


def paired_t_test(differences: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Two-sided paired t-test on differences (scipy.stats.ttest_rel); (t, p).

    NaNs when undefined (n < 2 or zero spread): such data get an explicit verdict instead.
    """
    d = as_1d(differences, "differences")
    if d.size < MIN_SEEDS or constant_rows(d)[0]:
        return float("nan"), float("nan")
    result = sps.ttest_1samp(d, 0.0)
    return float(result.statistic), float(result.pvalue)


def _power(delta: float, sd: np.ndarray, n: int, level: float) -> np.ndarray:
    """Two-sided paired t-test power at ``level`` for true mean difference ``delta``."""
    if n < MIN_SEEDS:
        return np.full(sd.shape, np.nan)
    df = n - 1
    critical = sps.t.ppf(1 - level / 2, df)
    with np.errstate(divide="ignore", invalid="ignore"):
        ncp = delta * np.sqrt(n) / sd
        # nct is NaN far in its tails; each tail term is then 0 (bounded by 1 - the other)
        upper = np.nan_to_num(sps.nct.sf(critical, df, ncp), nan=0.0)
        lower = np.nan_to_num(sps.nct.cdf(-critical, df, ncp), nan=0.0)
        power = np.minimum(1.0, upper + lower)
    return np.where(sd > 0, power, np.nan)


@dataclass
class _Raw:
    """Uncorrected per-row quantities of one group of comparisons with equal n."""

    n: int
    d: np.ndarray
    mean_a: np.ndarray
    mean_b: np.ndarray
    sd: np.ndarray
    degenerate: np.ndarray
    t: np.ndarray
    p: np.ndarray
    p_perm: np.ndarray
    perm_method: str
    w_stat: np.ndarray
    w_p: np.ndarray
    n_nonzero: np.ndarray
    tost: np.ndarray
    sign: np.ndarray


def _raw(a: np.ndarray, b: np.ndarray, margin: float | None) -> _Raw:
    m, n = a.shape
    d = a - b
    nan = np.full(m, np.nan)
    if n < MIN_SEEDS:
        mean_a, mean_b = (a.mean(-1), b.mean(-1)) if n else (nan, nan)
        sign = ((np.sign(d) + 1) / 2).mean(-1) if n else nan
        return _Raw(
            n,
            d,
            mean_a,
            mean_b,
            nan,
            np.zeros(m, bool),
            nan,
            nan,
            nan,
            "none",
            nan,
            nan,
            np.zeros(m, int),
            nan,
            sign,
        )
    degenerate = constant_rows(d)
    sd = d.std(axis=-1, ddof=1)
    se = sd / np.sqrt(n)
    mean = d.mean(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(degenerate, np.nan, mean / se)
        p = np.where(degenerate, np.nan, 2 * sps.t.sf(np.abs(t), n - 1))
        tost = nan
        if margin is not None:
            lower = sps.t.sf((mean + margin) / se, n - 1)
            upper = sps.t.cdf((mean - margin) / se, n - 1)
            tost = np.where(degenerate, np.nan, np.maximum(lower, upper))
    p_perm, method = sign_flip_pvalues(d)
    p_perm = np.where(degenerate, np.nan, p_perm)
    nonzero = np.abs(d) > 1e-12
    n_nonzero = nonzero.sum(axis=-1)
    w_stat, w_p = nan.copy(), nan.copy()
    for k in np.unique(n_nonzero[~degenerate]):
        rows = np.flatnonzero((n_nonzero == k) & ~degenerate)
        if k == 0:
            continue
        kept = np.stack([d[i][nonzero[i]] for i in rows])
        ranks = signed_ranks(kept)
        w_p[rows] = sign_flip_pvalues(ranks)[0]
        positive = np.where(ranks > 0, ranks, 0).sum(-1)
        w_stat[rows] = np.minimum(positive, k * (k + 1) / 2 - positive)
    return _Raw(
        n,
        d,
        a.mean(-1),
        b.mean(-1),
        sd,
        degenerate,
        t,
        p,
        p_perm,
        method,
        w_stat,
        w_p,
        n_nonzero,
        tost,
        ((np.sign(d) + 1) / 2).mean(-1),
    )


def compare_pairs(
    a: Sequence[np.ndarray],
    b: Sequence[np.ndarray],
    names: Sequence[tuple[str, str]],
    alpha: float = 0.05,
    confidence_level: float = 0.95,
    equivalence_margin: float | None = None,
    power_delta: float | None = None,
) -> list[PairedComparison]:
    """Paired comparisons ``a[i]`` vs ``b[i]`` forming ONE family, Holm-corrected over all of it.

    Each ``a[i]``, ``b[i]`` holds per-seed values aligned by seed (same length, no NaN).
    ``confidence_level`` is the nominal level; the reported ``ci`` is widened to the level Holm
    tests each comparison at (see :func:`normzoo.stats.corrections.holm_levels`).
    """
    check_alpha(alpha)
    if equivalence_margin is not None and not equivalence_margin > 0:
        raise ValueError(f"equivalence_margin={equivalence_margin} must be > 0 (e.g. 0.01)")
    m = len(names)
    if not len(a) == len(b) == m:
        raise ValueError(f"got {len(a)} a-samples, {len(b)} b-samples and {m} names")
    groups: dict[int, list[int]] = {}
    for i, (xa, xb) in enumerate(zip(a, b, strict=True)):
        xa, xb = as_1d(xa, names[i][0]), as_1d(xb, names[i][1])
        if xa.size != xb.size:
            raise ValueError(
                f"paired samples need one value per seed each, got {xa.size} values for "
                f"{names[i][0]!r} and {xb.size} for {names[i][1]!r}; align them by seed"
            )
        groups.setdefault(xa.size, []).append(i)
    raws: list[tuple[_Raw, int] | None] = [None] * m
    for n, members in groups.items():
        raw = _raw(
            np.stack([np.asarray(a[i], float) for i in members]).reshape(len(members), n),
            np.stack([np.asarray(b[i], float) for i in members]).reshape(len(members), n),
            equivalence_margin,
        )
        for row, i in enumerate(members):
            raws[i] = (raw, row)
    p = np.array([r.p[j] for r, j in raws]) if m else np.zeros(0)
    p_adj = holm(p)
    levels = holm_levels(p, alpha)
    perm_adj = holm(np.array([r.p_perm[j] for r, j in raws])) if m else p
    w_adj = holm(np.array([r.w_p[j] for r, j in raws])) if m else p
    tost_adj = holm(np.array([r.tost[j] for r, j in raws])) if equivalence_margin else None
    delta = power_delta or equivalence_margin or DEFAULT_POWER_DELTA
    level = alpha / m if m else alpha
    # intervals and power, vectorized per group of equal n
    adjusted_level = np.maximum(confidence_level, 1 - levels)
    nominal_ci, adjusted_ci, power = np.full((m, 2), np.nan), np.full((m, 2), np.nan), np.zeros(m)
    for n, members in groups.items():
        raw = raws[members[0]][0]
        rows = [raws[i][1] for i in members]
        nominal_ci[members] = np.stack(t_interval_rows(raw.d[rows], confidence_level), axis=1)
        adjusted_ci[members] = np.stack(
            t_interval_rows(raw.d[rows], adjusted_level[members]), axis=1
        )
        power[members] = _power(delta, np.asarray(raw.sd)[rows], n, level)
    results = []
    for i, (raw, j) in enumerate(raws):
        n = raw.n
        mean_d = float(raw.d[j].mean()) if n else float("nan")
        if n < MIN_SEEDS:
            verdict = INSUFFICIENT
        elif raw.degenerate[j]:
            verdict = DEGENERATE
        else:
            verdict = SIGNIFICANT if p_adj[i] < alpha else NOT_SIGNIFICANT
        k = int(raw.n_nonzero[j])
        if n < MIN_SEEDS:
            w_verdict = INSUFFICIENT
        elif raw.degenerate[j]:
            w_verdict = DEGENERATE
        elif min(1.0, m * min_pvalue(k)) >= alpha:
            w_verdict = UNDERPOWERED
        else:
            w_verdict = SIGNIFICANT if w_adj[i] < alpha else NOT_SIGNIFICANT
        equivalence = None
        if tost_adj is not None:
            eq_verdict = (
                verdict
                if verdict in (INSUFFICIENT, DEGENERATE)
                else EQUIVALENT
                if tost_adj[i] < alpha
                else NOT_EQUIVALENT
            )
            equivalence = Equivalence(
                equivalence_margin, float(raw.tost[j]), float(tost_adj[i]), eq_verdict
            )
        better = None
        if verdict == SIGNIFICANT:
            better = names[i][0] if mean_d > 0 else names[i][1]
        results.append(
            PairedComparison(
                a=names[i][0],
                b=names[i][1],
                n=n,
                mean_a=float(raw.mean_a[j]),
                mean_b=float(raw.mean_b[j]),
                mean_difference=mean_d,
                ci=Interval(
                    float(adjusted_ci[i, 0]),
                    float(adjusted_ci[i, 1]),
                    float(adjusted_level[i]),
                    "paired t (df = n - 1), Holm-compatible level",
                ),
                ci_nominal=Interval(
                    float(nominal_ci[i, 0]),
                    float(nominal_ci[i, 1]),
                    confidence_level,
                    "paired t (df = n - 1)",
                ),
                t_test=TestResult(PRIMARY_TEST, float(raw.t[j]), float(p[i]), float(p_adj[i])),
                permutation=TestResult(
                    "sign-flip permutation",
                    mean_d,
                    float(raw.p_perm[j]),
                    float(perm_adj[i]),
                    raw.perm_method,
                ),
                wilcoxon=WilcoxonCheck(
                    float(raw.w_stat[j]), float(raw.w_p[j]), float(w_adj[i]), k, w_verdict
                ),
                sign_proportion=float(raw.sign[j]),
                cohens_dz=float(
                    np.nan if raw.degenerate[j] or n < MIN_SEEDS else mean_d / raw.sd[j]
                ),
                power=Power(float(delta), float(level), float(power[i])),
                equivalence=equivalence,
                alpha=alpha,
                correction="Holm" if m > 1 else "none",
                family_size=m,
                verdict=verdict,
                better=better,
            )
        )
    return results


def paired_comparison(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    name_a: str = "a",
    name_b: str = "b",
    alpha: float = 0.05,
    confidence_level: float = 0.95,
    equivalence_margin: float | None = None,
) -> PairedComparison:
    """One paired comparison (a family of one): a[i], b[i] share seed i."""
    return compare_pairs([a], [b], [(name_a, name_b)], alpha, confidence_level, equivalence_margin)[
        0
    ]


def family_pairs(names: Sequence[str], reference: str | None) -> list[tuple[str, str]]:
    """Every name vs ``reference``, or all pairs when it is None."""
    if reference is not None and reference not in names:
        raise ValueError(f"reference {reference!r} is not among {sorted(names)}; pick one of them")
    if reference is not None:
        return [(name, reference) for name in names if name != reference]
    return list(combinations(names, 2))


def compare_family(
    scores: Mapping[str, Sequence[float] | np.ndarray],
    reference: str | None = None,
    alpha: float = 0.05,
    confidence_level: float = 0.95,
    equivalence_margin: float | None = None,
) -> list[PairedComparison]:
    """One Holm family from ``scores`` (name -> per-seed values, NaN = missing seed).

    With ``reference`` every other name vs it, otherwise all pairs; each pair uses the seeds
    both names have.
    """
    arrays = {name: np.asarray(v, dtype=float) for name, v in scores.items()}
    shapes = {v.shape for v in arrays.values()}
    if len(shapes) > 1 or any(len(s) != 1 for s in shapes):
        raise ValueError(
            f"scores need one 1-D array per name of equal length (NaN = missing seed), got "
            f"shapes {sorted(shapes)}"
        )
    pairs = family_pairs(list(arrays), reference)
    a, b = [], []
    for name_a, name_b in pairs:
        keep = ~(np.isnan(arrays[name_a]) | np.isnan(arrays[name_b]))
        a.append(arrays[name_a][keep])
        b.append(arrays[name_b][keep])
    return compare_pairs(a, b, pairs, alpha, confidence_level, equivalence_margin)
