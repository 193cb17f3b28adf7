"""Rank test blocks: distinct computations, by default train conditions.

Friedman/Nemenyi assume independent blocks (Demšar's data sets). Evaluations of the same
trained models under several test conditions are not independent, and many are literally the
same computation (a batch-independent norm under every stats mode; the store's ``computed_as``
says which). So blocks are train conditions, each norm scored by its mean accuracy over seeds
and test conditions; with fewer than 2 train conditions the blocks are the distinct test
computations, and the ranks are descriptive only.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from normzoo import stats
from normzoo.report.select import TEST_KEYS, TRAIN_KEYS, prefer_stats_mode


@dataclass(frozen=True)
class RankBlocks:
    result: stats.RankTestResult
    blocks: str  # what a block is, in words
    used: int
    dropped: int
    duplicates: int  # test-condition blocks merged because they were the same computation


def _distinct_test_blocks(ev: pd.DataFrame, keys: list[str]) -> tuple[pd.DataFrame, int]:
    """Keep one test condition per distinct set of (method, computed_as) computations."""
    if "computed_as" not in ev.columns:
        return ev, 0
    signature = (
        ev.assign(tag=ev["method"] + "=" + ev["computed_as"].astype(str))
        .groupby(keys)["tag"]
        .agg(lambda t: "|".join(sorted(set(t))))
    )
    keep = signature[~signature.duplicated()].index
    kept = ev.set_index(keys).loc[keep].reset_index()
    return kept, int(signature.duplicated().sum())


def rank_blocks(ev: pd.DataFrame, alpha: float) -> RankBlocks | None:
    """Friedman/Nemenyi over distinct blocks, or None when under 3 norms or 2 blocks."""
    ev = prefer_stats_mode(ev)
    if ev.empty or ev["method"].nunique() < 3:
        return None
    train = [k for k in TRAIN_KEYS if ev[k].nunique() > 1] or ["train_batch_size"]
    test = [k for k in TEST_KEYS if k != "stats_mode"]
    if ev[train].drop_duplicates().shape[0] >= 2:
        means = ev.groupby([*train, "method"])["accuracy"].mean().unstack("method")
        independent, blocks, duplicates = True, "train conditions (test conditions averaged)", 0
    else:
        ev, duplicates = _distinct_test_blocks(ev, test)
        means = ev.groupby([*test, "method"])["accuracy"].mean().unstack("method")
        independent = False
        blocks = "distinct test computations of the same trained models"
    coverage = means.notna().mean()
    means = means.drop(columns=sorted(coverage[coverage < 0.5].index))
    complete = means.dropna()
    if complete.shape[1] < 3 or complete.shape[0] < 2:
        return None
    result = stats.friedman_nemenyi(
        complete.to_numpy(),
        [str(c) for c in complete.columns],
        alpha,
        independent_blocks=independent,
    )
    return RankBlocks(
        result, blocks, int(complete.shape[0]), int(means.shape[0] - complete.shape[0]), duplicates
    )
