"""``normzoo evaluate`` on checkpoints trained outside normzoo: a torchvision resnet18 state dict
and a Lightning ``.ckpt`` from a real ``Trainer.fit``; the checkpoint's hash unchanged; each input
error one line and exit 2; and the coverage of the cluster bootstrap by simulation."""

from __future__ import annotations

import copy
import hashlib
import json

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from torch import nn

from normzoo.bench.execute.checkpoint import read_state_dict, strip_prefix
from normzoo.cli import main
from normzoo.data import NormzooDataModule
from normzoo.stats import cluster_bootstrap

DATA = {"train_size": 64, "test_size": 32, "image_size": 16, "cache": False}
DATA_ARGS = [arg for k, v in DATA.items() for arg in ("--data-option", f"{k}={v}")]
DATA_ARGS = ["--data", "synthetic", *DATA_ARGS, "--resamples", "300"]


def datamodule() -> NormzooDataModule:
    dm = NormzooDataModule("synthetic", train_batch_size=16, dataset_options=DATA)
    dm.setup()
    return dm


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """A torchvision resnet18 (random init, nothing downloaded) trained 3 steps, its state dict."""
    torch.manual_seed(0)
    dm = datamodule()
    model = torchvision.models.resnet18(weights=None, num_classes=dm.num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for step, (x, y) in enumerate(dm.train_dataloader()):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step == 2:
            break
    path = tmp_path_factory.mktemp("ckpt") / "resnet18.pt"
    torch.save(model.state_dict(), path)
    return path


def torch_accuracy(model: nn.Module, batch_size: int, train_mode: bool) -> float:
    """Independent reference: torch's own resnet18, eval mode (running statistics) or train mode
    (batch statistics, on a copy) over clean sequential test batches."""
    model = copy.deepcopy(model).train(train_mode)
    dm = datamodule()
    correct = n = 0
    with torch.no_grad():
        for x, y in dm.test_loader(batch_size):
            correct += int((model(x).argmax(1) == y).sum())
            n += len(y)
    return correct / n


def test_torchvision_resnet18_state_dict(resnet18_file, tmp_path, capsys):
    before = sha256(resnet18_file)
    out = tmp_path / "out"
    args = ["evaluate", str(resnet18_file), "--model", "torchvision:resnet18", *DATA_ARGS]
    args += ["--test-batch-sizes", "1", "8", "--stats-modes", "running", "batch", "mix"]
    args += ["--mix-priors", "16", "--shifts", "clean", "gaussian_noise", "--severities", "3"]
    args += ["--compositions", "iid", "label_skew:0.1", "--out", str(out)]
    assert main(args) == 0
    assert sha256(resnet18_file) == before
    provenance = json.loads((out / "evaluate.json").read_text())
    assert provenance["sha256_before"] == provenance["sha256_after"] == before
    # built with the zoo's batch norm through torchvision's norm_layer: nothing left to convert
    assert provenance["converted_batch_layers"] == 0
    assert provenance["built"]["norm_kinds"] == {"batch": 20}  # resnet18's 20 batch norms

    rows = pd.read_csv(out / "evaluate.csv", keep_default_na=False, na_values=[""])
    done = rows[rows.skipped.isna()]
    reference = torchvision.models.resnet18(weights=None, num_classes=10)
    reference.load_state_dict(torch.load(resnet18_file, weights_only=True))

    def row(bs, mode, shift="clean", composition="iid"):
        match = done[
            (done.test_batch_size == bs)
            & (done.stats_mode == mode)
            & (done["shift"] == shift)
            & (done.test_composition == composition)
        ]
        assert len(match) == 1, (bs, mode, shift, composition)
        return match.iloc[0]

    ref = row(8, "running")
    assert ref.accuracy == pytest.approx(torch_accuracy(reference, 8, train_mode=False), abs=1e-12)
    assert row(8, "batch").accuracy == pytest.approx(
        torch_accuracy(reference, 8, train_mode=True), abs=1e-12
    )
    assert (ref.diff_vs_clean, ref.diff_vs_clean_low, ref.diff_vs_clean_high) == (0, 0, 0)
    assert ref.accuracy_low <= ref.accuracy <= ref.accuracy_high
    assert row(8, "running").clusters == 32  # per-sample: every test image its own cluster
    assert row(8, "batch").clusters == 4  # batch-dependent: whole test batches resampled
    # batch statistics at test batch 1 are undefined once resnet18's maps are 1x1 (16 px in)
    skipped = rows[rows.skipped.notna()]
    assert set(skipped.test_batch_size) == {1} and set(skipped.stats_mode) == {"batch"}
    # 2 batch sizes x 3 modes x 2 shifts x 2 compositions, and PreciseBN on clean and the shift
    assert len(rows) == 24 + 2
    assert set(done[done.stats_mode == "precisebn"]["shift"]) == {"clean", "gaussian_noise"}

    _store_and_wandb_hold_the_rows(out, done, skipped, before)

    report = (out / "report.md").read_text().splitlines()
    assert report[2].startswith("- **Reference**: running statistics at test batch 8")
    assert report[3].startswith("- **Test batch 1** (clean)")
    assert report[4].startswith("- **gaussian_noise-3**")
    assert report[5].startswith("- **label_skew(alpha=0.1) batches**")
    assert "Reference" in capsys.readouterr().out
    # `normzoo report DIR` rebuilds the same report from evaluate.csv and evaluate.json
    written = (out / "report.md").read_text()
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == written


def _store_and_wandb_hold_the_rows(out, done: pd.DataFrame, skipped: pd.DataFrame, digest: str):
    """The benchmark's store layout (one run, an evaluation row per computed condition, keyed as
    the benchmark keys them) and one offline W&B run (job_type evaluate, test/<condition>
    accuracies and bounds in its summary), both equal to evaluate.csv."""
    import importlib.util
    import sqlite3
    from pathlib import Path

    with sqlite3.connect(out / "results.sqlite") as conn:
        runs = pd.read_sql_query("SELECT * FROM runs", conn)
        stored = pd.read_sql_query("SELECT * FROM evaluations", conn)
    assert len(runs) == 1
    run = runs.iloc[0]
    assert (run.experiment, run.backbone, run.status) == ("evaluate", "torchvision:resnet18", "ok")
    assert run.weights_sha256 == digest
    assert all(f"bs1/batch/{s}/" in run.error for s in ("clean", "gaussian_noise-3"))
    keys = ["test_batch_size", "stats_mode", "shift", "severity", "test_composition"]
    merged = stored.merge(done, on=keys, suffixes=("", "_csv"), validate="one_to_one")
    assert len(merged) == len(done) == len(stored)
    assert np.array_equal(merged.accuracy, merged.accuracy_csv)
    assert np.allclose(merged.ece, merged.ece_csv) and np.allclose(merged.loss, merged.loss_csv)
    assert len(skipped) and not set(skipped.stats_mode) & set(
        stored[stored.test_batch_size == 1].stats_mode
    )

    spec = importlib.util.spec_from_file_location(
        "wandb_offline", Path(__file__).parent / "bench" / "wandb_offline.py"
    )
    offline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(offline)
    (logged,) = offline.wandb_runs(out)
    assert logged["job_type"] == "evaluate" and logged["id"] == run.run_key
    assert logged["config"]["sha256_before"] == digest
    for _, row in done.iterrows():
        shift = row["shift"] if row["shift"] == "clean" else f"{row['shift']}-{row.severity}"
        name = f"test/bs{row.test_batch_size}/{row.stats_mode}/{shift}/{row.test_composition}"
        assert logged["summary"][name] == row.accuracy
        assert logged["summary"][f"{name}_low"] == row.accuracy_low


def tiny_cnn(num_classes: int, in_channels: int, norm_layer) -> nn.Module:
    """A user's factory: two conv-norm-relu blocks with the given norm layer factory."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1, bias=False),
        norm_layer(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False),
        norm_layer(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )


class Classifier(pl.LightningModule):
    """A LightningModule holding its network as ``self.model`` (keys ``model.*``), with torch's
    own BatchNorm2d, as a user trains it outside normzoo."""

    def __init__(self) -> None:
        super().__init__()
        self.model = tiny_cnn(10, 3, nn.BatchNorm2d)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.model(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_ckpt_from_trainer_fit(tmp_path):
    trainer = pl.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(Classifier(), train_dataloaders=datamodule().train_dataloader())
    path = tmp_path / "tiny.ckpt"
    trainer.save_checkpoint(path)
    before = sha256(path)
    out = tmp_path / "out"
    args = ["evaluate", str(path), "--model", "test_evaluate_checkpoint:tiny_cnn", *DATA_ARGS]
    args += ["--test-batch-sizes", "4", "16", "--stats-modes", "running", "online", "adabn"]
    args += ["tent", "--shifts", "clean", "--compositions", "iid", "outliers:1"]
    args += ["--adapt-split", "train", "--out", str(out)]
    assert main(args) == 0
    assert sha256(path) == before
    provenance = json.loads((out / "evaluate.json").read_text())
    assert provenance["key_prefix_stripped"] == "model."
    assert provenance["sha256_after"] == before
    rows = pd.read_csv(out / "evaluate.csv", keep_default_na=False, na_values=[""])
    assert rows.skipped.isna().all()
    assert set(rows.stats_mode) == {"running", "online", "adabn", "tent", "precisebn"}
    outliers = rows[rows.test_composition == "outliers(k=1)"]
    assert set(outliers.n_test) == {32 - 32 // 4, 32 - 32 // 16}  # one unscored per batch


def test_safetensors_and_prefixed_state_dicts_load_the_same_weights(resnet18_file, tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    state = torch.load(resnet18_file, weights_only=True)
    path = tmp_path / "resnet18.safetensors"
    safetensors.save_file(state, path)
    loaded = read_state_dict(path)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    wrapped = {f"net.backbone.{k}": v for k, v in state.items()}
    wrapped["criterion.weight"] = torch.ones(1)  # a loss module's buffer beside the model
    stripped, prefix = strip_prefix(wrapped, set(state))
    assert prefix == "net.backbone." and stripped.keys() == state.keys()


def error_of(args, capsys) -> str:
    assert main(args) == 2
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_missing_checkpoint_exits_2(tmp_path, capsys):
    line = error_of(
        ["evaluate", str(tmp_path / "nope.pt"), "--model", "torchvision:resnet18", *DATA_ARGS],
        capsys,
    )
    assert "nope.pt' does not exist" in line
    assert not (tmp_path / "runs").exists()


def test_mismatched_keys_are_listed(resnet18_file, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["evaluate", str(resnet18_file), "--model", "torchvision:resnet34", *DATA_ARGS]
    line = error_of([*args, "--out", str(out)], capsys)
    assert "does not match the model" in line
    assert "missing keys (layer1.2.bn1.bias" in line and "... and" in line
    assert not out.exists()
    # the other way round: keys the model does not have
    small = tmp_path / "extra.pt"
    state = torch.load(resnet18_file, weights_only=True)
    torch.save({**state, "head.weight": torch.zeros(1)}, small)
    line = error_of(["evaluate", str(small), "--model", "torchvision:resnet18", *DATA_ARGS], capsys)
    assert "1 unexpected keys (head.weight)" in line


def test_invalid_grid_names_the_flags(resnet18_file, capsys):
    args = ["evaluate", str(resnet18_file), "--model", "torchvision:resnet18", *DATA_ARGS]
    line = error_of([*args, "--shifts", "clean", "fgo", "--test-batch-sizes", "0"], capsys)
    assert "--shifts: unknown corruption 'fgo' (did you mean 'fog'?)" in line
    assert "--test-batch-sizes=[0] must be" in line and "gaussian_noise" in line


def factory_that_raises(num_classes: int, in_channels: int, norm_layer):
    raise RuntimeError("no GPU configured")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("torchvision:resnet_nonexistent", "unknown torchvision classification model"),
        ("test_evaluate_checkpoint:factory_that_raises", "no GPU configured"),
        ("no_such_package.models:build", "cannot import module 'no_such_package.models'"),
    ],
)
def test_model_spec_that_does_not_build(resnet18_file, spec, expected, capsys):
    line = error_of(["evaluate", str(resnet18_file), "--model", spec, *DATA_ARGS], capsys)
    assert f"--model {spec} does not build: " in line
    assert expected in line


def clustered_bernoulli(rng, p: float, clusters: int, size: int, concentration: float):
    """0/1 outcomes whose batches share a success rate ~ Beta with mean p (a batch effect)."""
    rates = rng.beta(p * concentration, (1 - p) * concentration, size=clusters)
    return (rng.random((clusters, size)) < rates[:, None]).astype(float).ravel()


def test_cluster_bootstrap_covers_at_the_nominal_level():
    """Known-p Bernoulli outcomes with batch-level clustering, 40 test batches of 8 (a test set of
    5,000 at test batch 128 has 40): 1,000 simulated test sets, Monte Carlo standard error of a
    coverage near 0.95 about 0.007. The interval that resamples whole batches covers >= 0.93; one
    that ignores the clustering (samples resampled) undercovers badly, so the test can fail."""
    rng = np.random.default_rng(2024)
    p, clusters, size, reps = 0.7, 40, 8, 1000
    ids = np.repeat(np.arange(clusters), size)
    covered = naive = 0
    for rep in range(reps):
        x = clustered_bernoulli(rng, p, clusters, size, concentration=4.0)
        interval = cluster_bootstrap(x, ids, resamples=500, seed=rep)
        covered += interval.low <= p <= interval.high
        wrong = cluster_bootstrap(x, None, resamples=500, seed=rep)
        naive += wrong.low <= p <= wrong.high
    assert covered / reps >= 0.93
    assert naive / reps < 0.85


def test_paired_cluster_bootstrap_covers_a_known_difference():
    """A condition 5 points better than the reference on the same samples, the gain varying by
    batch: the interval of the per-sample differences covers 0.05 at >= 0.93 (1,000 sets)."""
    rng = np.random.default_rng(7)
    clusters, size, reps, covered = 40, 8, 1000, 0
    ids = np.repeat(np.arange(clusters), size)
    for rep in range(reps):
        reference = clustered_bernoulli(rng, 0.6, clusters, size, concentration=6.0)
        gain = np.repeat(rng.uniform(0.0, 0.25, clusters), size)  # mean 0.125 of flips up
        condition = reference + ((reference == 0) & (rng.random(reference.size) < gain))
        true = 0.4 * 0.125  # E[reference wrong] * E[gain], independent by construction
        interval = cluster_bootstrap(condition - reference, ids, resamples=500, seed=rep)
        covered += interval.low <= true <= interval.high
    assert covered / reps >= 0.93
