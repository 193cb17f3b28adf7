"""Regenerate the committed studies ``reports/study_*.md`` from their committed per-seed data.

    python benchmarks/study_reports.py [--runs runs] [--out reports] [STUDY ...]

Each study's per-seed results live in ``<out>/<study>/data/`` as CSVs: ``runs.csv`` (every
compared and tuning run: learning rate, status, validation and training accuracy, timings,
provenance), ``evaluations.csv`` (every evaluation row) and ``curves.csv`` (every logged training
and validation curve point). When ``<runs>/<study>/results.sqlite`` exists, its runs of the study
are first merged into those CSVs by run key (a key already committed is kept, never duplicated),
so a study run in seed shards across sessions (``--set train.seeds=[...]``, each shard committed
when it ends) accumulates there. The report is then built from the CSVs alone: load the config
(``configs/<study>.yaml``, which declares the primary family), select its runs by key (the
tuning runs its learning-rate grid calls for, the compared runs at the rates they selected),
build the report, and write ``<out>/<study>.md`` (setup, the generated findings, a like-with-like
comparison with the paper's numbers, the generated report) with its figures in
``<out>/<study>/``. Every number comes from the data; the paper numbers are quoted from the papers
(sources named in the text).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from normzoo import stats
from normzoo.bench.plan.config import Config, load_config
from normzoo.bench.plan.grid import expand_runs
from normzoo.bench.plan.tuning import plan_tuning, scores_from_runs, tuning_run_keys, tuning_table
from normzoo.bench.record.store import Store
from normzoo.report import build_report, replace_between
from normzoo.report.select import TEST_KEYS, TRAIN_KEYS

ROOT = Path(__file__).resolve().parents[1]

TITLES = {
    "study_batch_size": "Study (a): accuracy vs training batch size "
    "(the Group Normalization paper's question)",
    "study_renorm": "Study (b): batch renorm vs batch norm with small and non-i.i.d. training "
    "batches (the Batch Renormalization paper's question)",
    "study_shift": "Study (c): running vs batch vs mixed statistics under corruption and test "
    "batch size (Schneider et al. 2020)",
    "study_zoo": "Study (d): the whole zoo vs training batch size, FRN and EvoNorm against "
    "their papers' small-batch claims",
    "study_zoo_long": "Study (d'): FRN and EvoNorm-S0 vs batch and group norm with 5x the "
    "training budget",
}

# A committed run may shrink a config's grid with these overrides (the commands in the reports
# name them, and the report says what was declared and what ran); none does now.
OVERRIDES = {
    "study_batch_size": [],
    "study_renorm": [],
    "study_shift": [],
    "study_zoo": [],
    "study_zoo_long": [],
}

# Wu & He (2018), ResNet-50 on ImageNet, top-1 validation error (%). Table 2: batch size per GPU
# (8 GPUs); Table 1: the four norms at 32 images per GPU.
WU_HE_ERROR_BY_BATCH = {
    "batch": {32: 23.6, 16: 23.7, 8: 24.8, 4: 27.3, 2: 34.7},
    "group": {32: 24.1, 16: 24.2, 8: 24.0, 4: 24.2, 2: 24.1},
}
WU_HE_ERROR_AT_32 = {"batch": 23.6, "group": 24.1, "layer": 25.3, "instance": 28.4}


def _agreement(row: pd.Series, expected_sign: int) -> str:
    """How our verdict relates to the paper's direction (+1: a > b, -1: a < b, 0: no gap)."""
    verdict = row["verdict"]
    if verdict == stats.NOT_SIGNIFICANT and np.isfinite(row.get("mde", np.nan)):
        return (
            f"not significant (detectable with 80% power: {100 * row['mde']:.1f} points): no "
            "claim either way"
        )
    if verdict != stats.SIGNIFICANT:
        return f"{verdict}: no claim either way"
    sign = 1 if row["mean_difference"] > 0 else -1
    if expected_sign == 0:
        return "significant gap where the paper has about none"
    return "same direction, significant" if sign == expected_sign else "opposite, significant"


def _diff(row: pd.Series) -> str:
    if not np.isfinite(row["mean_difference"]):
        return "n/a"
    return (
        f"{100 * row['mean_difference']:+.1f} [{100 * row['ci_low']:+.1f}, "
        f"{100 * row['ci_high']:+.1f}]"
    )


def _collapse_cell(collapse: pd.DataFrame, row: pd.Series) -> str:
    """The collapse comparison of the same pair in the same train condition, in a few words."""
    if collapse.empty:
        return "–"
    match = collapse[
        (collapse["a"] == row["a"])
        & (collapse["b"] == row["b"])
        & (collapse["train_batch_size"] == row["train_batch_size"])
    ]
    if match.empty:
        return "–"
    c = match.iloc[0]
    text = f"{c['collapsed_a']} / {c['collapsed_b']} ({_p(c['collapse_p_adjusted'])})"
    if c["collapse_verdict"] == stats.SIGNIFICANT:
        text += f": {_short(c['collapses_more'])} collapses more"
    return text


def _p(p: float) -> str:
    return "–" if not np.isfinite(p) else ("< 0.0001" if p < 1e-4 else f"{p:.3g}")


def _short(method: str) -> str:
    """``group(groups=8)`` -> ``group``; options kept where they tell methods apart (ghost)."""
    return method if method.startswith("ghost_batch") else method.split("(")[0]


def _headline_means(report, column_prefix: str) -> pd.Series:
    table = report.headline
    column = next(c for c in table.columns if c.startswith(column_prefix))
    # "–": a norm not trained at that batch size (e.g. the decoupled arm's ghost batch norm)
    means = table[column].map(lambda cell: str(cell).split(" ")[0])
    return means[means != "–"].astype(float)


def _setting(config: Config) -> str:
    """The study's model, data and budget in words, from its config."""
    data, model, train = config.data, config.model, config.train
    options = data.options
    size = options.get("image_size", "?")
    widths = model.options.get("widths")
    backbone = model.backbone + (f" (widths {'-'.join(map(str, widths))})" if widths else "")
    return (
        f"{backbone}, {size}×{size} {data.dataset} images ({options.get('train_size', '?')} "
        f"train, 10 classes), {train.optimizer} with a cosine schedule and no warm-up, "
        f"{train.epochs} epochs on 2 CPU cores"
    )


def _smallest_map(config: Config, norm: str) -> int:
    """The fewest spatial positions any ``norm`` layer of the study's model normalizes over."""
    from normzoo.models import build_model

    model = build_model(config.model.backbone, norm, 10, 3, {}, **config.model.options)
    sizes = []
    hooks = [
        m.register_forward_hook(lambda _m, x, _y: sizes.append(x[0][0, 0].numel()))
        for m in model.modules()
        if type(m).__name__ == "FilterResponseNorm"
    ]
    size = config.data.options.get("image_size", 32)
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    for hook in hooks:
        hook.remove()
    return min(sizes) if sizes else 0


def _batch_size_comparison(result, config: Config, **_) -> list[str]:
    primary = result.tables.get("significance_primary", pd.DataFrame())
    lines = [
        "Wu & He (2018) report ResNet-50 top-1 *error* on ImageNet with 8 GPUs (batch size per "
        "GPU); we compare accuracy gaps in points (accuracy = 100 − error), per batch size, and "
        "the ranking at batch size 32 (their Table 1) with ours at 32.",
        "",
        "| train batch size | Wu & He GN − BN (Table 2) | ours GN − BN [CI] | Holm p | ours |",
        "|---|---|---|---|---|",
    ]
    group = primary[primary["a"].str.startswith("group")] if not primary.empty else primary
    for _, row in group.sort_values("train_batch_size").iterrows():
        size = int(row["train_batch_size"])
        paper = WU_HE_ERROR_BY_BATCH["batch"].get(size, np.nan) - WU_HE_ERROR_BY_BATCH["group"].get(
            size, np.nan
        )
        expected = 0 if abs(paper) < 1.0 else int(np.sign(paper))
        lines.append(
            f"| {size} | {paper:+.1f} | {_diff(row)} | {_p(row['p_adjusted'])} | "
            f"{_agreement(row, expected)} |"
        )
    layer = primary[primary["a"] == "layer"] if not primary.empty else primary
    for _, row in layer[layer["train_batch_size"] == 32].iterrows():
        paper = WU_HE_ERROR_AT_32["batch"] - WU_HE_ERROR_AT_32["layer"]
        lines.append(
            f"| 32 (LN − BN, Table 1) | {paper:+.1f} | {_diff(row)} | {_p(row['p_adjusted'])} | "
            f"{_agreement(row, int(np.sign(paper)))} |"
        )
    lines += ["", *_mean_accuracy_lines(result)]
    means = _headline_means(result.report, "clean, train bs 32")
    ours = " > ".join(
        f"{_short(m)} ({100 * v:.1f})" for m, v in means.sort_values(ascending=False).items()
    )
    paper = " > ".join(
        f"{k} ({100 - v:.1f})" for k, v in sorted(WU_HE_ERROR_AT_32.items(), key=lambda x: x[1])
    )
    lines += [
        "",
        f"Ranking by accuracy at train batch size 32: Wu & He (Table 1): {paper}; ours (mean "
        f"over seeds, %): {ours}. The ranking is descriptive: only the primary family's "
        "comparisons carry a verdict (the other pairs are in the exploratory table below).",
        "",
        'Gaps under 1 point in the paper are treated as "about none". Our setting '
        f"({_setting(config)}) differs from ResNet-50 on ImageNet, so only "
        "directions and rough sizes are comparable, and our intervals cover seed-to-seed "
        "variance on one fixed test set, not the difference between tasks.",
    ]
    return lines


def _mean_accuracy_lines(result) -> list[str]:
    """Mean clean accuracy of every norm at every train batch size, from the headline."""
    clean = {
        c.removeprefix("clean, train bs "): _headline_means(result.report, c)
        for c in result.report.headline.columns
        if c.startswith("clean, train bs ")
    }
    return [
        "Mean accuracy per train batch size (chance = 0.10): "
        + "; ".join(
            f"bs {size}: " + ", ".join(f"{_short(m)} {v:.2f}" for m, v in values.items())
            for size, values in clean.items()
        )
        + ". With the same number of epochs for every batch size, batch size 32 takes the "
        "fewest steps; where accuracies are near chance, gaps there say little about the norms."
    ]


# The papers' claims, as directions (+1: the new layer is better; None: no claim at that batch
# size). FRN (Singh & Krishnan 2020, abstract and Sec. 5; ResnetV2-50 / InceptionV3 on
# ImageNet): better than BN "for all batch sizes" (0.7-1.0 points at large batches) and more
# than 1 point better than GN at small batches. EvoNorm (Liu et al. 2020, Sec. 5 and Table 4,
# ResNet-50 / MobileNetV2 on ImageNet): S0 well above BN-ReLU at small batches (+7.8 / +7.3
# points in the small-batch regime) and above GN-ReLU; no claim that S0 beats BN at large batch.
SMALL_BATCH = 8  # ours: 2 and 8 are "small" (per-GPU terms of the papers), 32 is their standard
ZOO_CLAIMS = {
    ("filter_response", "batch"): {"small": 1, "large": 1},
    ("filter_response", "group"): {"small": 1, "large": 1},
    ("evonorm_s0", "batch"): {"small": 1, "large": None},
    ("evonorm_s0", "group"): {"small": 1, "large": 1},
}


def _last_epoch_train_accuracy(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.Series:
    """Mean over seeds of each run's last-epoch training accuracy, by (train batch size, norm),
    from the store's curves: how far training got in the budget."""
    acc = curves[curves["metric"] == "train/epoch_acc"]
    if acc.empty:
        return pd.Series(dtype=float)
    last = acc.loc[acc.groupby("run_key")["epoch"].idxmax()].merge(runs, on="run_key")
    return last.groupby(["train_batch_size", "norm"])["value"].mean()


def _zoo_comparison(result, config: Config, runs: pd.DataFrame, curves: pd.DataFrame) -> list[str]:
    primary = result.tables.get("significance_primary", pd.DataFrame())
    sizes = sorted(int(b) for b in primary["train_batch_size"].unique()) if len(primary) else []
    small = [b for b in sizes if b <= SMALL_BATCH]
    large = [b for b in sizes if b > SMALL_BATCH]
    lines = [
        "Singh & Krishnan (2020) report that FRN + TLU beats batch norm at every batch size "
        "(0.7-1.0 points at large batches) and group norm by more than 1 point at small "
        "batches (ResnetV2-50 and InceptionV3 on ImageNet). Liu et al. (2020) report that "
        "EvoNorm-S0 beats BN-ReLU by a wide margin at small batches (+7.8 points on ResNet-50, "
        "+7.3 on MobileNetV2, as the authors summarise their Table 4) and GN-ReLU, without "
        "claiming it beats batch norm at large batches. We test those directions with the "
        "same norms at train batch "
        + " and ".join(map(str, small))
        + (" (small)" if small else "")
        + (" and " if small and large else "")
        + " and ".join(map(str, large))
        + (" (the papers' standard per-GPU batch)" if large else "")
        + ":",
        "",
        "| comparison | train batch size | paper (direction) | ours a − b [CI] | Holm p | ours "
        "| collapsed a / b (Holm p) |",
        "|---|---|---|---|---|---|---|",
    ]
    collapse = result.tables.get("collapse_primary", pd.DataFrame())
    order = primary.sort_values(["a", "b", "train_batch_size"]) if not primary.empty else primary
    for _, row in order.iterrows():
        a, b = _short(row["a"]), _short(row["b"])
        size = int(row["train_batch_size"])
        claim = ZOO_CLAIMS[(a, b)]["small" if size <= SMALL_BATCH else "large"]
        if claim is None:
            paper, verdict = "no claim", f"{row['verdict']} (nothing to agree with)"
        else:
            paper, verdict = f"{a} better", _agreement(row, claim)
        lines.append(
            f"| {a} vs {b} | {size} | {paper} | {_diff(row)} | {_p(row['p_adjusted'])} | "
            f"{verdict} | {_collapse_cell(collapse, row)} |"
        )
    trained = _last_epoch_train_accuracy(runs, curves)
    lines += ["", *_mean_accuracy_lines(result)]
    if not trained.empty:
        parts = [
            f"bs {size}: " + ", ".join(f"{n} {v:.2f}" for n, v in trained[size].items())
            for size in trained.index.get_level_values(0).unique()
        ]
        (size, norm), lowest = trained.idxmin(), trained.min()
        if lowest >= 0.95:
            regime = (
                f"every norm fits the training set (at least {lowest:.2f}), so the gaps are in "
                "what the fitted models generalise, not in how far training got"
            )
        else:
            state = "far from fitting" if lowest < 0.8 else "close to, not at, fitting"
            regime = (
                f"the lowest, {norm} at train batch {size} ({lowest:.2f}), is {state} the "
                "training set, so part of a gap may be how fast a layer trains from its "
                "initialisation rather than where it ends"
            )
        lines += [
            "",
            "Training accuracy in the last epoch (mean over seeds, from the store's curves): "
            + "; ".join(parts)
            + f". In this budget {regime}.",
        ]
    exploratory = sorted(set(runs["norm"]) - {"batch", "group", "filter_response", "evonorm_s0"})
    lines += [
        "",
        f"Differences in accuracy points. Our setting ({_setting(config)}) differs from the "
        "papers' (ImageNet, 90 epochs), so only directions are compared; the intervals cover "
        "seed-to-seed variance on one fixed test set. FRN normalizes each channel of each "
        "sample by its mean square over the spatial positions: the smallest maps it sees here "
        f"hold {_smallest_map(config, 'filter_response')} values (ResNet-50's last stage on "
        "ImageNet has 7×7 = 49), and the paper's learned-eps option for small maps was not "
        "used (`learn_eps=False`)."
        + (
            f" Exploratory (tables below): {', '.join(exploratory)}"
            + (", and the corrupted test sets." if result.report.headline.shape[1] > 4 else ".")
            if exploratory
            else ""
        ),
    ]
    return lines


def _renorm_comparison(result, config: Config, **_) -> list[str]:
    primary = result.tables.get("significance_primary", pd.DataFrame())
    lines = [
        "Ioffe (2017, Sec. 4.2-4.3; Inception-v3 on ImageNet) reports that batch renorm "
        "improves on batch norm when training with microbatches of 4 and with non-i.i.d. "
        "minibatches, and matches it with i.i.d. minibatches of 32. His non-i.i.d. minibatches "
        "of 32 held 16 classes with 2 examples each; ours (`classes(k=2)`, the config's "
        "protocol) hold 2 classes with equal counts (2 examples each at batch 4, 16 at batch "
        "32), since 10 classes cannot hold 16 labels: a stronger skew at batch 32.",
        "",
        "| train batch size | composition | paper (direction) | ours BRN − BN [CI] | Holm p | "
        "ours |",
        "|---|---|---|---|---|---|",
    ]
    for _, row in primary.sort_values(["train_batch_size", "train_composition"]).iterrows():
        iid_large = row["train_composition"] == "iid" and int(row["train_batch_size"]) >= 32
        expected = 0 if iid_large else 1
        claim = "about equal" if expected == 0 else "BRN better"
        lines.append(
            f"| {row['train_batch_size']} | {row['train_composition']} | {claim} | {_diff(row)} "
            f"| {_p(row['p_adjusted'])} | {_agreement(row, expected)} |"
        )
    lines += [
        "",
        "Differences in accuracy points. The paper trains for hundreds of thousands of steps and "
        "ramps r_max/d_max over tens of thousands; our runs are a few hundred to a few thousand "
        f"steps with a ramp scaled to that length ({_setting(config)}), so agreement in "
        "direction is all we test.",
    ]
    return lines


def _shift_comparison(result, config: Config, **_) -> list[str]:
    primary = result.tables.get("significance_primary", pd.DataFrame())
    lines = [
        "Schneider et al. (2020) report that replacing the source (running) statistics by "
        "test-batch statistics improves the corruption accuracy of batch-normalized models "
        "when test batches are large, and that mixing source statistics as N = 16 "
        "pseudo-samples with the test batch's keeps a benefit at small test batches. Both "
        "claims are in our primary family (batch norm; group norm has no statistics to "
        "replace):",
        "",
        "| comparison | test batch size | corruption | severity | ours a − b [CI] | Holm p "
        "| ours |",
        "|---|---|---|---|---|---|---|",
    ]
    order = primary.sort_values(["a", "shift", "severity"])
    for _, row in order.iterrows():
        lines.append(
            f"| {row['a']} vs {row['b']} | {row['test_batch_size']} | {row['shift']} | "
            f"{row['severity']} | {_diff(row)} | {_p(row['p_adjusted'])} | "
            f"{_agreement(row, 1)} |"
        )
    lines += [
        "",
        'Differences in accuracy points; the paper\'s direction is "better than running" in '
        f"every row. Magnitudes are not comparable ({_setting(config)}; "
        "generated corruptions rather than ImageNet-C).",
    ]
    return lines


COMPARISONS = {
    "study_batch_size": _batch_size_comparison,
    "study_renorm": _renorm_comparison,
    "study_shift": _shift_comparison,
    "study_zoo": _zoo_comparison,
    "study_zoo_long": _zoo_comparison,
}


def _generated_body(text: str, figures_dir: str) -> list[str]:
    """The generated report from 'How differences are decided' on, headings one level down."""
    body = text[text.index("## How differences are decided") :]
    body = body.replace("](", f"]({figures_dir}/")
    for table in ("significance_", "collapse_", "convergence_"):
        body = body.replace(f"`{table}", f"`{figures_dir}/{table}")
    return [("#" + line if line.startswith("#") else line) for line in body.splitlines()]


def readme_markers(study: str) -> tuple[str, str]:
    """The README markers around a study's generated summary."""
    return (
        f"<!-- BEGIN {study}: generated by benchmarks/study_reports.py -->",
        f"<!-- END {study} -->",
    )


def readme_summary(study: str, report) -> str:
    """A study's README bullet: its declared family and what survived, from the verdicts."""
    primary = report.primary
    begin, end = readme_markers(study)
    significant = primary[primary["verdict"] == stats.SIGNIFICANT] if not primary.empty else primary
    untested = int((primary["verdict"] == stats.NOT_TESTED).sum()) if not primary.empty else 0
    short = int((primary["verdict"] == stats.INSUFFICIENT).sum()) if not primary.empty else 0
    collapse = ""
    if not report.collapse.empty:
        tested = report.collapse[report.collapse["collapse_verdict"] != "no run collapsed"]
        hits = int((report.collapse["collapse_verdict"] == stats.SIGNIFICANT).sum())
        collapse = (
            f"; collapse rates (Fisher, Holm over {len(report.collapse)} pairs): "
            f"{hits} significant of {len(tested)} with a collapsed run"
        )
    keys = [k for k in (*TRAIN_KEYS, *TEST_KEYS) if k in primary and primary[k].nunique() > 1]
    survived = [
        f"{row['a']} vs {row['b']} ({', '.join(f'{k} {row[k]}' for k in keys)}): "
        f"{100 * row['mean_difference']:+.1f} points"
        for _, row in significant.iterrows()
    ]
    text = (
        f"- [{TITLES[study]}](reports/{study}.md). Primary family: "
        + ", ".join(f"`{label}`" for label in report.primary_labels)
        + f" ({len(primary)} comparisons, Holm at alpha = {report.spec.alpha}); "
        f"{len(significant)} significant"
        + (f", {untested} not tested (untrained condition)" if untested else "")
        + (": " + "; ".join(survived) if survived else "")
        + (f"; {short} insufficient data (collapsed seeds left out)" if short else "")
        + collapse
        + ". The report compares these with the paper like with like."
    )
    return f"{begin}\n{text}\n{end}"


def declared_vs_run(study: str, overrides: list[str]) -> str:
    """What the config declares, what ran, and why, when the overrides shrink the grid that
    the declared family expands over (empty when they do not)."""
    path = ROOT / "configs" / f"{study}.yaml"
    declared, ran = load_config(path).train, load_config(path, overrides).train
    conditions = {
        name: [f"bs {b}, {c.label}" for b in t.batch_sizes for c in t.compositions]
        for name, t in (("declared", declared), ("ran", ran))
    }
    missing = [c for c in conditions["declared"] if c not in conditions["ran"]]
    if not missing:
        return ""
    return (
        f"The config declares its primary family over {len(conditions['declared'])} train "
        f"conditions; this run has {len(conditions['ran'])}: the override(s) "
        + ", ".join(f"`{o}`" for o in overrides)
        + f" (used to fit the shared cores) leave out {', '.join(missing)}. So the family "
        "tested here is smaller than the declared one: the comparisons at the conditions left "
        "out were declared but never run, Holm corrects over the ones that ran only, and no "
        "claim is made about the others. "
    )


# The committed per-seed data of a study and the columns that identify one row of each.
DATA_KEYS = {
    "runs": ["run_key"],
    "evaluations": ["run_key", *TEST_KEYS],
    "curves": ["run_key", "metric", "step"],
}


def data_dir(out_dir: Path, study: str) -> Path:
    return out_dir / study / "data"


def study_keys(config: Config, runs: pd.DataFrame) -> tuple[set[str], set[str]]:
    """(compared run keys, tuning run keys) of ``config``, given the runs that exist: the tuning
    runs decide the compared runs' learning rates (and so their keys)."""
    if config.train.lr_grid is None:
        return {r.key for r in expand_runs(config)}, set()
    state = plan_tuning(config, scores_from_runs(runs))
    if state.selected is None:
        raise SystemExit(
            f"{config.experiment.name}: learning-rate selection is incomplete "
            f"({len(state.pending)} tuning runs missing); finish the study's tuning first"
        )
    return {r.key for r in expand_runs(config, state.selected)}, tuning_run_keys(config, state)


def _read(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.exists() else None


def merge_store(config: Config, store_dir: Path, data: Path) -> dict[str, int]:
    """Merge the store's runs of this study into the committed CSVs by key; returns the rows
    added per file. Rows already committed are kept as they are (never duplicated); rows of
    other configs in the store are left out."""
    with Store(store_dir) as store:
        fresh = {
            "runs": store.runs_frame().drop(columns=["config_json"]),
            "evaluations": store.evaluations_frame(),
            "curves": store.curves_frame(),
        }
    data.mkdir(parents=True, exist_ok=True)
    merged, added = {}, {}
    for name, keys in DATA_KEYS.items():
        old = _read(data / f"{name}.csv")
        frame = fresh[name] if old is None else pd.concat([old, fresh[name]], ignore_index=True)
        merged[name] = frame.drop_duplicates(keys, keep="first")
        added[name] = len(merged[name]) - (0 if old is None else len(old))
    compared, tuned = study_keys(config, merged["runs"])
    keep = compared | tuned
    for name, keys in DATA_KEYS.items():
        frame = merged[name][merged[name]["run_key"].isin(keep)].sort_values(keys)
        frame.to_csv(data / f"{name}.csv", index=False)
    return added


def load_study(config: Config, data: Path) -> tuple[pd.DataFrame, ...]:
    """(compared runs, their evaluations, their curves, tuning table) from the committed CSVs."""
    frames = {name: _read(data / f"{name}.csv") for name in DATA_KEYS}
    if frames["runs"] is None or frames["evaluations"] is None:
        raise SystemExit(
            f"{data}: no committed per-seed data of {config.experiment.name}; run the study "
            f"(python benchmarks/compare.py configs/{config.experiment.name}.yaml) first"
        )
    runs = frames["runs"]
    compared, _ = study_keys(config, runs)
    tuning = tuning_table(config, runs) if config.train.lr_grid is not None else None
    runs = runs[runs["run_key"].isin(compared)]
    evaluations = frames["evaluations"][frames["evaluations"]["run_key"].isin(compared)]
    curves = frames["curves"] if frames["curves"] is not None else pd.DataFrame()
    if not curves.empty:
        curves = curves[curves["run_key"].isin(compared)]
    if runs.empty:
        raise SystemExit(f"{data}: no runs of the current {config.experiment.name} config")
    return runs, evaluations, curves, tuning


def study_report(study: str, runs_dir: Path, out_dir: Path, readme: Path | None = None) -> Path:
    overrides = OVERRIDES[study]
    config = load_config(ROOT / "configs" / f"{study}.yaml", overrides)
    data = data_dir(out_dir, study)
    store_dir = runs_dir / study
    if (store_dir / "results.sqlite").exists():
        added = merge_store(config, store_dir, data)
        print(f"{study}: merged {store_dir / 'results.sqlite'} into {data} (rows added: {added})")
    runs, evaluations, curves, tuning = load_study(config, data)
    if "num_classes" not in runs.columns:  # chance level for the collapse margin, from the config
        from normzoo.data import dataset_info

        info = dataset_info(config.data.dataset, config.data.options, config.data.root)
        runs = runs.assign(num_classes=info.num_classes)
    missing = len(expand_runs(config)) - len(runs)
    cpu = pd.to_numeric(runs["train_seconds"], errors="coerce").sum() / 3600
    command = f"python benchmarks/compare.py configs/{study}.yaml --workers 2 --wandb disabled"
    command += "".join(f" --set '{o}'" for o in overrides)
    with tempfile.TemporaryDirectory() as tmp:
        result = build_report(
            runs,
            evaluations,
            Path(tmp),
            reference="batch",
            title=TITLES[study],
            command=command,
            stats=config.stats,
            tuning=tuning,
        )
        figures = out_dir / study
        for path in figures.glob("*"):
            if path.is_file():
                path.unlink()
        figures.mkdir(parents=True, exist_ok=True)
        for path in [*result.figures.values(), *Path(tmp).glob("*.csv")]:
            shutil.copy(path, figures / path.name)
        text = result.path.read_text()
    report = result.report
    seeds = sorted(set(runs["seed"]))
    lines = [
        f"# {TITLES[study]}",
        "",
        f"**Command:** `{command}` (config: `configs/{study}.yaml`), on 2 shared CPU cores; "
        f"{cpu:.1f} h of training CPU time in the compared runs (sum of their training "
        f"seconds; stacked runs share their stack's time). Regenerated from the committed "
        f"per-seed data (`{study}/data/`: runs, evaluations, curves) by `python "
        f"benchmarks/study_reports.py {study}`"
        + (f"; {missing} compared run(s) of the config are not in it yet" if missing > 0 else "")
        + ".",
        "",
        f"**Setup.** {config.experiment.description} "
        + (
            f"This run shrinks the config with {', '.join(f'`{o}`' for o in overrides)} to fit "
            "the shared cores (see `OVERRIDES` in `benchmarks/study_reports.py`). "
            if overrides
            else ""
        )
        + f"{len(runs)} training runs "
        f"({(runs['status'] == 'ok').sum()} ok), {len(seeds)} seeds. Primary family declared "
        f"in the config before the runs: "
        + ", ".join(f"`{c}`" for c in report.primary_labels)
        + f", expanded over conditions to {len(report.primary)} comparisons, Holm at alpha = "
        f"{report.spec.alpha}. {declared_vs_run(study, overrides)}Intervals are paired "
        "t-intervals over seeds: they cover seed-to-seed (training) variance on one fixed test "
        "set. The accuracy estimand and the convergence gate are stated in the generated "
        "report below; collapsed runs are listed per cell with their seeds.",
        "",
        "## What we found (generated from the primary family's verdicts)",
        "",
        *[f"- {f}" for f in report.findings],
        "",
        "## Comparison with the paper, like with like",
        "",
        *COMPARISONS[study](result, config=config, runs=runs, curves=curves),
        "",
        "## Generated report",
        "",
        *_generated_body(text, study),
    ]
    path = out_dir / f"{study}.md"
    path.write_text("\n".join(lines) + "\n")
    if readme is not None:
        begin, end = readme_markers(study)
        readme.write_text(
            replace_between(readme.read_text(), begin, end, readme_summary(study, report))
        )
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="*", default=list(TITLES), choices=list(TITLES))
    parser.add_argument("--runs", type=Path, default=ROOT / "runs")
    parser.add_argument("--out", type=Path, default=ROOT / "reports")
    parser.add_argument(
        "--readme", type=Path, default=ROOT / "README.md", help="its study bullets are rewritten"
    )
    args = parser.parse_args(argv)
    for study in args.studies:
        print(study_report(study, args.runs, args.out, args.readme))
    return 0


if __name__ == "__main__":
    sys.exit(main())
