"""Learning-rate selection end to end: stored tuning runs, a poisoned test split, the grid."""

import dataclasses
import functools
import importlib.util
from pathlib import Path

import pandas as pd
import pytest
import torch

import normzoo.data.module as data_module
from normzoo.bench.execute.tuning import select_learning_rates, stored_scores
from normzoo.bench.execute.worker import in_process_results
from normzoo.bench.plan.config import parse_config
from normzoo.bench.plan.grid import expand_runs
from normzoo.bench.plan.tuning import cells
from normzoo.bench.record.store import Store
from normzoo.bench.run import run_grid


def _config(tiny_raw):
    raw = dict(tiny_raw)
    raw["norms"] = ["batch"]
    raw["train"] = {
        **raw["train"],
        "max_steps": 6,
        "seeds": [0],
        "lr_grid": [1e-4, 3e-2],
        "tune_seeds": [100],
        "tune_extensions": 0,
    }
    raw["eval"] = {**raw["eval"], "stats_modes": ["running"], "shifts": ["clean"]}
    raw["eval"]["compositions"] = ["iid"]
    return parse_config(raw)


def _select(config, out_dir):
    with Store(out_dir) as store:
        execute = functools.partial(in_process_results, config=config, out_dir=str(out_dir))
        selected = select_learning_rates(config, store, lambda tasks: execute(tasks))
        return selected, stored_scores(store), store.runs_frame(), store.evaluations_frame()


def _poisoned_load(load):
    """The dataset with its test split replaced: noise images, labels shifted by one."""

    def poisoned(*args, **kwargs):
        splits = load(*args, **kwargs)
        generator = torch.Generator().manual_seed(1)  # not the global RNG: init stays the same
        shape = splits.test_images.shape
        noise = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
        labels = (splits.test_labels + 1) % splits.num_classes
        return dataclasses.replace(splits, test_images=noise, test_labels=labels)

    return poisoned


def test_selection_never_reads_the_test_split(tiny_raw, tmp_path, monkeypatch):
    config = _config(tiny_raw)
    selected, scores, runs, evaluations = _select(config, tmp_path / "clean")
    assert set(selected) == set(cells(config))
    assert len(runs) == 2 and set(runs["role"]) == {"tune"}
    assert sorted(runs["lr"]) == [1e-4, 3e-2]
    assert runs["train_accuracy"].notna().all() and runs["train_loss"].notna().all()
    assert evaluations.empty  # tuning runs are never evaluated
    monkeypatch.setattr(data_module, "load", _poisoned_load(data_module.load))
    poisoned, poisoned_scores, _, _ = _select(config, tmp_path / "poisoned")
    assert poisoned == selected
    assert poisoned_scores == scores


def test_run_grid_tunes_first_and_trains_at_the_selected_lr(tiny_raw, tmp_path):
    config = _config(tiny_raw)
    summary = run_grid(config, tmp_path, workers=1, show_progress=False)
    assert summary.exit_status == 0
    with Store(tmp_path) as store:
        runs = store.runs_frame()
        selected = select_learning_rates(config, store, lambda tasks: pytest.fail("retrained"))
    compared = runs[runs["role"] == "compare"]
    assert sorted(compared["run_key"]) == sorted(r.key for r in expand_runs(config, selected))
    (lr,) = set(selected.values())
    assert compared["lr"].tolist() == [lr]
    tuned = runs[runs["role"] == "tune"]
    best = tuned.sort_values(["val_accuracy", "lr"], ascending=[False, True]).iloc[0]
    assert lr == best["lr"]  # the rule, read off the stored tuning runs
    assert summary.total == 1  # tuning runs are not part of the compared grid
    # benchmarks/lr_sensitivity.py: the table of validation accuracy vs lr, and its plot
    path = Path(__file__).resolve().parents[3] / "benchmarks" / "lr_sensitivity.py"
    spec = importlib.util.spec_from_file_location("lr_sensitivity", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    csv, png = tmp_path / "lr.csv", tmp_path / "lr.png"
    assert script.main([str(tmp_path), "--csv", str(csv), "--png", str(png)]) == 0
    table = pd.read_csv(csv)
    assert sorted(table["lr"]) == sorted(tuned["lr"])
    assert table.loc[table["selected"], "lr"].tolist() == [lr]
    assert table.set_index("lr")["val_accuracy"].to_dict() == pytest.approx(
        tuned.set_index("lr")["val_accuracy"].to_dict()
    )
    assert png.stat().st_size > 0
