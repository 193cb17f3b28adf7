"""normzoo.stats paired comparisons against closed forms, scipy and hand-computed Holm."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from normzoo import stats


def test_cohens_dz_closed_form():
    d = np.array([1.0, 2.0, 3.0, 4.0])
    sd = math.sqrt(((1.5**2) * 2 + (0.5**2) * 2) / 3)
    assert stats.cohens_dz(d) == pytest.approx(2.5 / sd)
    # zero spread is undefined (issue 10: never +-inf); so is n < 2
    for degenerate in ([0.05] * 5, [-0.05] * 5, [0.0, 0.0, 0.0], [0.3]):
        assert math.isnan(stats.cohens_dz(degenerate))


def test_paired_t_test_matches_formula_and_scipy():
    a = np.array([0.81, 0.79, 0.84, 0.80, 0.83])
    b = np.array([0.78, 0.80, 0.80, 0.77, 0.81])
    t, p = stats.paired_t_test(a - b)
    d = a - b
    t_hand = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))
    assert t == pytest.approx(t_hand)
    assert p == pytest.approx(2 * sps.t.sf(abs(t_hand), d.size - 1))
    assert p == pytest.approx(sps.ttest_rel(a, b).pvalue)
    # zero spread (also with float rounding in the differences) and n < 2: undefined, never p = 0
    x = np.array([0.1, 0.37, 0.52, 0.9])
    for degenerate in ([0.0, 0.0, 0.0], (x + 0.05) - x, [0.1]):
        assert all(math.isnan(v) for v in stats.paired_t_test(degenerate))


def test_paired_t_interval_formula():
    d = np.array([0.02, -0.01, 0.05, 0.03])
    ci = stats.paired_t_interval(d)
    half = sps.t.ppf(0.975, 3) * d.std(ddof=1) / 2.0
    assert (ci.low, ci.high) == pytest.approx((d.mean() - half, d.mean() + half))
    reference = sps.ttest_1samp(d, 0.0).confidence_interval(0.95)
    assert (ci.low, ci.high) == pytest.approx((reference.low, reference.high))


def test_holm_textbook_example():
    # m = 4: sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, max(0.06, 1*0.04)
    p = [0.01, 0.04, 0.03, 0.005]
    np.testing.assert_allclose(stats.holm(p), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(stats.holm([0.5, 0.9]), [1.0, 1.0])
    # issue 10: a declared but untestable comparison (NaN) still counts in the family size
    out = stats.holm([0.01, np.nan, 0.02])
    assert math.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2]], [0.03, 0.04])
    with pytest.raises(ValueError, match="p-values"):
        stats.holm([1.5])


def _holm_step_down_rejects(p: np.ndarray, alpha: float) -> np.ndarray:
    """Holm (1979) as a test procedure: reject H_(1..i) while p_(j) <= alpha / (m - j + 1)."""
    order = np.argsort(p)
    rejected = np.zeros(p.size, dtype=bool)
    for position, index in enumerate(order):
        if p[index] > alpha / (p.size - position):
            break
        rejected[index] = True
    return rejected


def test_holm_adjusted_pvalues_reproduce_step_down_procedure():
    rng = np.random.default_rng(1)
    for _ in range(50):
        p = rng.random(rng.integers(1, 8)) ** 3
        adjusted = stats.holm(p)
        for alpha in np.linspace(0.001, 0.5, 60):
            np.testing.assert_array_equal(adjusted <= alpha, _holm_step_down_rejects(p, alpha))


def test_holm_compatible_intervals_agree_with_verdicts():
    rng = np.random.default_rng(2)
    for _ in range(40):
        m, n = int(rng.integers(1, 9)), int(rng.integers(3, 9))
        shifts = rng.choice([0.0, 0.5, 1.5], m)
        a = [rng.normal(s, 1.0, n) for s in shifts]
        b = [np.zeros(n)] * m
        family = stats.compare_pairs(a, b, [(f"x{i}", "ref") for i in range(m)])
        for r in family:
            assert r.ci.confidence_level >= 0.95
            excludes_zero = r.ci.low > 0 or r.ci.high < 0
            assert excludes_zero == (r.verdict == "significant"), r


def test_mean_confidence_interval_t_formula():
    x = np.array([0.7, 0.72, 0.75, 0.71])
    mean, low, high = stats.mean_confidence_interval(x)
    half = sps.t.ppf(0.975, 3) * x.std(ddof=1) / 2.0
    assert (mean, low, high) == pytest.approx((x.mean(), x.mean() - half, x.mean() + half))


def test_bca_only_for_large_n_and_equal_to_scipy():
    rng = np.random.default_rng(0)
    x = rng.normal(0.01, 0.02, stats.BOOTSTRAP_MIN_N)
    ci = stats.bca_interval(x, n_resamples=999)
    reference = sps.bootstrap(
        (x,), np.mean, method="BCa", n_resamples=999, random_state=0
    ).confidence_interval
    assert (ci.low, ci.high) == pytest.approx((reference.low, reference.high))
    with pytest.raises(ValueError, match=f"n >= {stats.BOOTSTRAP_MIN_N}"):
        stats.bca_interval(x[:5])


def test_sign_proportion_and_rliable_probability_of_improvement():
    x, y = np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 4.0])
    assert stats.sign_proportion(x, y) == pytest.approx((0.5 + 1 + 0) / 3)
    assert stats.probability_of_improvement(x, y) == pytest.approx(5 / 9)
    # rliable: unpaired Mann-Whitney U / (n m) per task, averaged over tasks
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 5, (7, 3)).astype(float), rng.integers(0, 5, (6, 3)).astype(float)
    per_task = [
        sps.mannwhitneyu(a[:, t], b[:, t], alternative="greater").statistic / 42 for t in range(3)
    ]
    assert stats.probability_of_improvement(a, b) == pytest.approx(np.mean(per_task))
    # brute force P(X > Y) + P(X = Y) / 2 over all run pairs
    brute = np.mean(
        [
            ((a[:, t, None] > b[None, :, t]) + 0.5 * (a[:, t, None] == b[None, :, t])).mean()
            for t in range(3)
        ]
    )
    assert stats.probability_of_improvement(a, b) == pytest.approx(brute)
    assert stats.probability_of_improvement(a[:, :1], a[:, :1]) == 0.5
    with pytest.raises(ValueError, match="equal"):
        stats.sign_proportion(a[:, 0], b[:, 0])


def test_compare_family_flags_real_difference_not_identical():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.6, 0.8, 8)
    scores = {
        "batch": base,
        "better": base + 0.05 + rng.normal(0, 0.002, 8),
        "same": base.copy(),
    }
    results = {r.a: r for r in stats.compare_family(scores, reference="batch")}
    assert set(results) == {"better", "same"}
    better, same = results["better"], results["same"]
    assert better.verdict == "significant" and better.better == "better"
    assert better.correction == "Holm" and better.family_size == 2 and better.n == 8
    assert 0.04 < better.ci.low < better.mean_difference < better.ci.high < 0.06
    assert better.sign_proportion == 1.0
    assert better.wilcoxon.verdict == "significant"
    assert better.permutation.pvalue == pytest.approx(2 / 2**8)
    # Holm over the family of two; the degenerate one counts in m
    assert better.t_test.p_adjusted == pytest.approx(min(1.0, 2 * better.t_test.pvalue))
    assert same.verdict == "degenerate: all seeds agree" and same.better is None
    assert same.mean_difference == 0.0 and math.isnan(same.t_test.pvalue)
    assert math.isnan(same.cohens_dz) and same.wilcoxon.verdict == "degenerate: all seeds agree"
    all_pairs = stats.compare_family(scores)
    assert {(r.a, r.b) for r in all_pairs} == {
        ("batch", "better"),
        ("batch", "same"),
        ("better", "same"),
    }
    assert all(r.family_size == 3 for r in all_pairs)


def test_degenerate_constant_nonzero_differences_are_never_significant():
    # issue 10: constant non-zero differences gave p = 0, d_z = inf, "significant" at n = 2
    for n in (2, 3, 6):
        r = stats.paired_comparison(np.arange(n) + 0.05, np.arange(n, dtype=float))
        assert r.verdict == "degenerate: all seeds agree"
        assert math.isnan(r.t_test.pvalue) and math.isnan(r.cohens_dz) and r.better is None


def test_honesty_rules_small_samples():
    one = stats.compare_family({"batch": [0.5, np.nan], "group": [0.9, 0.1]}, reference="batch")[0]
    assert one.n == 1 and one.verdict == "insufficient data"
    assert math.isnan(one.t_test.p_adjusted)
    three = stats.paired_comparison([0.9, 0.91, 0.92], [0.5, 0.52, 0.5])
    assert three.verdict == "significant"
    assert three.wilcoxon.verdict == "underpowered"  # n = 3: min p 0.25, never "not significant"
    for result in (one, three):
        assert result.t_test.test == "paired t-test" and result.alpha == 0.05


def test_wilcoxon_gated_on_family_adjusted_minimum():
    # n = 6: min p = 2/64 = 0.031 < 0.05 alone, but 4 comparisons make it 0.125: underpowered
    d = np.arange(1.0, 7.0)
    alone = stats.compare_pairs([d], [np.zeros(6)], [("a", "b")])[0]
    assert alone.wilcoxon.verdict == "significant"
    family = stats.compare_pairs([d] * 4, [np.zeros(6)] * 4, [("a", f"b{i}") for i in range(4)])
    assert {r.wilcoxon.verdict for r in family} == {"underpowered"}


def test_tost_equivalence_and_minimum_detectable_effect():
    rng = np.random.default_rng(4)
    b = rng.uniform(0.6, 0.8, 10)
    close = b + rng.normal(0.0, 0.002, 10)
    far = b + 0.03 + rng.normal(0.0, 0.002, 10)
    results = stats.compare_pairs(
        [close, far], [b, b], [("close", "b"), ("far", "b")], equivalence_margin=0.01
    )
    assert results[0].equivalence.verdict == "equivalent"
    assert results[1].equivalence.verdict == "not shown equivalent"
    # TOST p = max of the two one-sided t-tests against +-margin
    d = close - b
    se = d.std(ddof=1) / math.sqrt(10)
    p_tost = max(sps.t.sf((d.mean() + 0.01) / se, 9), sps.t.cdf((d.mean() - 0.01) / se, 9))
    assert results[0].equivalence.pvalue == pytest.approx(p_tost)
    # minimum detectable effect at 80% power, level alpha / m: a simulation of the t-test at
    # that true difference rejects 80% of the time (20,000 draws: MC sd 0.003)
    noisy = b + rng.normal(0.0, 0.012, 10)
    r = stats.compare_pairs([noisy, far], [b, b], [("noisy", "b"), ("far", "b")])[0]
    sd = (noisy - b).std(ddof=1)
    assert r.mde.level == 0.025 and r.mde.power == 0.8
    sims = rng.normal(r.mde.effect, sd, (20000, 10))
    p = sps.ttest_1samp(sims, 0.0, axis=1).pvalue
    assert (p < 0.025).mean() == pytest.approx(0.8, abs=0.012)
    # and scales with the sd of the differences
    assert r.mde.effect / sd == pytest.approx(results[0].mde.effect / (close - b).std(ddof=1))


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="alpha=1.5"):
        stats.paired_comparison([1, 2], [1, 2], alpha=1.5)
    with pytest.raises(ValueError, match="align them by seed"):
        stats.paired_comparison([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="reference 'nope'"):
        stats.compare_family({"a": [1.0], "b": [2.0]}, reference="nope")
    with pytest.raises(ValueError, match="NaN"):
        stats.cohens_dz([1.0, np.nan])
    with pytest.raises(ValueError, match="equivalence_margin"):
        stats.paired_comparison([1, 2], [1, 3], equivalence_margin=-1)


def test_family_rows_equal_single_comparisons_except_for_holm():
    rng = np.random.default_rng(5)
    scores = {name: rng.uniform(0.5, 0.9, 7) for name in "abcd"}
    scores["d"][2] = np.nan  # a missing seed: pairs with d use the 6 shared seeds
    family = stats.compare_family(scores)
    for r in family:
        keep = ~(np.isnan(scores[r.a]) | np.isnan(scores[r.b]))
        single = stats.paired_comparison(scores[r.a][keep], scores[r.b][keep], r.a, r.b)
        assert r.n == single.n == keep.sum()
        assert r.mean_difference == pytest.approx(single.mean_difference)
        assert r.t_test.pvalue == pytest.approx(single.t_test.pvalue)
        assert r.permutation.pvalue == pytest.approx(single.permutation.pvalue)
        assert r.wilcoxon.pvalue == pytest.approx(single.wilcoxon.pvalue, nan_ok=True)
        assert (r.ci_nominal.low, r.ci_nominal.high) == pytest.approx(
            (single.ci.low, single.ci.high)
        )
        assert r.sign_proportion == stats.sign_proportion(scores[r.a][keep], scores[r.b][keep])
    np.testing.assert_allclose(
        [r.t_test.p_adjusted for r in family], stats.holm([r.t_test.pvalue for r in family])
    )
