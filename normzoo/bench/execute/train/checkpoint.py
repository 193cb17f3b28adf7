"""Mid-run checkpoints: a run killed or preempted in training resumes at its last epoch boundary.

With ``execution.checkpoint_every_epochs: N`` (default 1), `EpochCheckpoint` makes an epoch-limited
run (``train.max_steps`` null) write ``<out>/checkpoints/<run key>.ckpt`` (atomic rename) after
epoch N, 2N, ... (validated and logged), as the next one starts: Lightning's training state
(weights, buffers, optimizer and scheduler state, loop counters), the train order's generator
(`NormzooDataModule.state_dict`), the global RNG states, the curve rows logged so far and the
training time spent. `normzoo.bench.execute.train.module.train_run` resumes from it with
``trainer.fit(ckpt_path=...)``: the rest of the run is bit-identical to training it without the
interruption (tests/bench/test_resume.py). A checkpoint made for another run key or by other code
versions is removed with a warning and the run trains from scratch. The parent removes a run's
checkpoint once its training result is stored.
"""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint

log = logging.getLogger(__name__)


def identity(run_key: str) -> dict[str, str]:
    """What a checkpoint must match to be resumed: the run and every code version."""
    from normzoo.bench.record.provenance import code_versions

    return {"run_key": run_key, **{key: str(value) for key, value in code_versions().items()}}


def resumable(path: Path, run_key: str) -> Path | None:
    """``path`` if it holds a checkpoint of run ``run_key`` made by this code, else None; a
    checkpoint that does not match, or cannot be read, is removed with a warning."""
    if not path.exists():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)["normzoo"]
    except Exception as error:  # truncated, not a checkpoint, an older format
        reason = f"unreadable ({type(error).__name__}: {error})"
    else:
        expected = identity(run_key)
        different = [key for key in expected if saved.get(key) != expected[key]]
        if not different:
            return path
        reason = "made for " + ", ".join(
            f"{key}={saved.get(key)} (now {expected[key]})" for key in different
        )
    log.warning("removing checkpoint %s: %s; the run trains from scratch", path, reason)
    path.unlink(missing_ok=True)
    return None


def rng_states() -> dict:
    """The global RNG streams (torch, CUDA, numpy, random) as weights-only-loadable values."""
    numpy = np.random.get_state(legacy=False)
    states = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": torch.from_numpy(numpy["state"]["key"].astype(np.int64)),
            "pos": int(numpy["state"]["pos"]),
            "has_gauss": int(numpy["has_gauss"]),
            "gauss": float(numpy["gauss"]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    """Undo `rng_states`: continue every global RNG stream where it was."""
    torch.set_rng_state(states["torch"])
    numpy = states["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": numpy["key"].numpy().astype(np.uint32), "pos": numpy["pos"]},
            "has_gauss": numpy["has_gauss"],
            "gauss": numpy["gauss"],
        }
    )
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class EpochCheckpoint(Checkpoint):
    """Write a resumable checkpoint of the fit to ``path`` after every ``every``-th epoch.

    The state is taken at the end of the epoch, after its validation and the module's epoch-end
    hook (where Lightning's own epoch-end checkpoints are taken, and resume from), and written
    when the next epoch starts: only then has Lightning handed the epoch's metrics to the
    loggers, so the curve rows of ``recorder`` (the run's `CurveRecorder`) are complete. Nothing
    trains in between, so the held state is still current. A fit that ends there writes nothing.
    """

    def __init__(self, path: Path, every: int, run_key: str, recorder) -> None:
        self.path, self.every, self.run_key, self.recorder = Path(path), every, run_key, recorder
        self.seconds_before = 0.0  # training time of the processes before this one (resumed)
        self._started = time.perf_counter()
        self._pending: dict | None = None  # a checkpoint taken at an epoch end, not yet written

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every == 0:
            # the first half of `trainer.save_checkpoint`; tensors are referenced, not copied
            self._pending = trainer._checkpoint_connector.dump_checkpoint()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is None:
            return
        checkpoint, self._pending = self._pending, None
        checkpoint["callbacks"][self.state_key]["rows"] = list(self.recorder.rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(f".{os.getpid()}.partial")
        trainer.strategy.save_checkpoint(checkpoint, partial)  # rank 0 writes
        if trainer.is_global_zero:
            os.replace(partial, self.path)
        trainer.strategy.barrier("EpochCheckpoint")

    def state_dict(self) -> dict:
        return {
            "rows": [],  # filled in when the checkpoint is written
            "seconds": self.seconds_before + time.perf_counter() - self._started,
            "rng": rng_states(),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.recorder.rows[:] = state_dict["rows"]
        self.seconds_before = state_dict["seconds"]
        # Lightning restores callbacks just before it builds the train loader and draws its
        # first number (the loader's base seed), as the uninterrupted fit does after the save
        set_rng_states(state_dict["rng"])

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["normzoo"] = identity(self.run_key)
