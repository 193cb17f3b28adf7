"""Stacked training: K runs of one grid cell (same norm, options, learning rate, train batch size
and composition; different seeds) trained as one model, each with its own data order,
parameters, optimizer state and running statistics.

At small train batch sizes a step costs per-op dispatch, Python and optimizer overhead far more than
arithmetic; K models stepped as one pay that overhead once. The K models are folded into one network
(`normzoo.bench.execute.train.stacked_model`, which also says where stacking applies). The optimizer
(the run's own, built by `Classifier.configure_optimizers`) steps the stacked tensors: AdamW and SGD
are elementwise, so one optimizer equals K of them; it runs ``fused`` (AdamW) or ``foreach`` (SGD),
since the default CPU optimizer loops over tensors and would dominate.

Why a plain loop and not a Lightning module with manual optimization: Lightning's loggers and
callbacks are per Trainer and every ``self.log`` reaches all of them, while here each of the K
runs has its own curves (and W&B run); its checkpoints hold one model per file. The loop
reproduces what the per-run Lightning path does step by step (`Classifier.train_batch`: the
same order of forward, zero_grad, backward, step, scheduler step; the same logged values at the
same steps; validation at every epoch's end; sampler epochs set as Lightning sets them), so a
stacked run equals the run trained alone up to floating-point rounding (tests/bench/execute/
test_stack.py). A stacked task writes its own resumable checkpoint every
``execution.checkpoint_every_epochs`` epochs (all K models, optimizer, schedule, train orders,
curves) and a killed one resumes from it bit-identically.

Per run, everything stays as for a run trained alone: its row (plus ``stack_size`` and
``stack_slot``), key, safetensors weights (`StackedModel.unstack` gives a plain model of the
run's backbone), curves and W&B run (logged by the parent from the store once the run is
stored). A slot's result does not depend on what the other slots hold, only on the stack size
and its slot (same kernels, same shapes), so a run whose weights are lost is retrained in its
recorded slot of a stack of its recorded size filled with copies of itself
(`normzoo.bench.execute.planning.stack_tasks`) and reproduces its weights bit for bit.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from normzoo.bench.execute.train.module import (
    LOG_EVERY,
    Classifier,
    DivergedError,
    TrainOutcome,
    build_module,
)
from normzoo.bench.execute.train.stacked_model import NotStackable, StackedModel
from normzoo.bench.plan.config import Config
from normzoo.bench.plan.grid import Run
from normzoo.bench.plan.tuning import effective_lr

log = logging.getLogger(__name__)


def stacked_optimizer(stacked: StackedModel, config: Config, run: Run, total_steps: int):
    """The run's optimizer and per-step schedule (`Classifier.configure_optimizers`, so both
    paths share one definition) over the stacked tensors, switched to fused (AdamW) or foreach
    (SGD) kernels: the same elementwise update, without a Python loop over tensors."""
    shim = SimpleNamespace(
        model=stacked.net,
        train_config=config.train,
        train_batch_size=run.train_batch_size,
        lr=effective_lr(config.train, run.train_batch_size, run.lr),
        trainer=SimpleNamespace(estimated_stepping_batches=total_steps),
    )
    configured = Classifier.configure_optimizers(shim)
    optimizer = configured["optimizer"]
    fused = isinstance(optimizer, torch.optim.AdamW)
    for group in optimizer.param_groups:  # read at each step; no state exists yet
        group["fused"], group["foreach"] = (True, False) if fused else (None, True)
    return optimizer, configured["lr_scheduler"]["scheduler"]


@dataclass
class _Slot:
    """What the loop tracks for one run of the stack."""

    run: Run
    datamodule: object
    model: nn.Module  # the run's own model: its initial weights, later its trained ones
    curves: list
    error: DivergedError | None = None
    checked_step: int = 0


def _cat_batches(batches: list, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """K batches ``(x_k, y_k)`` -> ``(N, K*C, ...)`` images and ``(N, K)`` labels."""
    x = torch.cat([b[0] for b in batches], dim=1).to(device)
    y = torch.stack([b[1] for b in batches], dim=1).to(device)
    return x, y


def _slot_losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each slot's mean cross-entropy over its labelled samples (F.cross_entropy's mean)."""
    losses = F.cross_entropy(logits.transpose(1, 2), y, reduction="none")  # (N, K)
    return losses.sum(0) / (y != -100).sum(0)


def _check_finite(slots: list[_Slot], tally: torch.Tensor, step: int, epoch: int) -> None:
    """Mark slots whose loss sum is not finite as diverged (`Classifier._check_finite`)."""
    totals = tally[:, 0].tolist()
    for slot, total in zip(slots, totals, strict=True):
        if slot.error is None and not math.isfinite(total):
            slot.error = DivergedError(
                f"loss became {total} at a step in {slot.checked_step + 1}..{step}"
                f" (epoch {epoch}); lower train.lr or use a batch-independent norm for this"
                " batch size"
            )
        elif slot.error is None:
            slot.checked_step = step


def _log(slots: list[_Slot], step: int, epoch: int, metrics: dict[str, list[float]]) -> None:
    for k, slot in enumerate(slots):
        if slot.error is None:
            for name, values in metrics.items():
                slot.curves.append(
                    {"step": step, "epoch": epoch, "metric": name, "value": float(values[k])}
                )


def _validate(stacked: StackedModel, slots: list[_Slot], device) -> list[float]:
    """Validation accuracy of each slot on its own validation split (`Classifier`'s val/acc)."""
    stacked.eval()
    correct = torch.zeros(stacked.stack, device=device)
    total = 0
    loaders = [slot.datamodule.val_dataloader() for slot in slots]
    with torch.inference_mode():
        for batches in zip(*loaders, strict=True):
            x, y = _cat_batches(batches, device)
            correct += (stacked(x).argmax(2) == y).sum(0)
            total += len(y)
    stacked.train()
    return (correct.float() / max(total, 1)).tolist()


def _stack_key(runs: list[Run]) -> str:
    return "+".join(run.key for run in runs)


def _save_checkpoint(path: Path, runs, stacked, training, slots, progress) -> None:
    """Everything the loop needs to continue after ``progress`` = (epoch, step, seconds)."""
    from normzoo.bench.execute.train.checkpoint import identity

    optimizer, scheduler = training
    state = {
        "normzoo": identity(_stack_key(runs)),
        "progress": list(progress),
        "model": stacked.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "curves": [slot.curves for slot in slots],
        "errors": [None if slot.error is None else str(slot.error) for slot in slots],
        "checked": [slot.checked_step for slot in slots],
        "datamodules": [slot.datamodule.state_dict() for slot in slots],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    torch.save(state, partial)
    os.replace(partial, path)


def _resume(path: Path | None, runs: list[Run], slots: list[_Slot]) -> dict | None:
    """The stack's checkpoint at ``path`` (made for these runs by this code), or None; restores
    each slot's curves, divergence and train order (before its loader is built)."""
    from normzoo.bench.execute.train.checkpoint import resumable

    if path is None or resumable(path, _stack_key(runs)) is None:
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    for k, slot in enumerate(slots):
        slot.curves = state["curves"][k]
        slot.error = None if state["errors"][k] is None else DivergedError(state["errors"][k])
        slot.checked_step = state["checked"][k]
        slot.datamodule.load_state_dict(state["datamodules"][k])
    log.info("%s: resuming the stack from %s", runs[0].name, path)
    return state


def train_stack(
    runs: list[Run],
    config: Config,
    datamodules: list,
    checkpoint: Path | None = None,
) -> list[TrainOutcome | DivergedError]:
    """Train ``runs`` (seeds of one cell) stacked; per run, in order, a `TrainOutcome` with the
    run's own model (unstacked), validation accuracy, curves and an equal share of the time, or
    the `DivergedError` that ended it. Raises `NotStackable` when the models cannot be folded.

    With a ``checkpoint`` path the stack writes a resumable checkpoint there every
    ``execution.checkpoint_every_epochs`` epochs and resumes from one made for the same runs by
    the same code: the result is bit-identical to an uninterrupted stack."""
    from lightning.fabric.utilities.data import _set_sampler_epoch

    start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    slots = []
    for run, datamodule in zip(runs, datamodules, strict=True):
        model = build_module(run, config, datamodule).model  # seeded as when trained alone
        slots.append(_Slot(run, datamodule, model, []))
    stacked = StackedModel([slot.model for slot in slots]).to(device).train()
    resumed = _resume(checkpoint, runs, slots)
    loaders = [slot.datamodule.train_dataloader() for slot in slots]
    if len({len(loader) for loader in loaders}) != 1:
        raise NotStackable(f"runs have different numbers of batches: {[len(x) for x in loaders]}")
    epochs, step, first, seconds_before = config.train.epochs, 0, 0, 0.0
    optimizer, scheduler = stacked_optimizer(stacked, config, runs[0], epochs * len(loaders[0]))
    if resumed is not None:
        stacked.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        first, step, seconds_before = resumed["progress"]
    every = config.execution.checkpoint_every_epochs if checkpoint is not None else 0
    for epoch in range(first, epochs):
        for loader in loaders:
            _set_sampler_epoch(loader, epoch)
        tally = torch.zeros(len(slots), 3, device=device)
        # Lightning takes exactly len(loader) batches and never asks for one more: running a
        # loader to exhaustion would draw one more permutation from its sampler's generator
        # and change the next epoch's order.
        for batches in zip(*(itertools.islice(x, len(x)) for x in loaders), strict=True):
            x, y = _cat_batches(batches, device)
            logits = stacked(x)
            losses = _slot_losses(logits, y)
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            optimizer.step()
            with torch.no_grad():
                correct = (logits.argmax(2) == y).sum(0)
                seen = torch.full_like(losses, len(y))
                tally += torch.stack((losses * len(y), correct, seen), 1)
            if (step + 1) % LOG_EVERY == 0:
                _check_finite(slots, tally, step + 1, epoch)
                lr = optimizer.param_groups[0]["lr"]
                metrics = {"train/loss": losses.tolist(), "train/acc": (correct / len(y)).tolist()}
                _log(slots, step, epoch, {**metrics, "train/lr": [lr] * len(slots)})
            scheduler.step()
            step += 1
        _check_finite(slots, tally, step, epoch)
        _log(slots, step - 1, epoch, {"val/acc": _validate(stacked, slots, device)})
        mean_loss, accuracy = (tally[:, 0] / tally[:, 2]).tolist(), tally[:, 1] / tally[:, 2]
        _log(slots, step - 1, epoch, {"train/epoch_loss": mean_loss, "train/epoch_acc": accuracy})
        if all(slot.error is not None for slot in slots):
            break
        if every and (epoch + 1) % every == 0 and epoch + 1 < epochs:
            progress = (epoch + 1, step, seconds_before + time.perf_counter() - start)
            _save_checkpoint(checkpoint, runs, stacked, (optimizer, scheduler), slots, progress)
    seconds = (seconds_before + time.perf_counter() - start) / len(slots)
    outcomes = []
    for k, slot in enumerate(slots):
        model = stacked.unstack(k, slot.model).cpu().eval()
        val = [c["value"] for c in slot.curves if c["metric"] == "val/acc"]
        outcome = TrainOutcome(model, val[-1] if val else float("nan"), seconds, slot.curves)
        outcomes.append(slot.error or outcome)
    return outcomes
