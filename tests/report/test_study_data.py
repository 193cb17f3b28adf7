"""Committed per-seed study data (benchmarks/study_reports.py): shards merge by run key, nothing
is duplicated, and the report is rebuilt from the CSVs alone, equal to what the store holds."""

import copy
import importlib.util
from pathlib import Path

import pandas as pd
import pytest
import yaml

from normzoo.bench.plan.config import load_config
from normzoo.bench.record.store import Store
from normzoo.bench.run import run_grid
from normzoo.report import build_report

ROOT = Path(__file__).resolve().parents[2]

STUDY = {
    "experiment": {"name": "shards"},
    "data": {
        "dataset": "synthetic",
        "options": {"train_size": 256, "test_size": 64, "image_size": 8},
    },
    "model": {"backbone": "mlp", "options": {"width": 16}},
    "norms": ["batch", "layer"],
    "train": {
        "batch_sizes": [32],
        "epochs": 1,
        "optimizer": "adamw",
        "lr": 1.0e-3,
        "lr_grid": [1.0e-3, 4.0e-3],
        "tune_seeds": [100],
        "tune_extensions": 0,
        "seeds": 2,
    },
    "eval": {"test_batch_sizes": [32], "stats_modes": ["running"], "shifts": ["clean"]},
    "stats": {"primary": ["layer vs batch"]},
    "execution": {"workers": 1, "wandb": "disabled"},
}


@pytest.fixture(scope="module")
def module():
    spec = importlib.util.spec_from_file_location(
        "study_reports", ROOT / "benchmarks" / "study_reports.py"
    )
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """The study run as two seed shards into two stores (two sessions on fresh machines)."""
    tmp = tmp_path_factory.mktemp("study")
    path = tmp / "shards.yaml"
    path.write_text(yaml.safe_dump(copy.deepcopy(STUDY)))
    stores = []
    for i, seeds in enumerate(([0], [1])):
        out = tmp / f"shard{i}"
        run_grid(load_config(path, [f"train.seeds={seeds}"]), out, show_progress=False)
        stores.append(out)
    return load_config(path), stores, tmp


def test_shards_merge_by_run_key_without_duplicates(module, shards):
    config, (first, second), tmp = shards
    data = tmp / "data"
    added = module.merge_store(config, first, data)
    assert added["runs"] == 4 + 2  # 2 cells x 2 lrs tuned, 2 norms x seed 0 compared
    again = module.merge_store(config, first, data)
    assert again == {"runs": 0, "evaluations": 0, "curves": 0}  # a finished result never twice
    added = module.merge_store(config, second, data)
    assert added["runs"] == 2  # its tuning runs were already committed by the first shard
    runs = pd.read_csv(data / "runs.csv")
    assert not runs["run_key"].duplicated().any()
    assert sorted(runs.loc[runs["role"] == "compare", "seed"]) == [0, 0, 1, 1]

    compared, evaluations, curves, tuning = module.load_study(config, data)
    assert len(compared) == 4 and len(evaluations) == 4
    assert set(curves["run_key"]) == set(compared["run_key"])
    assert len(tuning) == 4 and tuning["selected"].sum() == 2
    # the committed numbers are the stores' numbers, exactly
    with Store(second) as store:
        stored = store.evaluations_frame()
    stored = stored.set_index("run_key")["accuracy"]
    ours = evaluations.set_index("run_key")["accuracy"]
    shared = ours.index.intersection(stored.index)
    assert len(shared) == 2 and (ours[shared] == stored[shared]).all()

    report = build_report(compared, evaluations, tmp / "report", tuning=tuning)
    text = report.path.read_text()
    assert "Seeds per norm: batch 2, layer 2" in text
    assert "## Learning-rate selection" in text


def test_missing_data_is_a_clear_error(module, shards, tmp_path):
    config, _, _ = shards
    with pytest.raises(SystemExit, match="no committed per-seed data of shards"):
        module.load_study(config, tmp_path / "nothing")
