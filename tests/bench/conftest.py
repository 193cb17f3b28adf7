"""Shared fixtures of the benchmark-engine tests: the compare CLI module and tiny configs."""

import copy
import importlib.util
import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

# W&B must never reach the network in tests.
os.environ.update(
    WANDB_SILENT="true", WANDB_DISABLE_GIT="true", WANDB_MODE="offline", WANDB_CONSOLE="off"
)


@pytest.fixture(scope="session")
def compare():
    """benchmarks/compare.py as a module (benchmarks/ is not a package); its `main` is the CLI."""
    spec = importlib.util.spec_from_file_location("compare", ROOT / "benchmarks" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = {
    "experiment": {"name": "tiny"},
    "data": {
        "dataset": "synthetic",
        "options": {"train_size": 512, "test_size": 96, "image_size": 16},
    },
    "model": {"backbone": "small_cnn"},
    "norms": ["batch", {"name": "group", "options": {"groups": 8}}],
    "train": {"batch_sizes": [16], "epochs": 1, "optimizer": "adamw", "lr": 2.0e-3, "seeds": 2},
    "eval": {
        "test_batch_sizes": [1, 32],
        "stats_modes": ["running", "batch"],
        "shifts": ["clean", "gaussian_noise"],
        "severities": [3],
        "compositions": ["iid", {"name": "label_skew", "alpha": 0.1}],
    },
    "execution": {"workers": 1, "wandb": "disabled"},
}


@pytest.fixture
def tiny_raw() -> dict:
    """The tiny config as a fresh nested dict."""
    return copy.deepcopy(TINY)


@pytest.fixture
def tiny_config_path(tmp_path) -> Path:
    """A 4-run config (2 norms x 1 batch size x 2 seeds, 1 epoch on 461 16x16 images)."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path
