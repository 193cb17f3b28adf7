"""configs/batch_size.yaml's pipeline end to end on a full-size CIFAR-10 in the real on-disk format.

The data are random pixels (no download): five ``data_batch_*`` pickles of 10,000 images each, a
``test_batch`` of 10,000 and ``batches.meta``, exactly as the python version of CIFAR-10 ships.
The run is a few optimizer steps of the config's own backbone (resnet_tiny) and optimizer; the
evaluation covers the whole 10,000-image test set.
"""

import pickle
from pathlib import Path

import numpy as np
import pytest

from normzoo.bench.record.store import Store

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _write_full_cifar10(folder, rng) -> None:
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(10_000, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=10_000).tolist()
        with open(folder / name, "wb") as handle:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({b"label_names": [b"c%d" % i for i in range(10)], b"num_vis": 3072}, handle)


def test_batch_size_config_runs_on_full_size_cifar10(compare, tmp_path):
    root = tmp_path / "data"
    _write_full_cifar10(root / "cifar-10-batches-py", np.random.default_rng(0))
    out = tmp_path / "out"
    argv = [
        str(ROOT / "configs" / "batch_size.yaml"),
        "--out",
        str(out),
        "--workers",
        "1",
        "--wandb",
        "disabled",
        "--set",
        f"data.root={root}",
        "--set",
        "norms=[batch, {name: group, options: {groups: 8}}]",
        "--set",
        "train.batch_sizes=[8]",
        "--set",
        "train.seeds=1",
        "--set",
        "train.max_steps=3",
        "--set",
        "data.val_fraction=0.02",
    ]
    assert compare.main(argv) == 0
    with Store(out, read_only=True) as store:
        runs, ev = store.runs_frame(), store.evaluations_frame()
    assert list(runs["status"]) == ["ok", "ok"]
    assert set(runs["dataset"]) == {"cifar10"} and set(runs["backbone"]) == {"resnet_tiny"}
    assert (ev["n_test"] == 10_000).all() and ev["accuracy"].between(0, 1).all()
    assert set(ev["stats_mode"]) == {"running", "batch"}
