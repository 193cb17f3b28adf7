"""'What we found': sentences generated from the primary family's verdicts, nothing else."""

from __future__ import annotations

import numpy as np
import pandas as pd

from normzoo import stats
from normzoo.report.select import TEST_KEYS, TRAIN_KEYS
from normzoo.report.tables import condition_columns

_SHORT = {"train_batch_size": "train bs", "test_batch_size": "test bs"}


def _p(p: float) -> str:
    return "< 0.0001" if p < 1e-4 else f"= {p:.3g}"


def _condition(row: pd.Series, keys: list[str]) -> str:
    return ", ".join(f"{_SHORT.get(k, k)} {row[k]}" for k in keys)


def finding(row: pd.Series, keys: list[str]) -> str:
    """One sentence for one primary comparison, from its numbers and verdict only."""
    where = _condition(row, keys)
    head = f"**{row['a']} vs {row['b']}**" + (f" ({where})" if where else "")
    n, verdict = int(row["n"]), row["verdict"]
    if verdict == stats.NOT_TESTED:
        return (
            f"{head}: not tested, no norm passed the training-accuracy gate in this train "
            f"condition (descriptive mean difference {row['mean_difference']:+.4f} over "
            f"n = {n} seeds); it still counts in the family's Holm correction."
        )
    if verdict == stats.INSUFFICIENT:
        dropped = int(row.get("seeds_collapsed", 0) or 0)
        left_out = f", after leaving out {dropped} with a collapsed run" if dropped else ""
        return f"{head}: insufficient data (n = {n} paired seeds{left_out}; at least 2 needed)."
    if verdict == stats.DEGENERATE:
        return (
            f"{head}: degenerate, all {n} seeds give the same difference "
            f"({row['mean_difference']:+.4f}); no test is meaningful, no claim is made."
        )
    ci = (
        f"{row['mean_difference']:+.4f} [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}] "
        f"({row['ci_level']:.1%} paired t-interval)"
    )
    tests = f"Holm-adjusted p {_p(row['p_adjusted'])}, n = {n}, {row['test']}"
    estimand = row.get("estimand") or stats.MEAN_ESTIMAND
    dropped = int(row.get("seeds_collapsed", 0) or 0)
    ci = f"{ci}, estimand: {estimand}" + (
        f" ({dropped} seed{'s' * (dropped != 1)} left out)" if dropped else ""
    )
    if verdict == stats.SIGNIFICANT:
        sign = "better" if row["mean_difference"] > 0 else "worse"
        return (
            f"{head}: {row['a']} is significantly {sign}, difference {ci}; {tests}; "
            f"d_z = {row['cohens_dz']:.2f}; exact sign-flip test Holm p "
            f"{_p(row['permutation_p_adjusted'])}."
        )
    mde = row["mde"]
    power_text = (
        f"the smallest true difference this test detects with 80% power (at level "
        f"{row['mde_level']:.3g}, the observed sd) is {mde:.3f}; a smaller one may exist"
        if np.isfinite(mde)
        else "minimum detectable effect unknown"
    )
    text = f"{head}: no significant difference, {ci}; {tests}; {power_text}."
    if row.get("equivalence") == stats.EQUIVALENT:
        text += (
            f" Equivalent within ±{row['equivalence_margin']:.3f} by TOST "
            f"(Holm p {_p(row['tost_p_adjusted'])})."
        )
    elif row.get("equivalence") == stats.NOT_EQUIVALENT:
        text += f" Not shown equivalent within ±{row['equivalence_margin']:.3f} (TOST)."
    return text


def findings(primary: pd.DataFrame) -> list[str]:
    """Bullets: a count, then one sentence per primary comparison (significant ones first)."""
    if primary.empty:
        return ["No comparison of the primary family could be computed (see below)."]
    keys = condition_columns(primary, (*TRAIN_KEYS, *TEST_KEYS))
    if primary["method"].nunique() > 1 if "method" in primary.columns else False:
        keys = [*keys, "method"]
    significant = int((primary["verdict"] == stats.SIGNIFICANT).sum())
    untested = int((primary["verdict"] == stats.NOT_TESTED).sum())
    lines = [
        f"{significant} of {len(primary)} comparisons in the primary family are significant "
        f"(Holm over the whole family, alpha = {primary['alpha'].iloc[0]})"
        + (
            f"; {untested} are not tested because their train condition did not pass the "
            "training-accuracy gate (they keep their place in the family)."
            if untested
            else "."
        )
    ]
    order = primary.assign(_s=primary["verdict"] != stats.SIGNIFICANT)
    order = order.sort_values(["_s", "comparison"], kind="stable")
    lines += [finding(row, keys) for _, row in order.iterrows()]
    return lines


def collapse_findings(collapse: pd.DataFrame) -> list[str]:
    """One sentence per pair of norms whose runs collapsed (Fisher's exact test, Holm over the
    collapse family); a non-significant result is stated with the power it had, never as
    "no difference"."""
    lines = []
    if collapse.empty:
        return lines
    for _, row in collapse.iterrows():
        if row["collapse_verdict"] in (stats.NO_COLLAPSE, stats.INSUFFICIENT, stats.NOT_TESTED):
            continue
        where = f"train bs {row['train_batch_size']}"
        counts = (
            f"{row['a']} {row['collapsed_a']} seeds collapsed (near chance) or under the"
            " training gate"
            + (f" ({row['collapsed_seeds_a']})" if row["collapsed_seeds_a"] else "")
            + f", {row['b']} {row['collapsed_b']}"
            + (f" ({row['collapsed_seeds_b']})" if row["collapsed_seeds_b"] else "")
        )
        test = f"{row['collapse_test']}, Holm p {_p(row['collapse_p_adjusted'])}"
        if row["collapse_verdict"] == stats.SIGNIFICANT:
            lines.append(
                f"**{row['collapses_more']} collapses significantly more often** ({where}): "
                f"{counts}; {test}."
            )
            continue
        rate = row["collapse_detectable_rate"]
        power = (
            f"this test tells a collapse rate of {rate:.0%} from 0% with 80% power"
            if np.isfinite(rate)
            else "no collapse rate is detectable at this n"
        )
        lines.append(
            f"**Collapse, {row['a']} vs {row['b']}** ({where}): {counts}; {test}, not "
            f"significant: {power} (0% vs 50%: power {row['collapse_power_0_vs_50']:.0%}), so "
            "this is no evidence that the rates are equal."
        )
    return lines
