"""The report of ``normzoo evaluate``: one checkpoint's test-time analysis, headline first.

`interval_rows` turns the per-sample outcomes of `normzoo.bench.evaluate_checkpoint` into one row
per test condition with intervals from the test set (one checkpoint has no seed variance): a
cluster bootstrap (`normzoo.stats.cluster_bootstrap`) over test images, whole test batches where
the prediction depends on the batch, and paired: a difference to a reference condition is
bootstrapped over the per-sample differences on the same test images. References: ``running``
statistics at the largest test batch size on clean i.i.d. batches (what was lost), and
``running`` on the same shift (what a test-time method recovers); both are per-sample, so any
batching pairs with them. `write_checkpoint_report` writes ``evaluate.csv`` (every row),
``evaluate.json`` (provenance: the checkpoint's SHA-256 before and after, model, data,
versions, command) and ``report.md``, whose first lines answer: how much accuracy is lost at
test batch 1, under each shift and on skewed batches, and which test-time statistics recover
most, each with its interval. Every sentence is generated from the rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from normzoo.bench.evaluate_checkpoint import Outcome, Skipped
from normzoo.bench.plan.schema import CLEAN
from normzoo.stats import BootstrapInterval, cluster_bootstrap

CSV_NAME, JSON_NAME, REPORT_NAME = "evaluate.csv", "evaluate.json", "report.md"


def _correct_by_sample(outcome: Outcome, n_images: int) -> np.ndarray:
    values = np.full(n_images, np.nan)
    values[outcome.sample] = outcome.correct
    return values


def interval_rows(
    outcomes: list[Outcome | Skipped],
    n_images: int,
    resamples: int,
    seed: int,
    confidence_level: float = 0.95,
) -> list[dict]:
    """One row per condition: accuracy, NLL, ECE, and bootstrap intervals of the accuracy and
    of its paired differences to the clean reference and to running statistics on the same
    shift (the module docstring)."""
    skipped = [o for o in outcomes if isinstance(o, Skipped)]
    outcomes = [o for o in outcomes if isinstance(o, Outcome)]
    largest = max(o.condition.test_batch_size for o in outcomes)
    references = {
        (o.condition.shift, o.condition.severity): _correct_by_sample(o, n_images)
        for o in outcomes
        if o.stats_mode == "running"
        and o.condition.composition.name == "iid"
        and o.condition.test_batch_size == largest
    }
    clean = references.get((CLEAN, 0))
    rows = []
    for o in outcomes:
        boot = dict(resamples=resamples, seed=seed, confidence_level=confidence_level)
        accuracy = cluster_bootstrap(o.correct.astype(float), o.cluster, **boot)
        row = {
            **o.condition.columns(),
            "stats_mode": o.stats_mode,
            "accuracy": accuracy.estimate,
            **_bounds("accuracy", accuracy),
            "loss": float(o.loss.mean()),
            "ece": o.ece,
            "n_test": int(o.correct.size),
            "clusters": accuracy.clusters,
            "computed_as": o.computed_as,
        }
        same_shift = references.get((o.condition.shift, o.condition.severity))
        for name, reference in (("vs_clean", clean), ("vs_running_same_shift", same_shift)):
            diff = None
            if reference is not None:
                values = o.correct - reference[o.sample]
                diff = cluster_bootstrap(values, o.cluster, **boot)
            row[f"diff_{name}"] = diff.estimate if diff else float("nan")
            row.update(_bounds(f"diff_{name}", diff))
        rows.append({**row, "skipped": ""})
    for o in skipped:
        rows.append({**o.condition.columns(), "stats_mode": o.stats_mode, "skipped": o.reason})
    return rows


def _bounds(name: str, interval: BootstrapInterval | None) -> dict:
    if interval is None:
        return {f"{name}_low": float("nan"), f"{name}_high": float("nan")}
    return {f"{name}_low": interval.low, f"{name}_high": interval.high}


def _points(value: float, low: float, high: float) -> str:
    """A difference in accuracy points with its interval: ``-12.3 pts [-14.0, -10.6]``."""
    if pd.isna(value):
        return "n/a"
    return f"{100 * value:+.1f} pts [{100 * low:+.1f}, {100 * high:+.1f}]"


def _accuracy(row) -> str:
    return f"{row['accuracy']:.3f} [{row['accuracy_low']:.3f}, {row['accuracy_high']:.3f}]"


def _condition(row) -> str:
    shift = row["shift"] if row["shift"] == CLEAN else f"{row['shift']}-{row['severity']}"
    where = f"({shift}, {row['test_composition']})"
    return f"{row['stats_mode']} at test batch {row['test_batch_size']} {where}"


def _lost(row) -> str:
    return _points(row["diff_vs_clean"], row["diff_vs_clean_low"], row["diff_vs_clean_high"])


def _recovered(row) -> str:
    return _points(
        row["diff_vs_running_same_shift"],
        row["diff_vs_running_same_shift_low"],
        row["diff_vs_running_same_shift_high"],
    )


def headline(frame: pd.DataFrame) -> list[str]:
    """The answers, one markdown bullet each, generated from the rows."""
    skipped = frame[frame.skipped.fillna("") != ""]
    frame = frame[frame.skipped.fillna("") == ""]
    largest, smallest = frame.test_batch_size.max(), frame.test_batch_size.min()
    iid = frame[frame.test_composition == "iid"]
    reference = iid[
        (iid.stats_mode == "running") & (iid["shift"] == CLEAN) & (iid.test_batch_size == largest)
    ]
    lines = []
    if len(reference):
        ref = reference.iloc[0]
        lines.append(
            f"- **Reference**: running statistics at test batch {largest}, clean i.i.d. batches:"
            f" accuracy {_accuracy(ref)}, n = {int(ref['n_test'])} test images."
        )
    small = iid[(iid["shift"] == CLEAN) & (iid.test_batch_size == smallest)]
    if len(small):
        parts = [f"{r['stats_mode']} {_lost(r)}" for _, r in small.iterrows()]
        best = small.loc[small.accuracy.idxmax()]
        lines.append(
            f"- **Test batch {smallest}** (clean), accuracy vs the reference: {'; '.join(parts)}."
            f" Best: {best['stats_mode']} ({best['accuracy']:.3f})."
        )
    shifted = iid[iid["shift"] != CLEAN]
    for (shift, severity), group in shifted.groupby(["shift", "severity"], sort=False):
        running = group[(group.stats_mode == "running") & (group.test_batch_size == largest)]
        lost = f"running statistics {_lost(running.iloc[0])}" if len(running) else "no running row"
        best = group.loc[group.diff_vs_running_same_shift.fillna(-1).idxmax()]
        lines.append(
            f"- **{shift}-{severity}**: {lost} vs clean; recovered most by"
            f" {best['stats_mode']} at test batch {best['test_batch_size']}: {_recovered(best)} vs"
            f" running on {shift}-{severity} (accuracy {_accuracy(best)})."
        )
    batched = frame[(frame.test_composition != "iid") & (frame.test_batch_size > 1)]
    for composition, group in batched.groupby("test_composition", sort=False):
        clean = group[group["shift"] == CLEAN]
        if clean.empty:
            continue
        worst = clean.loc[clean.diff_vs_clean.idxmin()]
        best = clean.loc[clean.accuracy.idxmax()]
        lines.append(
            f"- **{composition} batches** (clean): worst {_condition(worst)} {_lost(worst)};"
            f" best {best['stats_mode']} at test batch {best['test_batch_size']} {_lost(best)}"
            " vs the reference."
        )
    if not shifted.empty:
        wins = shifted.loc[
            shifted.groupby(["shift", "severity"]).diff_vs_running_same_shift.idxmax()
        ].stats_mode.value_counts()
        counts = ", ".join(f"{mode} {n}" for mode, n in wins.items())
        lines.append(
            f"- **Recovers most under shift**: {wins.index[0]} (best on {wins.iloc[0]} of"
            f" {wins.sum()} shifts; all: {counts})."
        )
    if len(skipped):
        names = ", ".join(_condition(r) for _, r in skipped.iterrows())
        reasons = "; ".join(dict.fromkeys(r.split(". ")[0] for r in skipped.skipped))
        lines.append(f"- **Not computable** ({len(skipped)}): {names}: {reasons}.")
    return lines


def _table(frame: pd.DataFrame) -> str:
    header = (
        "| test batch | stats mode | shift | composition | accuracy [95% CI] | vs reference |"
        " vs running, same shift | clusters |\n|---:|---|---|---|---|---|---|---:|"
    )
    lines = [header]
    for _, r in frame[frame.skipped.fillna("") == ""].iterrows():
        shift = r["shift"] if r["shift"] == CLEAN else f"{r['shift']}-{r['severity']}"
        lines.append(
            f"| {r['test_batch_size']} | {r['stats_mode']} | {shift} | {r['test_composition']} |"
            f" {_accuracy(r)} | {_lost(r)} | {_recovered(r)} | {r['clusters']} |"
        )
    return "\n".join(lines)


def write_checkpoint_report(rows: list[dict], provenance: dict, out_dir: str | Path) -> Path:
    """Write ``evaluate.csv``, ``evaluate.json`` and ``report.md`` into ``out_dir``; returns
    the report's path."""
    checkpoint, model = Path(provenance["checkpoint"]).name, provenance["model"]
    title = f"normzoo evaluate: {checkpoint} ({model}) on {provenance['dataset']}"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(out_dir / CSV_NAME, index=False)
    (out_dir / JSON_NAME).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    resamples = provenance["bootstrap_resamples"]
    same = provenance["sha256_before"] == provenance["sha256_after"]
    text = "\n".join(
        [
            f"# {title}",
            "",
            *headline(frame),
            "",
            f"Intervals: 95% cluster bootstrap over test images ({resamples} resamples, expanded"
            " percentile, Hesterberg 2015): whole test batches are resampled where a prediction"
            " depends on its batch; differences are paired on the same test images. They cover"
            " test-set sampling only (one checkpoint, no seed-to-seed variance). 'Best' and"
            " 'recovered most' pick by point estimate, with no correction for the selection.",
            "",
            f"Checkpoint `{provenance['checkpoint']}`, SHA-256 before"
            f" `{provenance['sha256_before']}`, after `{provenance['sha256_after']}`"
            f" ({'unchanged' if same else 'CHANGED: the results are void'});"
            f" model `{provenance['model']}` (norm {provenance['norm']},"
            f" {provenance['converted_batch_layers']} torch batch norm layers converted);"
            f" data `{provenance['dataset']}`; nothing was trained.",
            "",
            f"Command: `{provenance['command']}`",
            "",
            "## All conditions",
            "",
            _table(frame),
            "",
        ]
    )
    path = out_dir / REPORT_NAME
    path.write_text(text)
    return path
