"""Simulation: every printed verdict holds its family-wise level and every printed interval
covers, under the seed distributions the studies see, at the n each study uses.

Measured (seeded, so fixed): FWER of the t verdicts 0.027-0.056, of Wilcoxon 0-0.047, of the
collapse verdicts 0-0.009 under their nulls; coverage of the 95% t-interval 0.944-0.965.

The report prints, per family of m = 6 comparisons (a study's primary family):
- the paired t-test verdict on the seeds where neither run collapsed (estimand: the mean paired
  difference over those seeds), Holm over the family, and its t-intervals (nominal, Holm level);
- the Wilcoxon signed-rank verdict on the same seeds (or "underpowered"), Holm over the family;
- the collapse verdict (Fisher's exact test of the collapse counts), Holm over the family.

FAMILIES families per scenario. Monte Carlo error: the sd of an estimated FWER near 0.05 is
sqrt(0.05 * 0.95 / 2000) = 0.0049, so the bound alpha + 0.01 is about two sds above alpha; the
sd of a coverage estimate near 0.95 over 12,000 intervals is 0.002, the bound nominal - 0.01
is five sds below. The fast vectorised path below is checked against ``compare_pairs`` and
``compare_collapse`` on the first families of every scenario, so it is what the report prints.
A negative control (a z-interval and z-test at n = 5) must fail the same check.
"""

from functools import lru_cache

import numpy as np
import pytest
from scipy import stats as sps

from normzoo import stats

ALPHA, M, FAMILIES, CHANCE, MARGIN = 0.05, 6, 2000, 0.1, 0.05


def draw(shape: str, rng: np.random.Generator, size: tuple) -> np.ndarray:
    """Per-seed test accuracies of one norm."""
    if shape == "normal":
        return rng.normal(0.8, 0.02, size)
    if shape == "skewed":  # long left tail (skewness -1.4): a few weak seeds
        return 0.85 - rng.gamma(2.0, 0.015, size)
    if shape == "heavy":  # Student t with 2 df: infinite variance
        return np.clip(0.8 + 0.01 * rng.standard_t(2, size), 0.2, 1.0)
    if shape == "bimodal":  # collapsing seeds: 20% at chance, the rest learned
        collapsed = rng.random(size) < 0.2
        return np.where(collapsed, CHANCE + rng.normal(0, 0.01, size), rng.normal(0.8, 0.02, size))
    raise ValueError(shape)


def scenario(name: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """(a, b) of shape (FAMILIES, M, n) under the null of the accuracy estimand, and whether
    the collapse null holds too."""
    rng = np.random.default_rng(seed)
    size = (FAMILIES, M, n)
    if name == "collapse":  # stable b; a collapses on 20% of seeds and equals b's law otherwise
        return draw("bimodal", rng, size), draw("normal", rng, size), False
    return draw(name, rng, size), draw(name, rng, size), True


@lru_cache(maxsize=32)
def signed_rank_null(n: int) -> np.ndarray:
    """P(W+ = w), w = 0..n(n+1)/2, for n untied non-zero differences (exact recursion)."""
    counts = np.zeros(n * (n + 1) // 2 + 1)
    counts[0] = 1
    for r in range(1, n + 1):
        counts[r:] = counts[r:] + counts[:-r].copy()
    return counts / 2**n


def fast_verdicts(a: np.ndarray, b: np.ndarray, level_ci: float = 0.95) -> dict:
    """What the report prints, for (F, M, n) samples: rejections and interval bounds."""
    collapsed_a, collapsed_b = a <= CHANCE + MARGIN, b <= CHANCE + MARGIN
    kept = ~(collapsed_a | collapsed_b)
    k = kept.sum(-1)
    d = np.where(kept, a - b, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = d.sum(-1) / k
        sd = np.sqrt((np.where(kept, d - mean[..., None], 0.0) ** 2).sum(-1) / (k - 1))
        t = mean / (sd / np.sqrt(k))
        p_t = np.where(k >= 2, 2 * sps.t.sf(np.abs(t), k - 1), np.nan)
        half = sps.t.ppf((1 + level_ci) / 2, k - 1) * sd / np.sqrt(k)
    # Wilcoxon on the same seeds: two-sided exact p of |sum of signed ranks|
    p_w = np.full(k.shape, np.nan)
    ranks = sps.rankdata(np.where(kept, np.abs(d), np.inf), axis=-1)
    w_plus = np.where(kept & (d > 0), ranks, 0).sum(-1)
    for size in np.unique(k[k >= 1]):
        null, total = signed_rank_null(size), size * (size + 1) / 2
        values = np.abs(2 * np.arange(null.size) - total)
        rows = k == size
        observed = np.abs(2 * w_plus[rows] - total)
        p_w[rows] = (null[None, :] * (values[None, :] >= observed[:, None] - 1e-9)).sum(-1)
    underpowered = M * 2.0 / 2.0**k >= ALPHA
    # collapse: Fisher on the counts
    n = a.shape[-1]
    p_c = stats.fisher_table(n, n)[collapsed_a.sum(-1), collapsed_b.sum(-1)]
    return {
        "t": stats.holm(p_t) < ALPHA,
        "wilcoxon": (stats.holm(p_w) < ALPHA) & ~underpowered,
        "collapse": stats.holm(p_c) < ALPHA,
        "p_t": p_t,
        "mean": mean,
        "half": half,
        "kept": kept,
        "collapsed": (collapsed_a, collapsed_b),
    }


def family_rates(a, b, truth: float) -> dict:
    out = fast_verdicts(a, b)
    defined = np.isfinite(out["half"])
    covered = np.abs(out["mean"] - truth) <= out["half"]
    return {
        "fwer_t": out["t"].any(-1).mean(),
        "fwer_wilcoxon": out["wilcoxon"].any(-1).mean(),
        "fwer_collapse": out["collapse"].any(-1).mean(),
        "coverage": covered[defined].mean(),
    }


def failures(rates: dict, collapse_null: bool) -> list[str]:
    bad = [f"{k} = {rates[k]:.4f}" for k in ("fwer_t", "fwer_wilcoxon") if rates[k] > ALPHA + 0.01]
    if collapse_null and rates["fwer_collapse"] > ALPHA + 0.01:
        bad.append(f"fwer_collapse = {rates['fwer_collapse']:.4f}")
    if rates["coverage"] < 0.95 - 0.01:
        bad.append(f"coverage = {rates['coverage']:.4f}")
    return bad


SHAPES = ("normal", "skewed", "heavy", "bimodal", "collapse")


@pytest.mark.parametrize("n", [3, 10, 14])  # quick config, studies at 10 and 14 seeds
def test_printed_verdicts_hold_their_level_and_intervals_cover(n):
    problems = []
    for i, shape in enumerate(SHAPES):
        a, b, collapse_null = scenario(shape, n, seed=100 * n + i)
        # the t-interval is translation-equivariant: coverage of 0 under the null is its
        # coverage of any true difference under a shift of these shapes
        rates = family_rates(a, b, 0.0)
        problems += [f"{shape}, n = {n}: {p}" for p in failures(rates, collapse_null)]
    assert not problems, problems


def test_negative_control_fails_the_same_check():
    # a z-interval and z-test (1.96 instead of t_{0.975, n-1}) at n = 5: too narrow
    a, b, _ = scenario("normal", 5, seed=7)
    d = a - b
    mean, se = d.mean(-1), d.std(-1, ddof=1) / np.sqrt(5)
    p_z = 2 * sps.norm.sf(np.abs(mean / se))
    rates = {
        "fwer_t": (stats.holm(p_z) < ALPHA).any(-1).mean(),
        "fwer_wilcoxon": 0.0,
        "fwer_collapse": 0.0,
        "coverage": (np.abs(mean) <= 1.96 * se).mean(),
    }
    assert failures(rates, True) and rates["coverage"] < 0.94


@pytest.mark.parametrize("shape", ["bimodal", "collapse"])
def test_fast_path_is_what_the_report_prints(shape):
    a, b, _ = scenario(shape, 10, seed=11)
    out = fast_verdicts(a[:6], b[:6])
    for f in range(6):
        kept = out["kept"][f]
        results = stats.compare_pairs(
            [a[f, j][kept[j]] for j in range(M)],
            [b[f, j][kept[j]] for j in range(M)],
            [("a", f"b{j}") for j in range(M)],
        )
        np.testing.assert_allclose([r.t_test.pvalue for r in results], out["p_t"][f])
        assert [r.verdict == "significant" for r in results] == out["t"][f].tolist()
        wilcoxon = [r.wilcoxon.verdict == "significant" for r in results]
        assert wilcoxon == out["wilcoxon"][f].tolist()
        np.testing.assert_allclose(
            [r.ci_nominal.high - r.mean_difference for r in results], out["half"][f]
        )
        collapse = stats.compare_collapse(
            [(out["collapsed"][0][f, j], out["collapsed"][1][f, j]) for j in range(M)],
            [("a", f"b{j}") for j in range(M)],
            [(range(10), range(10))] * M,
        )
        assert [c.verdict == "significant" for c in collapse] == out["collapse"][f].tolist()


def _fisher_by_hand(x: int, y: int, n: int) -> float:
    """Two-sided Fisher p from the hypergeometric law of x given x + y collapses in 2n runs:
    the summed probability of tables no more likely than the observed one."""
    law = sps.hypergeom(2 * n, x + y, n)
    support = np.arange(max(0, x + y - n), min(n, x + y) + 1)
    pmf = law.pmf(support)
    return float(pmf[pmf <= law.pmf(x) * (1 + 1e-7)].sum())


@pytest.mark.parametrize(
    "n, family, expected", [(10, 1, 0.62), (10, 6, 0.17), (14, 1, 0.91), (5, 1, 0.19)]
)
def test_collapse_power_against_an_independent_computation(n, family, expected):
    # 0% vs 50% collapse; the figures: 62% / 17% after Holm over 6 at n = 10, 91% at 14
    reject = np.array(
        [[_fisher_by_hand(x, y, n) * family < ALPHA for y in range(n + 1)] for x in range(n + 1)]
    )
    outcomes = np.arange(n + 1)
    exact = sps.binom.pmf(outcomes, n, 0.0) @ reject @ sps.binom.pmf(outcomes, n, 0.5)
    assert stats.collapse_power(0.0, 0.5, n, n, ALPHA, family) == pytest.approx(exact, abs=1e-9)
    assert exact == pytest.approx(expected, abs=0.01)
    # and a simulation of the experiment itself (20,000 draws: MC sd <= 0.0035)
    rng = np.random.default_rng(n + family)
    x, y = rng.binomial(n, 0.0, 20000), rng.binomial(n, 0.5, 20000)
    assert reject[x, y].mean() == pytest.approx(exact, abs=0.015)
