"""Minimum detectable effect of the paired t-test: what a non-significant result could miss."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import stats as sps
from scipy.optimize import brentq

from normzoo.stats._common import MIN_SEEDS

DETECTABLE_POWER = 0.8


@lru_cache(maxsize=256)
def _standardized_mde(n: int, level: float, power: float) -> float:
    """Effect in sd units that the two-sided one-sample t-test (df = n - 1) detects with power."""
    df, critical = n - 1, sps.t.ppf(1 - level / 2, n - 1)

    def shortfall(effect: float) -> float:
        ncp = effect * np.sqrt(n)
        # the far lower tail is NaN in scipy's nct where it is below 1e-16: count it as 0
        lower = np.nan_to_num(sps.nct.cdf(-critical, df, ncp), nan=0.0)
        return sps.nct.sf(critical, df, ncp) + lower - power

    high = 1.0
    while shortfall(high) < 0:
        high *= 2
    return float(brentq(shortfall, 0.0, high, xtol=1e-10))


def minimum_detectable_effect(
    sd: np.ndarray | float, n: int, level: float, power: float = DETECTABLE_POWER
) -> np.ndarray:
    """Smallest true mean difference the paired t-test detects with ``power`` (Cohen 1988).

    Solves ``P(|T| > t_{1-level/2, n-1}) = power`` for T noncentral t with df = n - 1 and
    noncentrality ``delta sqrt(n) / sd``; the result is ``delta``, in the units of ``sd``.

    Args:
        sd: standard deviation(s) of the paired differences (observed, ddof = 1).
        n: pairs (seeds).
        level: the test's level (alpha / family size for Holm's first step).
        power: target power.

    Returns:
        ``delta`` per sd; NaN where n < 2 or sd is not positive.

    Example (n = 10, one test at 0.05, sd 0.02: about 1.0 sd, i.e. 0.02):
        >>> round(float(minimum_detectable_effect(0.02, 10, 0.05)), 4)
        0.0199
    """
    sd = np.asarray(sd, dtype=float)
    if n < MIN_SEEDS:
        return np.full(sd.shape, np.nan)
    effect = _standardized_mde(int(n), float(level), float(power))
    with np.errstate(invalid="ignore"):
        return np.where(sd > 0, effect * sd, np.nan)
