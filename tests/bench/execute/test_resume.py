"""Mid-run checkpoints: a run killed after an epoch resumes in a fresh process bit-identically.

The reference is the same run trained without interruption (and without checkpoints): final
weights and buffers (BatchNorm running statistics, num_batches_tracked), curves, and the whole
checkpoint state one epoch later (optimizer and scheduler state, loop counters, data order
generator, RNG states) must be equal bit for bit.
"""

import dataclasses
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from normzoo.bench.execute.messages import Trained
from normzoo.bench.execute.train.checkpoint import resumable
from normzoo.bench.execute.train.module import train_run
from normzoo.bench.execute.weights import checkpoint_path
from normzoo.bench.execute.worker import _datamodule, in_process_results
from normzoo.bench.plan.config import load_config
from normzoo.bench.plan.grid import expand_runs
from normzoo.bench.record import outdir
from normzoo.bench.record.store import Store
from normzoo.bench.run import run_grid

ROOT = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.slow

# 288 training images at batch 16: 18 steps per epoch, 3 epochs; SGD with momentum and a
# cosine schedule, so optimizer and scheduler state matter after the resume.
RESUME = {
    "experiment": {"name": "resume"},
    "data": {
        "dataset": "synthetic",
        "options": {"train_size": 320, "test_size": 32, "image_size": 8},
    },
    "model": {"backbone": "small_cnn", "options": {"widths": [8, 16, 16, 16]}},
    "norms": ["batch"],
    "train": {
        "batch_sizes": [16],
        "epochs": 3,
        "optimizer": "sgd",
        "lr": 0.05,
        "momentum": 0.9,
        "seeds": 1,
    },
    "eval": {"test_batch_sizes": [32], "stats_modes": ["running"]},
    "execution": {"wandb": "disabled", "workers": 1},
}

# Trains the config's run in a fresh process; with KILL_AT=k it dies (os._exit) right after
# the checkpoint written as epoch k starts, like a process killed during epoch k.
TRAIN = """
import logging, os, sys, torch
from pathlib import Path
from normzoo.bench.execute.train import checkpoint
from normzoo.bench.plan.config import load_config
from normzoo.bench.plan.grid import expand_runs
from normzoo.bench.execute.train.module import train_run
from normzoo.bench.execute.worker import _datamodule, checkpoint_path

config_path, out, kill_at = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
if kill_at:
    write = checkpoint.EpochCheckpoint.on_train_epoch_start

    def write_then_die(self, trainer, pl_module):
        write(self, trainer, pl_module)
        if trainer.current_epoch == kill_at:
            os._exit(9)

    checkpoint.EpochCheckpoint.on_train_epoch_start = write_then_die
torch.set_num_threads(1)
logging.basicConfig(level=logging.INFO)
config = load_config(config_path)
run = expand_runs(config)[0]
outcome = train_run(run, config, _datamodule(run, config), checkpoint=checkpoint_path(out, run.key))
torch.save({"state": outcome.model.state_dict(), "curves": outcome.curves}, out / "outcome.pt")
"""


def _config(tmp_path: Path, **execution):
    raw = {**RESUME, "execution": {**RESUME["execution"], **execution}}
    path = tmp_path / "resume.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, load_config(path)


def _python(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=300
    )


def _flat(value, prefix=""):
    """A nested checkpoint as {path: leaf}."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flat(item, f"{prefix}/{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _flat(item, f"{prefix}[{index}]")
    else:
        yield prefix, value


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return a == b


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert [k for k in a if not _same(a[k], b[k])] == []


def test_killed_run_resumes_bit_identically_in_a_fresh_process(tmp_path):
    path, config = _config(tmp_path)
    run = expand_runs(config)[0]
    torch.set_num_threads(1)

    # the reference: no checkpoints at all
    plain_config = dataclasses.replace(
        config, execution=dataclasses.replace(config.execution, checkpoint_every_epochs=0)
    )
    plain = train_run(run, plain_config, _datamodule(run, plain_config), checkpoint=None)
    # uninterrupted with checkpoints: same result; the last checkpoint is of epoch 1's end
    whole = tmp_path / "whole"
    ckpt = checkpoint_path(whole, run.key)
    uninterrupted = train_run(run, config, _datamodule(run, config), checkpoint=ckpt)
    _assert_same_state(plain.model.state_dict(), uninterrupted.model.state_dict())
    assert plain.curves == uninterrupted.curves
    reference_checkpoint = torch.load(ckpt, weights_only=True)
    assert (reference_checkpoint["epoch"], reference_checkpoint["global_step"]) == (1, 36)

    # killed during epoch 1 (after its checkpoint), resumed in another fresh process
    broken = tmp_path / "broken"
    broken.mkdir()
    killed = _python("-c", TRAIN, str(path), str(broken), "1")
    assert killed.returncode == 9, killed.stderr[-2000:]
    first = torch.load(checkpoint_path(broken, run.key), weights_only=True)
    assert (first["epoch"], first["global_step"]) == (0, 18)  # epoch 0's end
    resumed = _python("-c", TRAIN, str(path), str(broken), "0")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr
    outcome = torch.load(broken / "outcome.pt", weights_only=True)

    state = outcome["state"]
    assert any(k.endswith("num_batches_tracked") for k in state)
    assert any(k.endswith("running_var") for k in state)
    _assert_same_state(plain.model.state_dict(), state)
    assert outcome["curves"] == plain.curves
    assert {row["epoch"] for row in outcome["curves"]} == {0, 1, 2}
    # the resumed process's own checkpoint at epoch 1's end: optimizer, scheduler, loops, data
    # order, RNG states and curve rows all equal the uninterrupted run's (only the timing differs)
    later = dict(_flat(torch.load(checkpoint_path(broken, run.key), weights_only=True)))
    reference = dict(_flat(reference_checkpoint))
    seconds = "/callbacks/EpochCheckpoint/seconds"
    assert later.pop(seconds) > 0 and reference.pop(seconds) > 0
    assert any(k.startswith("/optimizer_states") for k in reference)
    assert "/NormzooDataModule/train_generator" in reference
    _assert_same_state(reference, later)


def test_mismatched_or_damaged_checkpoints_are_removed_not_used(tmp_path, monkeypatch, caplog):
    _, config = _config(tmp_path)
    run = expand_runs(config)[0]
    torch.set_num_threads(1)
    out = tmp_path / "out"
    ckpt = checkpoint_path(out, run.key)
    train_run(run, config, _datamodule(run, config), checkpoint=ckpt)
    good = ckpt.read_bytes()
    assert resumable(ckpt, run.key) == ckpt

    caplog.set_level(logging.WARNING)
    assert resumable(ckpt, "0123456789abcdef") is None  # another run's checkpoint
    assert not ckpt.exists() and "run_key=" in caplog.text

    import normzoo.bench.record.provenance as provenance  # checkpoint.identity reads it there

    ckpt.write_bytes(good)
    versions = {**provenance.code_versions(), "normzoo_version": "0.0.0-other"}
    monkeypatch.setattr(provenance, "code_versions", lambda: versions)
    assert resumable(ckpt, run.key) is None  # made by another normzoo version
    assert not ckpt.exists() and "normzoo_version=" in caplog.text
    monkeypatch.undo()

    ckpt.write_bytes(good[: len(good) // 2])  # truncated by a kill during a non-atomic copy
    assert resumable(ckpt, run.key) is None
    assert not ckpt.exists() and "unreadable" in caplog.text

    # train_run does not resume a mismatched one: it trains from scratch, equal to a fresh run
    other = checkpoint_path(out, "0123456789abcdef")
    other.write_bytes(good)
    plain = train_run(run, config, _datamodule(run, config), checkpoint=None)
    trained = train_run(run, config, _datamodule(run, config), checkpoint=other)
    _assert_same_state(plain.model.state_dict(), trained.model.state_dict())
    assert trained.curves == plain.curves


KILLED_GRID = """
import os, sys
from normzoo.bench.execute.train import checkpoint
from normzoo.bench.plan.config import load_config
from normzoo.bench.run import run_grid

write = checkpoint.EpochCheckpoint.on_train_epoch_start

def write_then_die(self, trainer, pl_module):
    write(self, trainer, pl_module)
    if trainer.current_epoch == 2:
        os._exit(9)  # the invocation is killed during epoch 2 of its first run

checkpoint.EpochCheckpoint.on_train_epoch_start = write_then_die
run_grid(load_config(sys.argv[1]), sys.argv[2], show_progress=False)
"""


def test_killed_invocation_resumes_its_run_and_removes_the_checkpoint(tmp_path):
    path, config = _config(tmp_path)
    run = expand_runs(config)[0]
    out = tmp_path / "out"
    killed = _python("-c", KILLED_GRID, str(path), str(out))
    assert killed.returncode == 9, killed.stderr[-2000:]
    ckpt = checkpoint_path(out, run.key)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1  # epoch 1's end
    with Store(out) as store:
        assert store.statuses() == {}

    seen = []

    def watching(tasks, config, out_dir, tracker=None):
        for message in in_process_results(tasks, config, out_dir, tracker):
            if isinstance(message, Trained):  # the checkpoint stays until the run is stored
                seen.append(ckpt.exists())
            yield message

    summary = run_grid(config, out, show_progress=False, executor=watching)
    assert (summary.ok, summary.failed) == (1, 0)
    assert seen == [True] and not ckpt.exists()

    reference = tmp_path / "reference"
    run_grid(config, reference, show_progress=False)
    from safetensors.torch import load_file

    weights = [load_file(d / "weights" / f"{run.key}.safetensors") for d in (out, reference)]
    _assert_same_state(*weights)
    curves = []
    for directory in (out, reference):
        with Store(directory) as store:
            curves.append(store.curves_frame([run.key]).drop(columns=["run_key"], errors="ignore"))
    assert curves[0].equals(curves[1]) and len(curves[0]) > 0

    # --fresh deletes the checkpoints dir with everything else normzoo made
    ckpt.parent.mkdir(exist_ok=True)
    ckpt.write_bytes(b"x")
    assert "checkpoints" in outdir.fresh(out)
    assert not ckpt.parent.exists()
