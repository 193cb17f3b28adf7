"""Tables for reports: paired comparisons per condition, their summaries, ranks, markdown.

Turns long-format evaluation rows into the arrays :mod:`normzoo.stats` expects and its
results back into DataFrames (one row per comparison).
"""

from __future__ import annotations

import logging
from dataclasses import asdict

import numpy as np
import pandas as pd

from normzoo import stats

logger = logging.getLogger(__name__)


def compare_conditions(
    ev: pd.DataFrame,
    group_keys: list[str],
    pair_column: str,
    pair_by: str,
    reference: str | None,
    alpha: float,
    n_resamples: int = 2000,
) -> pd.DataFrame:
    """One Holm family per group of ``group_keys``: values of ``pair_column`` compared, paired by
    ``pair_by`` (seed or run), each vs ``reference`` or all pairs when it is None."""
    if ev.empty:
        return pd.DataFrame()
    duplicated = ev.duplicated([*group_keys, pair_by, pair_column])
    if duplicated.any():
        logger.warning(
            "%d evaluation rows repeat a (condition, %s, %s); their accuracies are averaged",
            int(duplicated.sum()),
            pair_by,
            pair_column,
        )
    wide = ev.pivot_table(
        index=[*group_keys, pair_by], columns=pair_column, values="accuracy", aggfunc="mean"
    )
    values, names = wide.to_numpy(dtype=float), [str(c) for c in wide.columns]
    group_index = wide.index.droplevel(pair_by)
    codes, uniques = pd.factorize(group_index)
    order = np.argsort(codes, kind="stable")
    boundaries = np.flatnonzero(np.diff(codes[order])) + 1
    keys, families = [], []
    for members in np.split(order, boundaries):
        block = values[members]
        present = [j for j in range(len(names)) if not np.isnan(block[:, j]).all()]
        if len(present) < 2 or (
            reference is not None and reference not in [names[j] for j in present]
        ):
            continue
        families.append({names[j]: block[:, j] for j in present})
        key = group_index[members[0]]
        keys.append(dict(zip(group_keys, key if isinstance(key, tuple) else (key,), strict=True)))
    results = stats.compare_families(families, reference, alpha, n_resamples=n_resamples)
    rows = [
        {**key, **asdict(result)}
        for key, family in zip(keys, results, strict=True)
        for result in family
    ]
    return pd.DataFrame(rows)


def significance_summary(table: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """Counts of verdicts per ``by`` (default: the compared norm ``a`` and its reference ``b``)."""
    by = by or ["a", "b"]
    significant = table["verdict"] == stats.SIGNIFICANT
    flags = pd.DataFrame(
        {
            **{k: table[k] for k in by},
            "comparisons": 1,
            "a significantly better": significant & (table["mean_difference"] > 0),
            "a significantly worse": significant & (table["mean_difference"] < 0),
            "not significant": table["verdict"] == stats.NOT_SIGNIFICANT,
            "insufficient data": table["verdict"] == stats.INSUFFICIENT,
            "Wilcoxon underpowered": table["wilcoxon_verdict"] == stats.UNDERPOWERED,
            "mean difference (avg)": table["mean_difference"],
        }
    )
    aggregations = {c: "sum" for c in flags.columns if c not in by}
    aggregations["mean difference (avg)"] = "mean"
    out = flags.groupby(by).agg(aggregations).reset_index()
    out["n (pairs)"] = (
        table.groupby(by)["n"]
        .agg(lambda n: str(n.min()) if n.min() == n.max() else f"{n.min()}-{n.max()}")
        .to_numpy()
    )
    return out


def rank_across_conditions(
    ev: pd.DataFrame, block_keys: list[str], alpha: float
) -> tuple[stats.RankTestResult, int, int] | None:
    """Friedman/Nemenyi over blocks of ``block_keys``, each norm scored by its mean over seeds.

    Returns (result, blocks used, blocks left out because a norm was missing), or None when
    fewer than 3 norms or 2 complete blocks remain. Norms present in under half the blocks
    are left out first so that one sparse norm does not discard most blocks.
    """
    if ev.empty:
        return None
    means = ev.groupby([*block_keys, "method"], dropna=False)["accuracy"].mean().unstack("method")
    coverage = means.notna().mean()
    sparse = sorted(coverage[coverage < 0.5].index)
    if sparse:
        logger.info("left out of the rank test (in < half of the blocks): %s", sparse)
    means = means.drop(columns=sparse)
    complete = means.dropna()
    if complete.shape[1] < 3 or complete.shape[0] < 2:
        return None
    result = stats.friedman_nemenyi(complete.to_numpy(), [str(c) for c in complete.columns], alpha)
    return result, int(complete.shape[0]), int(means.shape[0] - complete.shape[0])


def _cell(value: object) -> str:
    if isinstance(value, float | np.floating):
        return "–" if np.isnan(value) else f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame) -> str:
    """GitHub-flavoured markdown table of a DataFrame (no index)."""
    if frame.empty:
        return "(none)"
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = [
        "| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)
    ]
    return "\n".join([header, rule, *body])
