"""normzoo.report on synthetic Results-schema frames with known effects."""

import itertools
import json
import time

import numpy as np
import pandas as pd
import pytest

from normzoo import report

BATCH_DEPENDENT = {"batch", "batch_renorm"}


def synthetic_results(
    effects: dict[str, float],
    seeds: int = 3,
    train_batch_sizes=(8, 32),
    test_batch_sizes=(1, 16, 128),
    stats_modes=("running", "batch"),
    shifts=(("clean", 0), ("gaussian_noise", 1), ("gaussian_noise", 3), ("fog", 1), ("fog", 3)),
    compositions=("iid", "label_skew"),
    noise: float = 0.002,
    failed: tuple[tuple[str, int, int, str], ...] = (),
    rng_seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Runs/evaluations where accuracy = 0.7 + seed effect + effects[norm] + small noise.

    Batch-dependent norms are evaluated under every stats mode (``batch`` mode loses
    0.2 / test batch size); the others only under ``running``.
    """
    rng = np.random.default_rng(rng_seed)
    seed_effect = rng.normal(0, 0.03, seeds)
    failed_keys = {(n, b, s): (status, err) for n, b, s, status, err in failed}
    runs, evaluations = [], []
    for norm, train_bs, seed in itertools.product(effects, train_batch_sizes, range(seeds)):
        status, error = failed_keys.get((norm, train_bs, seed), ("ok", None))
        run = {
            "run_key": f"{norm}-{train_bs}-{seed}",
            "experiment": "synthetic",
            "dataset": "synthetic",
            "backbone": "small_cnn",
            "norm": norm,
            "norm_options": json.dumps({"groups": 4} if norm == "group" else {}),
            "train_batch_size": train_bs,
            "train_composition": "iid",
            "seed": seed,
            "status": status,
            "error": error,
            "val_accuracy": 0.7,
            "train_seconds": 1.0,
        }
        runs.append(run)
        if status != "ok":
            continue
        modes = stats_modes if norm in BATCH_DEPENDENT else ("running",)
        grid = itertools.product(test_batch_sizes, modes, shifts, compositions)
        for test_bs, mode, (shift, severity), composition in grid:
            accuracy = 0.7 + seed_effect[seed] + effects[norm] - 0.05 * severity
            accuracy -= 0.2 / test_bs if mode == "batch" else 0.0
            accuracy += rng.normal(0, noise)
            evaluations.append(
                {
                    **run,
                    "test_batch_size": test_bs,
                    "stats_mode": mode,
                    "shift": shift,
                    "severity": severity,
                    "test_composition": composition,
                    "accuracy": accuracy,
                    "loss": 1.0 - accuracy,
                    "n_test": 1000,
                }
            )
    return pd.DataFrame(runs), pd.DataFrame(evaluations)


def _vs_reference(result: report.ReportResult, norm: str) -> pd.DataFrame:
    table = result.tables["significance_vs_reference"]
    return table[table["a"] == norm]


def test_known_effects_are_found_and_identical_norms_are_not(tmp_path):
    runs, evaluations = synthetic_results(
        {"batch": 0.0, "group": 0.05, "layer": 0.0, "instance": 0.0},
        seeds=8,
        noise=0.002,
        test_batch_sizes=(32,),
        stats_modes=("running",),
        compositions=("iid",),
    )
    # "instance" is "batch" plus fresh noise (a null effect); "layer" is an exact copy
    layer_rows, batch_rows = evaluations["norm"] == "layer", evaluations["norm"] == "batch"
    evaluations.loc[layer_rows, "accuracy"] = evaluations.loc[batch_rows, "accuracy"].to_numpy()
    result = report.build_report(runs, evaluations, tmp_path, command="python make_it.py")
    group, layer = _vs_reference(result, "group(groups=4)"), _vs_reference(result, "layer")
    null = _vs_reference(result, "instance")
    assert len(group) == len(layer) > 0
    assert (group["verdict"] == "significant").all()
    assert (group["better"] == "group(groups=4)").all()
    assert group["mean_difference"].between(0.04, 0.06).all()
    assert (group["n"] == 8).all() and (group["correction"] == "Holm").all()
    # an exact copy: every seed agrees, an explicit verdict instead of p = 1 or p = 0
    assert (layer["verdict"] == "degenerate: all seeds agree").all()
    assert layer["p_adjusted"].isna().all() and layer["better"].isna().all()
    # a null effect is flagged at about the family-wise error rate, not systematically
    assert (null["verdict"] == "significant").mean() <= 0.15
    # Wilcoxon is gated on the family: 8 pairs reach 2/256, times the family size
    underpowered = null["family_size"] * 2 / 2**8 >= 0.05
    assert ((null["wilcoxon_verdict"] == "underpowered") == underpowered).all()
    # the primary family (default: each norm vs batch at the clean condition, both train sizes)
    primary = result.tables["significance_primary"]
    assert len(primary) == 6 and (primary["family_size"] == 6).all()
    assert set(primary["verdict"][primary["a"] == "group(groups=4)"]) == {"significant"}
    # exploratory tables never repeat a primary comparison
    assert not (result.tables["significance_vs_reference"]["shift"] == "clean").any()
    text = result.path.read_text()
    for section in (
        "## Runs",
        "## How differences are decided",
        "## What we found",
        "## Primary family",
        "## Headline",
        "### Each norm vs `batch`",
        "### All other pairs",
        "## Ranks",
        "seed-to-seed",
        "Produced by: `python make_it.py`",
        "paired t-test",
        "alpha = 0.05",
        "Holm",
    ):
        assert section in text, section


def test_report_files_plots_and_headline(tmp_path):
    runs, evaluations = synthetic_results(
        {"batch": 0.0, "batch_renorm": 0.01, "group": 0.02, "layer": -0.02, "instance": -0.04}
    )
    result = report.build_report(runs, evaluations, tmp_path / "out", title="Synthetic")
    assert result.path == tmp_path / "out" / "report.md"
    expected = {
        "accuracy_vs_train_batch_size",
        "accuracy_vs_test_batch_size",
        "accuracy_vs_severity",
        "critical_difference",
    }
    assert set(result.figures) == expected
    for path in result.figures.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
        assert f"]({path.name})" in result.path.read_text()
    headline = result.headline
    assert "clean, train bs 8" in headline.columns and "clean, train bs 32" in headline.columns
    assert "clean, test bs 1" in headline.columns and "label_skew test batches" in headline.columns
    assert "mean over corruptions (n=2), severity 3" in headline.columns
    # small test batches get one column per stats mode: batch statistics lose 0.2 / bs for the
    # batch-dependent norms; norms without batch statistics show their only (running) result
    batch_col = "clean, test bs 1, batch stats"
    assert batch_col in headline.columns
    assert "mean over corruptions (n=2), severity 3, batch stats" in headline.columns
    assert "label_skew test batches, batch stats" in headline.columns

    def mean_of(method, column):
        return float(headline.loc[method, column].split(" ± ")[0])

    assert mean_of("batch", batch_col) == pytest.approx(
        mean_of("batch", "clean, test bs 1") - 0.2, abs=0.01
    )
    assert mean_of("layer", batch_col) == mean_of("layer", "clean, test bs 1")
    cell = headline.loc["group(groups=4)", "clean, train bs 32"]
    mean, half = (float(v) for v in cell.split(" ± "))
    rows = evaluations[
        (evaluations.norm == "group")
        & (evaluations.train_batch_size == 32)
        & (evaluations["shift"] == "clean")
        & (evaluations.test_batch_size == 128)
        & (evaluations.test_composition == "iid")
    ]
    per_seed = rows.groupby("seed")["accuracy"].mean()
    assert mean == pytest.approx(per_seed.mean(), abs=6e-4)
    assert (headline["seeds"] == 3).all()
    # three seeds: the t-test decides, Wilcoxon must say underpowered, never "not significant"
    table = result.tables["significance_vs_reference"]
    assert (table["wilcoxon_verdict"] == "underpowered").all()
    # every printed interval agrees with its verdict
    for t in (table, result.tables["significance_primary"]):
        excludes_zero = (t["ci_low"] > 0) | (t["ci_high"] < 0)
        assert (excludes_zero == (t["verdict"] == "significant")).all()
    modes = result.tables["significance_stats_modes"]
    assert set(modes["method"]) == BATCH_DEPENDENT and set(modes["a"]) == {"batch"}
    small = modes[modes["test_batch_size"] == 1]
    assert (small["verdict"] == "significant").all() and (small["mean_difference"] < 0).all()
    for name in (
        "significance_vs_reference",
        "significance_stats_modes",
        "headline",
        "significance_primary",
    ):
        assert (tmp_path / "out" / f"{name}.csv").exists()
    assert report.headline_table(evaluations).equals(headline)


def test_single_valued_dimensions_get_no_plot(tmp_path):
    runs, evaluations = synthetic_results(
        {"batch": 0.0, "group": 0.01},
        train_batch_sizes=(32,),
        test_batch_sizes=(64,),
        shifts=(("clean", 0),),
        compositions=("iid",),
    )
    result = report.build_report(runs, evaluations, tmp_path)
    assert result.figures == {}  # two norms: no rank test either
    assert not list(tmp_path.glob("*.png"))
    assert "rank test skipped" in result.path.read_text()


def test_failed_runs_are_counted_named_and_excluded(tmp_path):
    failed = (
        ("group", 32, 1, "diverged", "loss is NaN at step 12"),
        ("group", 32, 2, "failed", "RuntimeError: out of memory"),
        ("layer", 8, 0, "failed", "ValueError: bad option"),
    )
    runs, evaluations = synthetic_results(
        {"batch": 0.0, "group": 0.03, "layer": 0.0},
        failed=failed,
        test_batch_sizes=(32,),
        compositions=("iid",),
    )
    result = report.build_report(runs, evaluations, tmp_path)
    text = result.path.read_text()
    assert (
        "12 training runs" not in text and "18 training runs: 15 ok, 2 failed, 1 diverged" in text
    )
    for *_, error in failed:
        assert error in text
    assert len(result.tables["failed_runs"]) == 3
    group_32 = _vs_reference(result, "group(groups=4)")
    group_32 = group_32[group_32["train_batch_size"] == 32]
    # one seed left: no claim either way
    assert (group_32["n"] == 1).all() and (group_32["verdict"] == "insufficient data").all()
    assert group_32["better"].isna().all()


def test_bad_input_errors(tmp_path):
    runs, evaluations = synthetic_results({"batch": 0.0, "group": 0.01}, test_batch_sizes=(8,))
    with pytest.raises(ValueError, match="lacks columns \\['accuracy'\\]"):
        report.build_report(runs, evaluations.drop(columns="accuracy"), tmp_path)
    with pytest.raises(ValueError, match="alpha=2"):
        report.build_report(runs, evaluations, tmp_path, alpha=2)


def test_report_is_fast_at_benchmark_scale(tmp_path):
    # ~5 norms x 4 train batch sizes x 3 seeds x ~50 test conditions
    runs, evaluations = synthetic_results(
        {"batch": 0.0, "batch_renorm": 0.01, "group": 0.02, "layer": -0.02, "instance": -0.04},
        train_batch_sizes=(2, 8, 32, 128),
        test_batch_sizes=(1, 8, 32, 128),
        shifts=(("clean", 0), *[(c, s) for c in ("fog", "noise") for s in (1, 3, 5)]),
    )
    start = time.perf_counter()
    report.build_report(runs, evaluations, tmp_path)
    assert time.perf_counter() - start < 20.0


def test_method_label_matches_config_labels():
    assert report.method_label("batch", "{}") == "batch"
    assert (
        report.method_label("group", '{"groups": 8, "eps": 0.001}') == "group(eps=0.001,groups=8)"
    )
    with pytest.raises(ValueError, match="is not JSON"):
        report.method_label("group", "groups=8")


def test_declared_family_across_conditions_with_stats_modes_and_tost(tmp_path):
    from normzoo.bench.plan.config.stats_section import StatsSection

    runs, evaluations = synthetic_results(
        {"batch": 0.0, "group": 0.03, "layer": 0.0}, seeds=6, test_batch_sizes=(1, 128)
    )
    spec = StatsSection(
        ("group vs batch", "batch vs running where test_batch_size=1 and shift=clean"),
        alpha=0.05,
        equivalence_margin=0.01,
    )
    result = report.build_report(runs, evaluations, tmp_path, stats=spec)
    primary = result.tables["significance_primary"]
    # group vs batch at 2 train sizes; batch vs running for the batch-dependent norm only
    # (group and layer have no batch statistics), 2 train sizes x 2 test compositions
    assert sorted(primary["comparison"].value_counts().to_dict().items()) == [
        ("batch vs running where test_batch_size=1 and shift=clean", 4),
        ("group vs batch", 2),
    ]
    assert (primary["family_size"] == 6).all()
    modes = primary[primary["a"] == "batch"]
    assert set(modes["method"]) == {"batch"}
    # a batch-independent norm evaluated under every mode has identical numbers: not a member
    layer_copy = evaluations[(evaluations["norm"] == "layer")]
    everywhere = pd.concat([evaluations, layer_copy.assign(stats_mode="batch")], ignore_index=True)
    again = report.compute_report(runs, everywhere, stats=spec).primary
    assert set(again[again["a"] == "batch"]["method"]) == {"batch"}
    assert (modes["verdict"] == "significant").all() and (modes["mean_difference"] < 0).all()
    # the findings say exactly what the verdicts say
    text = result.path.read_text()
    found = text.split("## What we found")[1].split("## Primary family")[0]
    assert "6 of 6 comparisons in the primary family are significant" in found
    assert found.count("is significantly") == 6
    assert "not shown equivalent" not in found  # significant rows carry no TOST sentence
    # the primary comparisons are never repeated in the exploratory stats-mode table
    explored = result.tables["significance_stats_modes"]
    repeated = explored[(explored["a"] == "batch") & (explored["test_batch_size"] == 1)]
    assert repeated[repeated["shift"] == "clean"].empty


def test_learning_rate_selection_is_shown_with_its_edges(tmp_path):
    runs, evaluations = synthetic_results({"batch": 0.0, "group": 0.02}, seeds=2)
    rows = []
    for norm, b, lrs, chosen in (
        ("batch", 8, (1e-3, 2e-3, 4e-3), 2e-3),
        ("group", 8, (1e-3, 2e-3, 4e-3, 8e-3), 8e-3),  # extended and still at the edge
    ):
        for i, lr in enumerate(lrs):
            rows.append(
                {
                    "norm": norm,
                    "train_batch_size": b,
                    "train_composition": "iid",
                    "lr": lr,
                    "seeds": 1,
                    "failed": 0,
                    "val_accuracy": 0.5 + 0.1 * i,
                    "val_accuracy_sd": np.nan,
                    "train_accuracy": 0.9,
                    "selected": lr == chosen,
                }
            )
    tuning = pd.DataFrame(rows)
    result = report.build_report(runs, evaluations, tmp_path, title="t", tuning=tuning)
    text = result.path.read_text()
    assert "## Learning-rate selection" in text
    assert "| batch | 8 | iid | 0.500 (0.900) | **0.600 (0.900)** | 0.700 (0.900) |  |" in text
    assert "a better rate may lie beyond it): group at train bs 8 (iid): 0.008." in text
    assert "batch at train bs 8 (iid)" not in text  # an inner selection is no edge
    assert "accuracy_vs_lr" in result.figures
    assert pd.read_csv(tmp_path / "tuning.csv")["selected"].sum() == 2
    # without tuning runs (a config with one declared lr) there is no such section
    plain = report.build_report(runs, evaluations, tmp_path / "plain", title="t")
    assert "Learning-rate selection" not in plain.path.read_text()
    assert "accuracy_vs_lr" not in plain.figures


def test_calibration_table_is_the_mean_over_seeds_per_stats_mode(tmp_path):
    runs, evaluations = synthetic_results({"batch": 0.0, "group": 0.02}, seeds=3)
    rng = np.random.default_rng(1)
    evaluations = evaluations.assign(
        ece=rng.uniform(0, 0.2, len(evaluations)), loss=rng.uniform(0.3, 2, len(evaluations))
    )
    result = report.build_report(runs, evaluations, tmp_path, title="t")
    assert "## Calibration beside accuracy (exploratory)" in result.path.read_text()
    table = pd.read_csv(tmp_path / "calibration.csv")
    # independently: batch norm, largest train and test batch, batch stats, fog at severity 3
    cell = evaluations[
        (evaluations["norm"] == "batch")
        & (evaluations["train_batch_size"] == 32)
        & (evaluations["test_batch_size"] == 128)
        & (evaluations["stats_mode"] == "batch")
        & (evaluations["shift"] == "fog")
        & (evaluations["severity"] == 3)
        & (evaluations["test_composition"] == "iid")
    ]
    row = table[
        (table["method"] == "batch")
        & (table["test_batch_size"] == 128)
        & (table["stats_mode"] == "batch")
        & (table["shift"] == "fog")
        & (table["severity"] == 3)
    ]
    assert len(cell) == 3 and len(row) == 1
    assert row["ece"].iloc[0] == pytest.approx(cell["ece"].mean())
    assert row["nll"].iloc[0] == pytest.approx(cell["loss"].mean())
    assert row["accuracy"].iloc[0] == pytest.approx(cell["accuracy"].mean())
    assert set(table["train_batch_size"] if "train_batch_size" in table else []) <= {32}
    # a store without ECE (older than the calibration columns) gets no such section
    plain = report.build_report(runs, evaluations.drop(columns=["ece"]), tmp_path / "p", title="t")
    assert "Calibration" not in plain.path.read_text()
