"""Report: convergence gate, collapsed runs, not-tested members, no duplicated comparison."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from normzoo import stats
from normzoo.bench.plan.config.specs import NormSpec
from normzoo.bench.plan.config.stats_section import StatsSection, parse_stats
from normzoo.report import compute_report, render_markdown

CONFIG = json.dumps({"data": {"dataset": "synthetic", "options": {"num_classes": 10}}})


def frames(
    accuracy,  # (norm, train_bs, seed) -> test accuracy
    norms=("batch", "group"),
    train_sizes=(32,),
    seeds=4,
    test_sizes=(128,),
    shifts=(("clean", 0),),
    train_accuracy=None,  # (norm, train_bs, seed) -> training accuracy, or None: no column
):
    """Runs and evaluations as the store exports them, with ``computed_as`` as the engine
    writes it: running statistics are one computation at every test batch size."""
    runs, evaluations = [], []
    for norm in norms:
        for train_bs in train_sizes:
            for seed in range(seeds):
                run = {
                    "run_key": f"{norm}-{train_bs}-{seed}",
                    "experiment": "e",
                    "dataset": "synthetic",
                    "backbone": "small_cnn",
                    "norm": norm,
                    "norm_options": "{}",
                    "train_batch_size": train_bs,
                    "train_composition": "iid",
                    "seed": seed,
                    "status": "ok",
                    "error": None,
                    "config_json": CONFIG,
                }
                if train_accuracy is not None:
                    run["train_accuracy"] = train_accuracy(norm, train_bs, seed)
                runs.append(run)
                for test_bs in test_sizes:
                    for shift, severity in shifts:
                        evaluations.append(
                            {
                                **run,
                                "test_batch_size": test_bs,
                                "stats_mode": "running",
                                "shift": shift,
                                "severity": severity,
                                "test_composition": "iid",
                                "accuracy": accuracy(norm, train_bs, seed)
                                - 0.1 * (shift != "clean"),
                                "computed_as": f"bs{max(test_sizes)}/running/{shift}/iid",
                            }
                        )
    return pd.DataFrame(runs), pd.DataFrame(evaluations).drop(columns=["config_json"])


def noisy(effects, sd=0.01, seed=0):
    rng = np.random.default_rng(seed)
    draws = {}

    def accuracy(norm, train_bs, s):
        key = (norm, train_bs, s)
        if key not in draws:
            draws[key] = 0.8 + effects.get(norm, 0.0) + rng.normal(0, sd)
        return draws[key]

    return accuracy


def test_repeated_computations_are_one_comparison_not_two():
    # running statistics at test bs 8 and 128 are the same computation (the store says so):
    # the study_shift table counted those comparisons twice
    shifts = (("clean", 0), ("fog", 5))
    runs, ev = frames(noisy({"group": 0.01}), test_sizes=(8, 128), shifts=shifts)
    report = compute_report(runs, ev)
    table = report.exploratory["vs_reference"]
    distinct = ev.groupby(["norm", "shift"])["computed_as"].nunique().max()
    assert distinct == 1
    # the primary family holds (clean, bs 128); fog is the one other distinct computation
    assert len(table) == 1 and set(table["shift"]) == {"fog"}
    # clean at bs 8 repeats the primary member, fog at bs 8 repeats fog at bs 128
    assert report.merged == {"vs_reference": 2}
    assert not table.duplicated(["a", "b", "mean_difference", "pvalue"]).any()
    assert table["family_size"].tolist() == [1]


def test_untrained_condition_is_not_tested_and_keeps_its_place_in_the_family():
    def train(norm, train_bs, seed):
        if train_bs == 2:
            return 0.5  # nobody trains at batch 2
        return 0.95 if norm == "batch" else 0.85  # group under the gate where batch passes

    runs, ev = frames(noisy({"group": 0.02}), train_sizes=(2, 32), seeds=5, train_accuracy=train)
    report = compute_report(runs, ev)
    primary = report.primary.set_index("train_batch_size")
    assert primary.loc[2, "verdict"] == stats.NOT_TESTED
    assert (primary["family_size"] == 2).all()
    # bs 32: group is under the gate, so all its runs collapsed and no pair is left
    assert primary.loc[32, "verdict"] == stats.INSUFFICIENT
    text = " ".join(report.findings)
    assert "No norm reached the training-accuracy gate 0.9 at train bs 2" in text
    assert "group did not reach the training-accuracy gate 0.9 at train bs 32 while batch did" in (
        text.replace("**", "")
    )
    assert "not tested" in text
    conditions = report.convergence.conditions.set_index("train_batch_size")
    assert conditions.loc[2, "trained"] == False and conditions.loc[32, "trained"] == True  # noqa: E712


def test_collapsed_seeds_are_left_out_listed_and_compared_by_fisher():
    base = noisy({"group": 0.03}, sd=0.01, seed=3)

    def accuracy(norm, train_bs, seed):
        return 0.11 if norm == "group" and seed in (1, 4, 7) else base(norm, train_bs, seed)

    runs, ev = frames(accuracy, seeds=10, train_accuracy=lambda *k: 0.97)
    report = compute_report(runs, ev, stats=StatsSection(collapse_margin=0.05))
    row = report.primary.iloc[0]
    kept = [s for s in range(10) if s not in (1, 4, 7)]
    d = np.array([accuracy("group", 32, s) - accuracy("batch", 32, s) for s in kept])
    assert row["n"] == 7 and row["seeds_collapsed"] == 3
    assert row["mean_difference"] == pytest.approx(d.mean())
    assert row["pvalue"] == pytest.approx(sps.ttest_1samp(d, 0).pvalue)
    assert "neither run collapsed" in row["estimand"]
    collapse = report.collapse.iloc[0]
    assert collapse["collapsed_seeds_a"] == "1 4 7" and collapse["collapsed_b"] == "0/10"
    assert collapse["collapse_pvalue"] == pytest.approx(sps.fisher_exact([[3, 7], [0, 10]]).pvalue)
    cells = report.convergence.cells.set_index("method")
    assert cells.loc["group", "collapsed_seeds"] == "1 4 7"
    assert "3 seeds left out" in " ".join(report.findings)
    text = render_markdown(report, {})
    # 1 - 0.8^10 = 0.893; Fisher 0% vs 50% at 10 seeds alone: 62% (see test_stats_simulation)
    assert "with probability 89%" in text and "| 0% vs 50% | 62% |" in text
    assert "| group | batch | 3/10 (1 4 7) | 0/10 |" in text


def test_store_without_training_accuracy_applies_no_gate_and_says_so():
    base = noisy({})

    def accuracy(norm, train_bs, seed):
        return 0.12 if norm == "group" and seed == 0 else base(norm, train_bs, seed)

    runs, ev = frames(accuracy, seeds=4)
    report = compute_report(runs, ev)
    assert not report.convergence.gate_applied
    assert any("no training-accuracy gate is applied" in limit for limit in report.limits)
    # collapse by test accuracy alone: chance 0.1 from the config, 0.12 <= 0.1 + 0.05
    assert report.convergence.runs.set_index("run_key").loc["group-32-0", "collapsed"]
    assert report.convergence.chance_source.startswith("each run's config")
    assert report.primary["verdict"].iloc[0] != stats.NOT_TESTED


@pytest.mark.parametrize(
    "raw, problem",
    [
        ({"gate": 0}, "stats.gate=0"),
        ({"gate": 1.5}, "stats.gate=1.5"),
        ({"gate": True}, "stats.gate=True"),
        ({"collapse_margin": -0.1}, "stats.collapse_margin=-0.1"),
    ],
)
def test_gate_keys_are_validated(raw, problem):
    section, problems = parse_stats(raw, [NormSpec("batch")], ["running"])
    assert any(problem in p for p in problems)
    assert (section.gate, section.collapse_margin) == (0.9, 0.05)
    ok, none = parse_stats({"gate": 0.8, "collapse_margin": 0.02}, [NormSpec("batch")], [])
    assert not none and (ok.gate, ok.collapse_margin) == (0.8, 0.02)


def test_study_report_says_what_was_declared_and_what_ran():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "study_reports.py"
    spec = importlib.util.spec_from_file_location("study_reports", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # configs/study_renorm.yaml: batch sizes 4 and 32 x compositions iid and classes(k=2)
    text = module.declared_vs_run("study_renorm", ["train.compositions=[iid]"])
    assert "over 4 train conditions; this run has 2" in text and "classes(k=2)" in text
    assert module.declared_vs_run("study_renorm", []) == ""
