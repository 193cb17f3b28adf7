"""Render a computed :class:`~normzoo.report.Report` as markdown (no computation here)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from normzoo import stats
from normzoo.report.model import Report
from normzoo.report.select import TEST_KEYS, TRAIN_KEYS
from normzoo.report.tables import (
    collapse_display,
    condition_columns,
    display,
    markdown_table,
    tuning_pivot,
    verdict_summary,
)


def _method_section(report: Report) -> list[str]:
    spec = report.spec
    family = (
        "declared in the config's `stats.primary`"
        if report.declared
        else f"not declared in the config; the default is every norm vs `{report.reference}` "
        "at every train condition on clean i.i.d. test batches of the largest size"
    )
    margin = (
        f'Equivalence ("as good as") is claimed only by TOST against the declared margin '
        f"±{spec.equivalence_margin} (Holm-adjusted)."
        if spec.equivalence_margin
        else "No equivalence margin is declared, so no comparison is ever called equivalent; a "
        "non-significant result is reported with its minimum detectable effect (MDE: the "
        "smallest true difference the test finds with 80% power at alpha / family size and the "
        "observed sd); a smaller difference may exist."
    )
    conv = report.convergence
    gate = (
        f"A train condition is trained when its best norm's mean training accuracy (eval mode, "
        f"fixed training subset) reaches the gate {spec.gate:g}; comparisons in an untrained "
        f"condition stay in the family as `{stats.NOT_TESTED}`, so the family never shrinks."
        if conv is not None and conv.gate_applied
        else "This store records no training accuracy: no convergence gate is applied."
    )
    collapse = (
        f"A run collapsed when its test accuracy (clean default slice) is within "
        f"{spec.collapse_margin:g} of chance (1 / classes; classes from "
        f"{conv.chance_source})"
        + (f" or its training accuracy stays under {spec.gate:g}" if conv.gate_applied else "")
        + ". Collapse is its own outcome: per train condition and pair of norms, the collapsed "
        "seeds are compared by Fisher's exact test (Holm over those pairs, a family of its "
        "own), shown with its power."
        if conv is not None
        else ""
    )
    return [
        "## How differences are decided",
        "",
        "- Pairs are seeds: the same seed trained with two norms (stats-mode comparisons pair "
        "evaluations of the same trained run). n = pairs.",
        f"- Primary family ({family}): {', '.join(f'`{c}`' for c in report.primary_labels)}, "
        f"expanded over conditions to {len(report.primary)} comparisons. Holm corrects over "
        f"the whole family at alpha = {spec.alpha}. Only this family is used for the findings.",
        f"- Primary test: two-sided {stats.PRIMARY_TEST}. Interval: the paired t-interval "
        "(df = n - 1) at the level Holm tests the comparison at (shown in brackets; at least "
        "95%), so an interval excludes 0 exactly when the verdict is `significant`.",
        "- Estimand of the accuracy comparison: the "
        + (
            "mean paired difference over the seeds where neither run collapsed (collapsed seeds "
            "are counted in the collapse comparison instead)."
            if conv is not None
            else "mean paired difference over all seeds."
        ),
        f"- {gate}",
        *([f"- {collapse}"] if collapse else []),
        "- The intervals cover seed-to-seed (training) variance on one fixed test set: they say "
        "how much another training seed would move the result, not how the accuracy would "
        "change on another test set or dataset. A paper's number lies outside them for many "
        "reasons (data, model, schedule) and is compared by direction and size only.",
        f"- Robustness: the exact {stats.ROBUSTNESS_TEST} of the mean difference (all 2^n sign "
        "patterns; smallest p = 2/2^n, e.g. 0.0625 at n = 5) and the Wilcoxon signed-rank test "
        "(exact null with ties), both Holm-adjusted; Wilcoxon is `underpowered` when even its "
        "smallest p, Holm-adjusted, cannot reach alpha.",
        f"- n < {stats.MIN_SEEDS}: `{stats.INSUFFICIENT}`; all paired differences equal: "
        f"`{stats.DEGENERATE}` (no p-value, no effect size).",
        f"- {margin}",
        "- Effect size: Cohen's d_z; `seeds a > b`: the share of seeds on which a beats b "
        "(paired sign proportion, ties 1/2; not rliable's probability of improvement).",
        "- Everything outside the primary family is exploratory: each table has its own Holm "
        "correction and none of it enters the findings.",
        "",
    ]


def _primary_section(report: Report) -> list[str]:
    lines = ["## Primary family", ""]
    if report.primary_missing:
        lines += [
            "Declared but absent from the data: "
            + ", ".join(f"`{c}`" for c in report.primary_missing),
            "",
        ]
    if report.primary.empty:
        return lines + ["No primary comparison could be computed.", ""]
    keys = condition_columns(report.primary, (*TRAIN_KEYS, *TEST_KEYS))
    if "method" in report.primary.columns and report.primary["method"].nunique() > 1:
        keys = [*keys, "method"]
    if report.merged.get("primary"):
        lines += [
            f"{report.merged['primary']} declared members repeated another member's "
            "computations (same `computed_as` on both sides) and were merged into it.",
            "",
        ]
    lines += [markdown_table(display(report.primary, keys)), ""]
    if not report.collapse.empty:
        train = condition_columns(report.collapse, TRAIN_KEYS)
        lines += [
            "Collapse beside accuracy: the same pairs of norms per train condition, collapsed "
            "seeds compared by Fisher's exact test, Holm over these "
            f"{len(report.collapse)} pairs (full table: `collapse_primary.csv`). A "
            "non-significant row is not evidence of equal collapse rates: see its power.",
            "",
            markdown_table(collapse_display(report.collapse, train)),
            "",
        ]
    return lines


def _collapse_power_lines(report: Report) -> list[str]:
    """What the collapse comparison can see at this n: exact power of Fisher's test."""
    if report.collapse.empty:
        return []
    n = int(report.collapse["collapsed_a"].str.split("/").str[1].astype(int).min())
    m, alpha = len(report.collapse), report.spec.alpha
    rows = [
        {
            "collapse rates": f"0% vs {rate:.0%}",
            "power, one test": f"{stats.collapse_power(0.0, rate, n, n, alpha):.0%}",
            f"power, Holm over {m}": f"{stats.collapse_power(0.0, rate, n, n, alpha, m):.0%}",
        }
        for rate in (0.2, 0.5, 1.0)
    ]
    return [
        f"What the collapse comparison can see with n = {n} seeds per norm (Fisher's exact "
        f"test at alpha = {alpha}; exact enumeration; with Holm: the level of its first step, a "
        f"lower bound). A norm that collapses on 20% of seeds shows at least one collapse in "
        f"{n} seeds with probability {stats.chance_to_see_collapse(0.2, n):.0%}.",
        "",
        markdown_table(pd.DataFrame(rows)),
        "",
    ]


def _convergence_section(report: Report) -> list[str]:
    conv = report.convergence
    if conv is None:
        return []
    lines = ["## Convergence and collapsed runs", ""]
    if not conv.gate_applied:
        lines += [
            "No training accuracy in this store (runs older than the convergence contract): "
            "no gate is applied and collapse is judged by test accuracy alone.",
            "",
        ]
    else:
        shown = conv.conditions.assign(
            trained=conv.conditions["trained"].map({True: "yes", False: "**no**"})
        )
        keys = condition_columns(shown, TRAIN_KEYS)
        columns = [*keys, "best_norm", "best_train_accuracy", "trained", "under_gate"]
        lines += [
            f"Gate: the best norm's mean training accuracy reaches {conv.gate:g}.",
            "",
            markdown_table(shown[columns].rename(columns={"under_gate": "norms under gate"})),
            "",
        ]
    lines += _collapse_power_lines(report)
    cells = conv.cells
    keys = condition_columns(cells, TRAIN_KEYS)
    columns = [*keys, "method", "runs", "train_accuracy"]
    if cells["train_accuracy_train_mode"].notna().any():
        columns.append("train_accuracy_train_mode")
    columns += ["test_accuracy", "collapsed", "collapsed_seeds"]
    lines += [
        f"Per cell (mean over seeds; test accuracy on the clean default slice; a run collapsed "
        f"at test accuracy <= chance + {conv.margin:g}"
        + (f" or training accuracy < {conv.gate:g}" if conv.gate_applied else "")
        + "; full per-run table: `convergence_runs.csv`):",
        "",
        markdown_table(cells[columns]),
        "",
    ]
    return lines


def _tuning_section(report: Report) -> list[str]:
    tuning = report.tuning
    if tuning.empty:
        return []
    seeds = int(tuning["seeds"].max())
    failed = int(tuning["failed"].sum())
    return [
        "## Learning-rate selection",
        "",
        "Each cell (norm, train batch size, composition) tried the same declared grid, extended "
        "by one step beyond an edge when the best value sat there, on "
        f"{seeds} tuning seed(s) that are never compared and never tested; the rate with the "
        "highest mean validation accuracy was selected (ties to the smaller rate) and every "
        "compared run of the cell trains with it. Entries: mean validation accuracy (mean "
        "training accuracy), the selected rate in bold"
        + (f"; {failed} tuning run(s) failed or diverged and score 0" if failed else "")
        + ". How much a norm's accuracy moves across this grid is itself a finding: the "
        "comparisons above hold at the selected rates only.",
        "",
        markdown_table(tuning_pivot(tuning)),
        "",
        *_edge_lines(tuning),
    ]


def _edge_lines(tuning: pd.DataFrame) -> list[str]:
    """Cells whose selected rate is still an edge of what they tried: extensions ran out, so a
    better rate may lie beyond (said, not hidden)."""
    edges = []
    for (norm, b, composition), cell in tuning.groupby(
        ["norm", "train_batch_size", "train_composition"], sort=False
    ):
        chosen = cell.loc[cell["selected"], "lr"]
        if len(cell) > 1 and len(chosen) and chosen.iloc[0] in (cell["lr"].min(), cell["lr"].max()):
            edges.append(f"{norm} at train bs {b} ({composition}): {chosen.iloc[0]:g}")
    if not edges:
        return []
    return [
        "Selected at an edge of the grid after the allowed extensions (a better rate may lie "
        "beyond it): " + "; ".join(edges) + ".",
        "",
    ]


def _calibration_section(report: Report) -> list[str]:
    table = report.calibration
    if table.empty:
        return []
    shown = table.assign(
        **{c: table[c].map(lambda v: f"{v:.3f}") for c in ("accuracy", "nll", "ece")}
    )
    return [
        "## Calibration beside accuracy (exploratory)",
        "",
        "Mean over seeds of accuracy, negative log-likelihood (NLL, nats per sample) and "
        "expected calibration error (ECE: 15 equal-width confidence bins) on i.i.d. test "
        "batches at the largest train batch size, per norm, test batch size, statistics mode "
        "and shift (full table: `calibration.csv`). Test-time statistics change confidence as "
        "well as accuracy: a mode can raise accuracy and still leave the model over-confident. "
        "No test is run on these columns.",
        "",
        markdown_table(shown),
        "",
    ]


def _exploratory_section(report: Report) -> list[str]:
    lines = ["## Exploratory comparisons (not part of the findings)", ""]
    if not report.exploratory and not report.constant_modes:
        return lines + ["None beyond the primary family.", ""]
    vs = report.exploratory.get("vs_reference")
    if vs is not None:
        lines += [
            f"### Each norm vs `{report.reference}` at every other condition",
            "",
            f"{len(vs)} comparisons, one Holm family (full table: "
            "`significance_vs_reference.csv`)" + _merged_note(report, "vs_reference") + ":",
            "",
            markdown_table(verdict_summary(vs, ["a", "b"])),
            "",
        ]
    pairs = report.exploratory.get("all_pairs")
    if pairs is not None:
        lines += [
            "### All other pairs at the headline clean condition",
            "",
            f"{len(pairs)} comparisons, one Holm family:",
            "",
            markdown_table(display(pairs, condition_columns(pairs, TRAIN_KEYS))),
            "",
        ]
    modes = report.exploratory.get("stats_modes")
    if modes is not None or report.constant_modes:
        lines += ["### Test-time statistics modes vs `running` (same trained runs)", ""]
        if report.constant_modes:
            lines += [
                "Accuracy identical under every mode (no batch statistics): "
                f"{', '.join(report.constant_modes)}.",
                "",
            ]
        if modes is not None:
            lines += [
                f"{len(modes)} comparisons, one Holm family (full table: "
                "`significance_stats_modes.csv`):",
                "",
                markdown_table(
                    verdict_summary(modes, ["method", "a"]).rename(columns={"a": "stats mode"})
                ),
                "",
            ]
    return lines


def _merged_note(report: Report, name: str) -> str:
    count = report.merged.get(name, 0)
    if not count:
        return ""
    return (
        f"; {count} further test conditions repeated the computations of a listed or primary "
        "comparison (same `computed_as` on both sides) and were merged into it, not counted twice"
    )


def _ranks_section(report: Report) -> list[str]:
    ranks = report.ranks
    if ranks is None:
        return []
    result = ranks.result
    table = pd.DataFrame({"norm": result.names, "average rank": result.average_ranks})
    if result.independent_blocks:
        posthoc = (
            f"Nemenyi CD = {result.critical_difference:.2f} at alpha = {result.alpha}."
            if result.posthoc
            else f"With {result.n} blocks Nemenyi's asymptotic CD "
            f"({result.critical_difference:.2f}) does not hold its level: no pairwise verdict."
        )
        test = (
            f"{result.test}: chi2 = {result.chi2:.2f}, F = {result.f_statistic:.2f}, "
            f"p {_p(result.pvalue)} ({result.method}) -> {result.verdict}. {posthoc}"
        )
    else:
        test = (
            "The blocks share trained models, so they are not independent replications: the "
            f"ranks and the CD ({result.critical_difference:.2f}) are descriptive, no test "
            "verdict is given."
        )
    merged = (
        f" {ranks.duplicates} test conditions that repeated another condition's computations "
        "(same `computed_as` for every norm) were merged."
        if ranks.duplicates
        else ""
    )
    return [
        "## Ranks (Friedman + Nemenyi, Demšar 2006)",
        "",
        f"Blocks: {ranks.used} {ranks.blocks}; {ranks.dropped} incomplete blocks left out; "
        f"each norm with running statistics (or its only mode), ranked by mean accuracy "
        f"(1 = best, ties averaged).{merged} {test}",
        "",
        markdown_table(table.sort_values("average rank")),
        "",
        "![critical_difference](critical_difference.png)",
        "",
    ]


def _p(p: float) -> str:
    return "n/a" if p != p else ("< 0.0001" if p < 1e-4 else f"= {p:.3g}")


def render_markdown(report: Report, figures: dict[str, str]) -> str:
    """The report's markdown; ``figures`` maps figure names to file names."""
    lines = [f"# {report.title}", ""]
    if report.command:
        lines += [f"Produced by: `{report.command}`", ""]
    counts = report.run_counts
    lines += [
        "## Runs",
        "",
        f"{counts['total']} training runs: {counts['ok']} ok, {counts['failed']} failed, "
        f"{counts['diverged']} diverged. Failed and diverged runs are excluded from every "
        "statistic below; their seeds are missing from the pairs they belong to.",
        "",
    ]
    if not report.failed.empty:
        lines += ["### Failed and diverged runs", "", markdown_table(report.failed), ""]
    if report.limits:
        lines += ["### What this report cannot compute", ""]
        lines += [f"- {limit}" for limit in report.limits] + [""]
    if not report.methods:
        lines += ["No finished evaluations: nothing to compare.", ""]
        return "\n".join(lines) + "\n"
    lines += [
        f"Norms: {', '.join(report.methods)}. Seeds per norm: "
        + ", ".join(f"{m} {n}" for m, n in report.seeds.items())
        + f". {report.test_conditions} test conditions.",
        "",
    ]
    lines += _method_section(report)
    lines += ["## What we found", "", *[f"- {f}" for f in report.findings], ""]
    lines += _primary_section(report)
    lines += _convergence_section(report)
    lines += _tuning_section(report)
    lines += [
        "## Headline",
        "",
        "Accuracy, mean ± 95% Student-t CI half-width over seeds. Clean i.i.d. test batches "
        "of the largest test batch size with running statistics (a norm without a "
        "`running` mode uses its only mode) unless the column says otherwise; columns "
        "without a train batch size use the largest one.",
        "",
        markdown_table(report.headline.reset_index()),
        "",
    ]
    curves = [k for k in figures if k != "critical_difference"]
    if curves:
        lines += ["## Plots", ""] + [f"![{k}]({figures[k]})\n" for k in curves]
    lines += _exploratory_section(report)
    lines += _calibration_section(report)
    lines += _ranks_section(report)
    return "\n".join(lines) + "\n"


def replace_between(text: str, begin: str, end: str, block: str) -> str:
    """``text`` with everything from the ``begin`` marker to the ``end`` marker replaced by
    ``block`` (which carries the markers again): how scripts regenerate a part of the README."""
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise ValueError(f"no {begin!r} ... {end!r} block to replace; add the two markers first")
    return text[:start] + block + text[stop + len(end) :]


def write_block(path: Path, begin: str, end: str, block: str) -> None:
    """Replace the ``begin`` ... ``end`` block of the file at ``path`` by ``block`` (which
    carries the markers again), or append ``block`` where the file has none (or is missing):
    how a benchmark writes its section of a shared report and keeps the rest."""
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        text = replace_between(text, begin, end, block.rstrip("\n"))
    else:
        text = text + "\n" + block
    path.write_text(text)


MARKED_BLOCK = re.compile(r"<!-- (\w[\w-]*):start -->.*?<!-- \1:end -->", re.S)


def marked_blocks(text: str) -> list[str]:
    """The ``<!-- name:start --> ... <!-- name:end -->`` blocks of ``text``, in order: the
    sections other scripts wrote into a report that its main script rewrites."""
    return [m.group(0) for m in MARKED_BLOCK.finditer(text)]
