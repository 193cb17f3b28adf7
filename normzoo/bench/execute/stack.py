"""Stacked training: K runs of one grid cell (same norm, options, learning rate, train batch size
and composition; different seeds) trained as one model, each with its own data order,
parameters, optimizer state and running statistics.

At small train batch sizes a step costs per-op dispatch, Python and optimizer overhead far more
than arithmetic; K models stepped as one pay that overhead once. The K models are folded into
one network whose channels are the K models' channels side by side: every ``nn.Conv2d`` becomes
a convolution with ``groups=K`` (slot k's images enter as channels ``[k*C_in, (k+1)*C_in)``), a
norm over C channels becomes the same norm over K*C channels (group counts times K, so every
statistic stays inside one model's channels), the linear head one batched matrix product. The
optimizer (the run's own, built by `Classifier.configure_optimizers`) steps the stacked tensors:
AdamW and SGD are elementwise, so one optimizer equals K of them; it runs ``fused`` (AdamW) or
``foreach`` (SGD), since the default CPU optimizer loops over tensors and would dominate.

Where it applies (`stack_support`): backbones ``small_cnn`` and ``resnet_tiny`` with plain
convolutions, and every registered norm whose statistics are per channel or per group of
channels (`FOLDABLE_NORMS`). ``rms`` normalizes across all channels of a position and is trained
alone; so are runs under DDP, step-limited runs (``train.max_steps``: Lightning ends them
mid-epoch and logs accordingly), and a layer with a per-model scalar parameter (filter response
norm's ``learn_eps``).

Why a plain loop and not a Lightning module with manual optimization: Lightning's loggers and
callbacks are per Trainer and every ``self.log`` reaches all of them, while here each of the K
runs has its own curves (and W&B run); its checkpoints hold one model per file. The loop
reproduces what the per-run Lightning path does step by step (`Classifier.training_step`: the
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
(`normzoo.bench.run.stack_tasks`) and reproduces its weights bit for bit.
"""

from __future__ import annotations

import copy
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

from normzoo.bench.execute.module import (
    LOG_EVERY,
    Classifier,
    DivergedError,
    TrainOutcome,
    build_module,
)
from normzoo.bench.plan.config import Config
from normzoo.bench.plan.grid import Run
from normzoo.bench.plan.tuning import effective_lr
from normzoo.layers import (
    BatchNorm,
    BatchRenorm,
    EvoNormB0,
    EvoNormS0,
    FilterResponseNorm,
    GhostBatchNorm,
    GroupNorm,
    InstanceNorm,
    LayerNorm,
    NoNorm,
)

log = logging.getLogger(__name__)

STACKABLE_BACKBONES = ("small_cnn", "resnet_tiny")
# Norm classes whose statistics never mix channels of different models once the K models'
# channels sit side by side: per channel, or per group of channels (the group count, named
# here, is multiplied by K).
_FOLDS: dict[type, tuple[str, ...]] = {
    BatchRenorm: (),
    GhostBatchNorm: (),
    BatchNorm: (),
    EvoNormB0: (),
    FilterResponseNorm: (),
    NoNorm: (),
    InstanceNorm: ("num_groups",),
    LayerNorm: ("num_groups",),
    GroupNorm: ("num_groups",),
    EvoNormS0: ("groups",),
}
_CHANNEL_ATTRIBUTES = ("num_features", "num_channels")
FOLDABLE_NORMS = (
    "batch",
    "batch_renorm",
    "evonorm_b0",
    "evonorm_s0",
    "filter_response",
    "ghost_batch",
    "group",
    "instance",
    "layer",
    "none",
)


class NotStackable(ValueError):
    """The models cannot be folded into one; train them one by one."""


def stack_support(config: Config, run: Run) -> str | None:
    """Why ``run`` cannot train stacked with the other seeds of its cell (None: it can)."""
    if config.execution.stack <= 1:
        return "execution.stack is 1"
    if config.execution.ddp_devices > 1:
        return "DDP trains one run over several processes"
    if config.train.max_steps:
        return "step-limited training (train.max_steps) ends mid-epoch"
    if config.model.backbone not in STACKABLE_BACKBONES:
        return f"backbone {config.model.backbone} (stackable: {', '.join(STACKABLE_BACKBONES)})"
    if config.model.options.get("conv", "plain") != "plain":
        return "weight-standardized convolutions"
    if run.norm.name not in FOLDABLE_NORMS:
        return f"norm {run.norm.name} mixes channels (stackable: {', '.join(FOLDABLE_NORMS)})"
    if run.norm.options.get("learn_eps"):
        return "a learned scalar eps per layer"
    return None


# ---- folding K models into one ---------------------------------------------------------------


class StackedLinear(nn.Module):
    """K linear layers applied to K feature blocks: ``(N, K*in) -> (N, K, out)``.

    The bias is kept flat (``K*out``) so that it stays a 1-d tensor like each model's bias
    (the optimizer's weight-decay groups split parameters by dimension).
    """

    def __init__(self, linears: list[nn.Linear]) -> None:
        super().__init__()
        self.stack, self.in_features = len(linears), linears[0].in_features
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in linears]).clone())
        bias = [m.bias.detach() for m in linears] if linears[0].bias is not None else None
        self.bias = nn.Parameter(torch.cat(bias).clone()) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], self.stack, self.in_features)
        y = torch.einsum("nki,koi->nko", x, self.weight)
        return y if self.bias is None else y + self.bias.view(self.stack, -1)


def _stack_conv(convs: list[nn.Conv2d]) -> nn.Conv2d:
    c, k = convs[0], len(convs)
    stacked = nn.Conv2d(
        k * c.in_channels,
        k * c.out_channels,
        c.kernel_size,
        c.stride,
        c.padding,
        c.dilation,
        k * c.groups,
        c.bias is not None,
        c.padding_mode,
        device=c.weight.device,
        dtype=c.weight.dtype,
    )
    with torch.no_grad():
        stacked.weight.copy_(torch.cat([m.weight for m in convs]))
        if c.bias is not None:
            stacked.bias.copy_(torch.cat([m.bias for m in convs]))
    return stacked


def _fold_rule(module: nn.Module) -> tuple[str, ...] | None:
    for cls in type(module).__mro__:
        if cls in _FOLDS:
            return _FOLDS[cls]
    return None


def _stack_norm(norms: list[nn.Module], layout: dict, prefix: str) -> nn.Module:
    """One norm over K*C channels holding the K norms' parameters and buffers."""
    first, k = norms[0], len(norms)
    stacked = copy.deepcopy(first)
    for attribute in (*_CHANNEL_ATTRIBUTES, *_fold_rule(first)):
        derived = isinstance(getattr(type(first), attribute, None), property)
        if hasattr(stacked, attribute) and not derived:
            setattr(stacked, attribute, k * getattr(first, attribute))
    if any(next(c.parameters(), None) is not None for c in first.children()) or any(
        next(c.buffers(), None) is not None for c in first.children()
    ):
        raise NotStackable(f"{type(first).__name__} holds a submodule with state")
    channels = next(getattr(first, a) for a in _CHANNEL_ATTRIBUTES if hasattr(first, a))
    for name, value in [
        *first.named_parameters(recurse=False),
        *first.named_buffers(recurse=False),
    ]:
        values = [getattr(m, name) for m in norms]
        if value.ndim == 0:
            if isinstance(value, nn.Parameter) or any(not torch.equal(v, value) for v in values):
                raise NotStackable(f"{type(first).__name__}.{name} is a per-model scalar")
            layout[prefix + name] = None
            continue
        dim = 0 if value.ndim == 1 else 1
        if value.numel() != channels or value.shape[dim] != channels:
            raise NotStackable(f"{type(first).__name__}.{name} is not one value per channel")
        joined = torch.cat([v.detach() for v in values], dim).clone()
        if isinstance(value, nn.Parameter):
            setattr(stacked, name, nn.Parameter(joined, requires_grad=value.requires_grad))
        else:
            setattr(stacked, name, joined)
        layout[prefix + name] = ("cat", dim)
    return stacked


def _fold(modules: list[nn.Module], layout: dict, prefix: str = "") -> nn.Module:
    """The K modules (same structure) as one module; ``layout`` gets how each tensor stacks."""
    first = modules[0]
    if type(first) is nn.Conv2d:
        layout.update({prefix + n: ("cat", 0) for n, _ in first.named_parameters()})
        return _stack_conv(modules)
    if type(first) is nn.Linear:
        layout[prefix + "weight"] = ("stack", 0)
        if first.bias is not None:
            layout[prefix + "bias"] = ("cat", 0)
        return StackedLinear(modules)
    if _fold_rule(first) is not None:
        return _stack_norm(modules, layout, prefix)
    if (
        next(first.parameters(recurse=False), None) is not None
        or next(first.buffers(recurse=False), None) is not None
    ):
        raise NotStackable(f"no stacked form of {type(first).__name__}")
    folded = copy.copy(first)
    folded._modules = {
        name: _fold([m._modules[name] for m in modules], layout, f"{prefix}{name}.")
        for name, child in first._modules.items()
    }
    return folded


class StackedModel(nn.Module):
    """K models of one architecture as one: input ``(N, K*C, H, W)`` -> logits ``(N, K, classes)``.

    ``unstack(k, model)`` loads slot k's parameters and buffers into a model of the run's backbone
    (everything downstream of training takes that plain model).
    """

    def __init__(self, models: list[nn.Module]) -> None:
        super().__init__()
        self.stack = len(models)
        self.layout: dict[str, tuple[str, int] | None] = {}
        self.net = _fold(models, self.layout)
        missing = set(models[0].state_dict()) - set(self.layout)
        if missing:
            raise NotStackable(f"tensors without a stacked form: {sorted(missing)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def slot_state(self, k: int) -> dict[str, torch.Tensor]:
        """Slot k's state dict, in the layout of the original model."""
        out = {}
        for name, value in self.net.state_dict().items():
            how = self.layout[name]
            if how is None:
                out[name] = value.clone()
            elif how[0] == "stack":
                out[name] = value[k].clone()
            else:
                out[name] = value.chunk(self.stack, how[1])[k].clone()
        return out

    def unstack(self, k: int, model: nn.Module) -> nn.Module:
        """Load slot k into ``model`` (a model of the run's backbone) and return it."""
        model.load_state_dict(self.slot_state(k))
        return model


# ---- training --------------------------------------------------------------------------------


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
    from normzoo.bench.execute.checkpoint import identity

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
    from normzoo.bench.execute.checkpoint import resumable

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
