"""Exact sign-flip and Wilcoxon tests against brute-force enumeration and scipy."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from normzoo import stats
from normzoo.stats.permutation import sign_flip_pvalues


def _brute_force(x: np.ndarray) -> float:
    observed = abs(x.sum())
    patterns = itertools.product((-1.0, 1.0), repeat=x.size)
    return float(np.mean([abs(np.dot(s, x)) >= observed - 1e-12 for s in patterns]))


def test_sign_flip_exact_equals_enumeration():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 5, 8):
        d = rng.normal(0.01, 0.02, n)
        assert stats.sign_flip_test(d).pvalue == pytest.approx(_brute_force(d))
    assert stats.sign_flip_test([0.1, 0.2, 0.3, 0.4, 0.5]).pvalue == pytest.approx(2 / 32)
    assert stats.min_pvalue(3) == 0.25 and stats.min_pvalue(5) == 0.0625


def test_sign_flip_against_scipy_permutation_test():
    rng = np.random.default_rng(1)
    d = rng.normal(0.3, 1.0, 12)
    reference = sps.permutation_test(
        (d,), np.mean, permutation_type="samples", n_resamples=np.inf
    ).pvalue
    assert stats.sign_flip_test(d).pvalue == pytest.approx(reference)


def test_sign_flip_monte_carlo_beyond_exact_limit():
    rng = np.random.default_rng(2)
    d = rng.normal(0.2, 1.0, 24)
    p, method = sign_flip_pvalues(d[None], n_resamples=20000)
    assert method.startswith("Monte Carlo")
    normal_approx = 2 * sps.norm.sf(abs(d.sum()) / math.sqrt((d**2).sum()))
    assert p[0] == pytest.approx(normal_approx, abs=0.03)
    assert p[0] >= 1 / 20001  # never 0


def test_wilcoxon_exact_with_and_without_ties():
    d = np.array([0.8, -0.1, 0.3, 0.45, 0.62, -0.27, 0.91, 0.15])
    result = stats.wilcoxon_test(d)
    reference = sps.wilcoxon(d, method="exact")
    assert not result.underpowered
    assert result.pvalue == pytest.approx(reference.pvalue)
    assert result.statistic == pytest.approx(reference.statistic)
    assert stats.wilcoxon_test(np.arange(1.0, 7.0)).pvalue == pytest.approx(2 / 64)
    five = stats.wilcoxon_test(np.arange(1.0, 6.0))
    assert five.underpowered and five.method == "none" and math.isnan(five.pvalue)
    assert not stats.wilcoxon_test(np.arange(1.0, 6.0), alpha=0.10).underpowered
    assert stats.wilcoxon_test([0, 0, 1, 2, 3, 4, 5, 6.5]).n_nonzero == 6
    # issue 10: tied |d| once used a normal approximation (p = 0.026 < the exact minimum 0.031)
    tied = np.array([0.01, 0.01, 0.01, 0.01, 0.01, 0.02])
    exact = stats.wilcoxon_test(tied)
    assert exact.pvalue == pytest.approx(2 / 64) and exact.pvalue >= stats.min_pvalue(6)
    ranks = sps.rankdata(np.abs(tied))
    assert exact.pvalue == pytest.approx(_brute_force(ranks))
