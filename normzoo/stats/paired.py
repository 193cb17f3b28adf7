"""Paired comparisons over seeds: t-interval, t-test, sign-flip test, Wilcoxon, TOST, MDE.

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
- "equivalent" only from TOST (Schuirmann 1987) against a declared margin;
- a non-significant result carries its minimum detectable effect (80% power at alpha / m);
- a declared comparison that is not tested (``tested=False``: an untrained condition) keeps its
  place in the family (Holm's m) with the verdict "not tested".

The estimand is the mean of the per-seed differences over the seeds passed in; the caller
names it (e.g. "over seeds where neither norm collapsed") and the result carries that name.
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
    NOT_TESTED,
    PRIMARY_TEST,
    SIGNIFICANT,
    UNDERPOWERED,
    as_1d,
    check_alpha,
    constant_rows,
)
from normzoo.stats._rows import _Raw, _raw
from normzoo.stats.corrections import holm, holm_levels
from normzoo.stats.detectable import DETECTABLE_POWER, minimum_detectable_effect
from normzoo.stats.intervals import Interval, t_interval_rows
from normzoo.stats.permutation import min_pvalue

EQUIVALENT = "equivalent"
NOT_EQUIVALENT = "not shown equivalent"
MEAN_ESTIMAND = "mean paired difference over the seeds given"
_HOLM_CI = "paired t (df = n - 1), Holm-compatible level"
_T_CI = "paired t (df = n - 1)"


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
class DetectableEffect:
    """Minimum detectable effect: the smallest true mean difference the t-test at ``level``
    (alpha / family size: Holm's first step) detects with ``power``, given the observed sd of
    the differences (noncentral t, two-sided)."""

    effect: float
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
    mde: DetectableEffect
    equivalence: Equivalence | None
    alpha: float
    correction: str
    family_size: int
    verdict: str
    better: str | None
    estimand: str = ""

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
            "mde": self.mde.effect,
            "mde_level": self.mde.level,
            "mde_power": self.mde.power,
            "equivalence_margin": eq.margin if eq else np.nan,
            "tost_p_adjusted": eq.p_adjusted if eq else np.nan,
            "equivalence": eq.verdict if eq else "",
            "alpha": self.alpha,
            "test": self.t_test.test,
            "correction": self.correction,
            "family_size": self.family_size,
            "verdict": self.verdict,
            "better": self.better,
            "estimand": self.estimand,
        }


def cohens_dz(differences: Sequence[float] | np.ndarray) -> float:
    """Cohen's d_z = mean(d) / sd(d, ddof=1) for paired differences (Cohen 1988; Lakens 2013).

    Args:
        differences: per-seed differences a_i - b_i.

    Returns:
        d_z; NaN when it is undefined: n < 2 or zero spread (never +-inf).

    Examples:
        >>> round(cohens_dz([0.01, 0.03, 0.02]), 3), cohens_dz([0.02, 0.02])
        (2.0, nan)
    """
    d = as_1d(differences, "differences")
    if d.size < MIN_SEEDS or constant_rows(d)[0]:
        return float("nan")
    return float(d.mean() / d.std(ddof=1))


def paired_t_test(differences: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Two-sided paired t-test (Student 1908) on differences, as scipy.stats.ttest_rel.

    Args:
        differences: per-seed differences a_i - b_i.

    Returns:
        (t, p); NaNs when undefined (n < 2 or zero spread): such data get an explicit verdict.

    Examples:
        >>> [round(v, 4) for v in paired_t_test([0.01, 0.03, 0.02])]
        [3.4641, 0.0742]
    """
    d = as_1d(differences, "differences")
    if d.size < MIN_SEEDS or constant_rows(d)[0]:
        return float("nan"), float("nan")
    result = sps.ttest_1samp(d, 0.0)
    return float(result.statistic), float(result.pvalue)


def _check_inputs(
    a: Sequence[np.ndarray], b: Sequence[np.ndarray], names: Sequence[tuple[str, str]]
) -> dict[int, list[int]]:
    """Validate the aligned samples; group the comparisons by their number of pairs n."""
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
    return groups


def _raw_rows(
    a: Sequence[np.ndarray],
    b: Sequence[np.ndarray],
    groups: dict[int, list[int]],
    margin: float | None,
) -> list[tuple[_Raw, int]]:
    """Uncorrected quantities of every comparison, computed per group of equal n."""
    raws: list[tuple[_Raw, int]] = [None] * sum(map(len, groups.values()))  # type: ignore[list-item]
    for n, members in groups.items():
        raw = _raw(
            np.stack([np.asarray(a[i], float) for i in members]).reshape(len(members), n),
            np.stack([np.asarray(b[i], float) for i in members]).reshape(len(members), n),
            margin,
        )
        for row, i in enumerate(members):
            raws[i] = (raw, row)
    return raws


@dataclass(frozen=True)
class _Family:
    """Family-level quantities: Holm-adjusted p-values, levels, intervals, MDEs."""

    p: np.ndarray
    p_adj: np.ndarray
    perm_adj: np.ndarray
    w_adj: np.ndarray
    tost_adj: np.ndarray | None
    ci_level: np.ndarray
    nominal_ci: np.ndarray
    adjusted_ci: np.ndarray
    mde: np.ndarray
    mde_level: float


def _adjust(
    raws: list[tuple[_Raw, int]],
    groups: dict[int, list[int]],
    tested: np.ndarray,
    alpha: float,
    confidence_level: float,
    margin: float | None,
) -> _Family:
    """Holm over the whole family (untested members count as p = 1), intervals and MDEs."""
    m = len(raws)

    def column(name: str) -> np.ndarray:
        values = np.array([getattr(r, name)[j] for r, j in raws]) if m else np.zeros(0)
        return np.where(tested, values, np.nan)

    p = column("p")
    levels = holm_levels(p, alpha)
    ci_level = np.maximum(confidence_level, 1 - levels)
    nominal, adjusted, mde = np.full((m, 2), np.nan), np.full((m, 2), np.nan), np.full(m, np.nan)
    mde_level = alpha / m if m else alpha
    for n, members in groups.items():
        raw = raws[members[0]][0]
        rows = [raws[i][1] for i in members]
        nominal[members] = np.stack(t_interval_rows(raw.d[rows], confidence_level), axis=1)
        adjusted[members] = np.stack(t_interval_rows(raw.d[rows], ci_level[members]), axis=1)
        mde[members] = minimum_detectable_effect(np.asarray(raw.sd)[rows], n, mde_level)
    return _Family(
        p,
        holm(p),
        holm(column("p_perm")),
        holm(column("w_p")),
        holm(column("tost")) if margin else None,
        ci_level,
        nominal,
        adjusted,
        mde,
        mde_level,
    )


def _verdicts(raw: _Raw, j: int, i: int, fam: _Family, tested: bool, alpha: float) -> tuple:
    """(t-test verdict, Wilcoxon verdict) of comparison i (row j of its group)."""
    n, m = raw.n, len(fam.p)
    if not tested:
        return NOT_TESTED, NOT_TESTED
    if n < MIN_SEEDS:
        return INSUFFICIENT, INSUFFICIENT
    if raw.degenerate[j]:
        return DEGENERATE, DEGENERATE
    verdict = SIGNIFICANT if fam.p_adj[i] < alpha else NOT_SIGNIFICANT
    if min(1.0, m * min_pvalue(int(raw.n_nonzero[j]))) >= alpha:
        return verdict, UNDERPOWERED
    return verdict, SIGNIFICANT if fam.w_adj[i] < alpha else NOT_SIGNIFICANT


def _result(
    i: int,
    raws: list[tuple[_Raw, int]],
    names: Sequence[tuple[str, str]],
    fam: _Family,
    tested: bool,
    spec: dict,
) -> PairedComparison:
    """Assemble comparison i from its raw and family-level quantities."""
    raw, j = raws[i]
    n, alpha, margin = raw.n, spec["alpha"], spec["margin"]
    mean_d = float(raw.d[j].mean()) if n else float("nan")
    verdict, w_verdict = _verdicts(raw, j, i, fam, tested, alpha)
    equivalence = None
    if fam.tost_adj is not None:
        eq = EQUIVALENT if fam.tost_adj[i] < alpha else NOT_EQUIVALENT
        eq = verdict if verdict in (INSUFFICIENT, DEGENERATE, NOT_TESTED) else eq
        equivalence = Equivalence(margin, float(raw.tost[j]), float(fam.tost_adj[i]), eq)
    better = (names[i][0] if mean_d > 0 else names[i][1]) if verdict == SIGNIFICANT else None
    defined = not (raw.degenerate[j] or n < MIN_SEEDS)
    return PairedComparison(
        a=names[i][0],
        b=names[i][1],
        n=n,
        mean_a=float(raw.mean_a[j]),
        mean_b=float(raw.mean_b[j]),
        mean_difference=mean_d,
        ci=Interval(*map(float, fam.adjusted_ci[i]), float(fam.ci_level[i]), _HOLM_CI),
        ci_nominal=Interval(*map(float, fam.nominal_ci[i]), spec["confidence"], _T_CI),
        t_test=TestResult(PRIMARY_TEST, float(raw.t[j]), float(fam.p[i]), float(fam.p_adj[i])),
        permutation=TestResult(
            "sign-flip permutation",
            mean_d,
            float(raw.p_perm[j]),
            float(fam.perm_adj[i]),
            raw.perm_method,
        ),
        wilcoxon=WilcoxonCheck(
            float(raw.w_stat[j]),
            float(raw.w_p[j]),
            float(fam.w_adj[i]),
            int(raw.n_nonzero[j]),
            w_verdict,
        ),
        sign_proportion=float(raw.sign[j]),
        cohens_dz=float(mean_d / raw.sd[j]) if defined else float("nan"),
        mde=DetectableEffect(float(fam.mde[i]), fam.mde_level, DETECTABLE_POWER),
        equivalence=equivalence,
        alpha=alpha,
        correction="Holm" if len(names) > 1 else "none",
        family_size=len(names),
        verdict=verdict,
        better=better,
        estimand=spec["estimand"],
    )


def compare_pairs(
    a: Sequence[np.ndarray],
    b: Sequence[np.ndarray],
    names: Sequence[tuple[str, str]],
    alpha: float = 0.05,
    confidence_level: float = 0.95,
    equivalence_margin: float | None = None,
    tested: Sequence[bool] | None = None,
    estimand: str = MEAN_ESTIMAND,
) -> list[PairedComparison]:
    """Paired comparisons ``a[i]`` vs ``b[i]`` forming ONE family, Holm-corrected over all of it.

    Primary test: two-sided paired t-test (Student 1908) of the mean difference, Holm (1979)
    over the family; interval: the paired t-interval at the level Holm tests the comparison at.

    Args:
        a: per comparison, per-seed values aligned by seed (same length, no NaN).
        b: per comparison, per-seed values aligned by seed (same length, no NaN).
        names: per comparison, (name of a, name of b).
        alpha: family-wise error rate.
        confidence_level: nominal level; ``ci`` is widened to the Holm level (see
            :func:`normzoo.stats.corrections.holm_levels`), ``ci_nominal`` is not.
        equivalence_margin: declared TOST margin (Schuirmann 1987), or None.
        tested: per comparison, False for a declared comparison that is not tested (e.g. an
            untrained condition): verdict ``not tested``, and it still counts in Holm's m.
        estimand: what the mean difference is over, in words (shown with every result).

    Returns:
        One :class:`PairedComparison` per pair, in order.

    Examples:
        >>> r = compare_pairs([[0.80, 0.82, 0.81, 0.83]], [[0.70, 0.71, 0.73, 0.72]],
        ...     [("group", "batch")])[0]
        >>> r.verdict, r.better, round(r.mean_difference, 3), round(r.t_test.pvalue, 5)
        ('significant', 'group', 0.1, 0.00077)
    """
    check_alpha(alpha)
    if equivalence_margin is not None and not equivalence_margin > 0:
        raise ValueError(f"equivalence_margin={equivalence_margin} must be > 0 (e.g. 0.01)")
    groups = _check_inputs(a, b, names)
    mask = np.ones(len(names), bool) if tested is None else np.asarray(tested, bool)
    if mask.shape != (len(names),):
        raise ValueError(f"tested needs one flag per comparison ({len(names)}), got {mask.shape}")
    raws = _raw_rows(a, b, groups, equivalence_margin)
    fam = _adjust(raws, groups, mask, alpha, confidence_level, equivalence_margin)
    spec = {
        "alpha": alpha,
        "margin": equivalence_margin,
        "confidence": confidence_level,
        "estimand": estimand,
    }
    return [_result(i, raws, names, fam, bool(mask[i]), spec) for i in range(len(names))]


def paired_comparison(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    name_a: str = "a",
    name_b: str = "b",
    alpha: float = 0.05,
    confidence_level: float = 0.95,
    equivalence_margin: float | None = None,
) -> PairedComparison:
    """One paired comparison (a family of one): a[i], b[i] share seed i.

    Args:
        a: per-seed values aligned by seed.
        b: per-seed values aligned by seed.
        name_a: their names in the result.
        name_b: their names in the result.
        alpha: as in :func:`compare_pairs`.
        confidence_level: as in :func:`compare_pairs`.
        equivalence_margin: as in :func:`compare_pairs`.

    Returns:
        A :class:`PairedComparison` (paired t-test, no multiplicity correction).

    Examples:
        >>> r = paired_comparison([0.80, 0.82, 0.81], [0.79, 0.80, 0.80], "group", "batch")
        >>> r.n, round(r.mean_difference, 4), r.verdict
        (3, 0.0133, 'not significant')
    """
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

    Args:
        scores: name -> per-seed values of equal length, NaN for a missing seed.
        reference: compare every other name with it; None: all pairs.
        alpha: as in :func:`compare_pairs`.
        confidence_level: as in :func:`compare_pairs`.
        equivalence_margin: as in :func:`compare_pairs`.

    Returns:
        One :class:`PairedComparison` per pair; each pair uses the seeds both names have.

    Examples:
        >>> family = compare_family({"batch": [0.8, 0.7, 0.9, 0.85], "group": [0.82, 0.73,
        ...     0.93, 0.86], "layer": [0.8, 0.71, float("nan"), 0.84]}, reference="batch")
        >>> [(r.a, r.n, r.family_size, r.correction) for r in family]
        [('group', 4, 2, 'Holm'), ('layer', 3, 2, 'Holm')]
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
