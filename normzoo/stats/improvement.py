"""Probability of improvement, named for the estimand it is.

- :func:`sign_proportion`: the *paired* sign proportion, the share of seeds on which a beats b
  (ties 1/2). It estimates P(A_i > B_i) for a seed i that trains both; it is not rliable's.
- :func:`probability_of_improvement`: rliable's definition (Agarwal et al. 2021, "Deep RL at the
  edge of the statistical precipice", NeurIPS; ``rliable/metrics.py``): per task, the unpaired
  Mann-Whitney U statistic over all run pairs, U / (n m) = P(X > Y) + P(X = Y) / 2, averaged
  over tasks (a task where both samples are identical counts 1/2).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats as sps

from normzoo.stats._common import as_1d


def sign_proportion(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Share of paired seeds with a > b, ties counting 1/2 (paired sign proportion).

    Examples:
        >>> sign_proportion([0.8, 0.7, 0.9], [0.7, 0.7, 0.95])
        0.5
    """
    xa, xb = as_1d(a, "a"), as_1d(b, "b")
    if xa.size != xb.size or xa.size == 0:
        raise ValueError(
            f"paired samples need equal, non-zero lengths, got {xa.size} and {xb.size}"
        )
    return float(((np.sign(xa - xb) + 1.0) / 2.0).mean())


def probability_of_improvement(
    scores_x: Sequence[float] | np.ndarray, scores_y: Sequence[float] | np.ndarray
) -> float:
    """rliable's P(X > Y): Mann-Whitney U / (n_x n_y) per task, averaged over tasks.

    ``scores_x`` is (runs_x, tasks) and ``scores_y`` (runs_y, tasks), or 1-D for one task.
    Runs are unpaired (rliable's setting); for paired seeds see :func:`sign_proportion`.

    Examples:
        >>> probability_of_improvement([0.8, 0.9], [0.7, 0.85])
        0.75
    """
    x, y = np.asarray(scores_x, dtype=float), np.asarray(scores_y, dtype=float)
    x, y = (x[:, None] if x.ndim == 1 else x), (y[:, None] if y.ndim == 1 else y)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            f"scores must be (runs, tasks) with the same tasks, got {x.shape} and {y.shape}"
        )
    if x.shape[0] == 0 or y.shape[0] == 0 or np.isnan(x).any() or np.isnan(y).any():
        raise ValueError("probability_of_improvement needs at least one run each and no NaN")
    per_task = []
    for task in range(x.shape[1]):
        if np.array_equal(x[:, task], y[:, task]):
            per_task.append(0.5)
            continue
        u = sps.mannwhitneyu(x[:, task], y[:, task], alternative="greater").statistic
        per_task.append(u / (x.shape[0] * y.shape[0]))
    return float(np.mean(per_task))
