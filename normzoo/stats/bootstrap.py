"""A cluster bootstrap over test samples: intervals for one trained model's test metrics.

One checkpoint has no seed-to-seed variance to measure; what an interval can cover is the
sampling of the test set. Where a prediction depends on its test batch (batch statistics, mix,
online, TENT, outliers), samples of one batch are not independent, so whole batches are resampled
(the cluster bootstrap, Davison & Hinkley 1997, sec. 3.8; Field & Welsh 2007). A difference
between two test conditions on the same samples is bootstrapped paired: pass the per-sample
differences, so each resample draws the same clusters for both sides.

The percentile interval of the ratio estimator ``sum_k w_k S_k / sum_k w_k n_k`` (``S_k``, ``n_k``:
sum and size of cluster ``k``, ``w`` multinomial resampling counts), at the levels of
Hesterberg's expanded percentile interval (`expanded_levels`), is checked for coverage by
simulation in ``tests/test_evaluate_checkpoint.py`` (clustered Bernoulli outcomes of known mean).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

# Resamples drawn at once: a (chunk x clusters) count matrix stays small for any test set.
_CHUNK = 256


@dataclass(frozen=True)
class BootstrapInterval:
    """A cluster-bootstrap (expanded) percentile interval of a mean over samples."""

    estimate: float
    low: float
    high: float
    confidence_level: float
    n: int  # samples
    clusters: int  # independent units resampled (samples when unclustered)
    resamples: int
    method: str = "cluster bootstrap, expanded percentile"

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def expanded_levels(confidence_level: float, clusters: int) -> tuple[float, float]:
    """Quantile levels of the expanded percentile interval (Hesterberg 2015, "What Teachers
    Should Know About the Bootstrap", sec. 3.3): ``Phi(sqrt(k/(k-1)) t_{k-1}(q))`` for the
    two tails ``q``, which undoes the bootstrap's ``(k-1)/k`` variance and narrowness of z for
    ``k`` independent clusters; with the few test batches of a large test batch size the plain
    percentile interval undercovers."""
    tail = (1 - confidence_level) / 2
    k = clusters
    z = np.sqrt(k / (k - 1)) * sps.t.ppf([tail, 1 - tail], k - 1)
    return float(sps.norm.cdf(z[0])), float(sps.norm.cdf(z[1]))


def cluster_bootstrap(
    values: Sequence[float] | np.ndarray,
    clusters: Sequence[int] | np.ndarray | None = None,
    *,
    resamples: int = 2000,
    confidence_level: float = 0.95,
    seed: int = 0,
) -> BootstrapInterval:
    """Expanded percentile interval of ``mean(values)``, resampling whole ``clusters``.

    Args:
        values: one value per sample, e.g. 0/1 correctness, or a paired difference of two test
            conditions' correctness on the same samples.
        clusters: a cluster id per sample (e.g. the test batch that held it); None resamples
            samples (every sample its own cluster).
        resamples: bootstrap resamples; the same ``seed`` and cluster count draw the same
            resampling counts, so differences taken over one clustering are paired.
        confidence_level: two-sided level.
        seed: of the resampling generator.

    Returns:
        The estimate (the plain mean) and the interval.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"values must be a non-empty 1-D array, got shape {values.shape}")
    if np.isnan(values).any():
        raise ValueError("values contain NaN; score every sample before bootstrapping")
    if not 0.0 < confidence_level < 1.0:
        raise ValueError(f"confidence_level={confidence_level} is outside (0, 1); use e.g. 0.95")
    if resamples < 100:
        raise ValueError(f"resamples={resamples} is too few for a percentile interval; use >= 100")
    if clusters is None:
        ids = np.arange(values.size)
    else:
        clusters = np.asarray(clusters)
        if clusters.shape != values.shape:
            raise ValueError(
                f"clusters has shape {clusters.shape}, values {values.shape}; one id per sample"
            )
        ids = np.unique(clusters, return_inverse=True)[1]
    sums = np.bincount(ids, weights=values)
    sizes = np.bincount(ids).astype(float)
    k = sums.size
    if k < 2:
        raise ValueError(
            f"{k} cluster: a bootstrap needs at least 2 independent clusters; use more test data"
        )
    rng = np.random.default_rng(seed)
    estimates = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        stop = min(start + _CHUNK, resamples)
        picks = rng.integers(0, k, size=(stop - start, k))
        picks += np.arange(stop - start)[:, None] * k  # row r's clusters -> r * k + cluster
        counts = np.bincount(picks.ravel(), minlength=(stop - start) * k).reshape(-1, k)
        estimates[start:stop] = (counts @ sums) / (counts @ sizes)
    low, high = np.quantile(estimates, expanded_levels(confidence_level, k))
    return BootstrapInterval(
        estimate=float(values.mean()),
        low=float(low),
        high=float(high),
        confidence_level=confidence_level,
        n=int(values.size),
        clusters=int(k),
        resamples=resamples,
    )
