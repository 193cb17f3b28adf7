"""Uncorrected per-comparison quantities of paired comparisons, vectorised over rows of equal n:
the t-test, TOST, sign-flip and Wilcoxon p-values before any family-level correction."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from normzoo.stats._common import MIN_SEEDS, constant_rows
from normzoo.stats.permutation import sign_flip_pvalues, signed_ranks


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
