"""Training with Lightning: a LightningModule for any backbone, and `train_run` for one grid run."""

from __future__ import annotations

import functools
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import Logger
from torch import nn

from normzoo.bench.plan.config import Config, TrainSection
from normzoo.bench.plan.grid import Run
from normzoo.bench.plan.tuning import effective_lr
from normzoo.bench.record.wandb_layout import built_config
from normzoo.models import describe, describe_line

log = logging.getLogger(__name__)

# Steps between logged training points (and divergence checks).
LOG_EVERY = 10
# Optimizer steps per call of Lightning's training loop (Classifier.training_step).
STEPS_PER_CALL = 16


class DivergedError(RuntimeError):
    """Training produced a non-finite loss; the run is recorded with status ``diverged``."""


class Classifier(L.LightningModule):
    """Cross-entropy training of ``model`` with the optimizer and schedule of a TrainSection.

    The step never waits for the device: loss and accuracy accumulate in device tensors and are
    handed to Lightning's loggers (``self.log``) only every ``log_every`` steps and at epoch end,
    where Lightning converts them to numbers anyway; a non-finite loss is detected there too.
    """

    def __init__(
        self,
        model: nn.Module,
        train: TrainSection,
        train_batch_size: int,
        log_every: int = 10,
        lr: float | None = None,
        steps_per_call: int | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.train_config = train
        self.train_batch_size = train_batch_size
        self.log_every = log_every
        # the selected learning rate of the run (None: train.lr under train.lr_scaling)
        self.lr = effective_lr(train, train_batch_size, lr)
        # The step drives the optimizer itself (forward, zero_grad, backward, step, scheduler
        # step: the order of Lightning's automatic optimization, same numbers) and so skips its
        # closure machinery, about a third of Lightning's per-step cost on CPU.
        self.automatic_optimization = False
        # per epoch, on the device: [sum of loss * batch size, correct predictions, samples]
        self._tally: torch.Tensor | None = None
        # (loss, logits, labels) of the steps since the last logging interval, all detached
        self._pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._checked_step = 0  # the last step whose losses were checked finite
        # optimizer steps per call of Lightning's loop (None: STEPS_PER_CALL); see training_step
        self.steps_per_call = steps_per_call or STEPS_PER_CALL
        self._fast = self._direct = False  # set per call of training_step
        self._log_step = 0

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        """An (inputs, labels) batch moves tensor by tensor, and stays as it is where it is on
        the device already (the CPU case): Lightning's generic transfer walks the collection
        through ``apply_to_collection``, ~0.03 ms per step measured here, about 1% of a
        small-batch CPU step."""
        if type(batch) in (list, tuple) and all(isinstance(t, torch.Tensor) for t in batch):
            if all(t.device == device for t in batch):
                return batch
            blocking = device.type == "cpu"
            return type(batch)(t.to(device, non_blocking=not blocking) for t in batch)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Under DDP each process trains on its slice of the global batch (bench/ddp.py)."""
        if self.trainer.training and self.trainer.world_size > 1:
            from normzoo.bench.execute.train.ddp import shard

            return shard(batch, self.trainer.global_rank, self.trainer.world_size)
        return batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, dataloader_iter) -> torch.Tensor | None:
        """Up to ``steps_per_call`` optimizer steps, one per batch taken from Lightning's data
        iterator (its ``dataloader_iter`` step flavour); returns the last loss.

        Lightning's loop costs ~0.5 ms per call on CPU (hooks, progress, logger connector), a
        sixth of a small-batch step; taking several batches per call pays it once for all of
        them. Everything a step computes is unchanged and in the same order (``train_batch``),
        and Lightning's counters are advanced as if each batch had been its own call, so the
        global step, the steps the loggers see, ``max_steps``, the epoch's end, validation and
        checkpoints are those of one batch per call (tested bit for bit). What is not: per-batch
        callback hooks (``on_train_batch_start/end``) run once per call. One batch per call
        under DDP, where each forward must go through the wrapper that syncs gradients, and
        where the Trainer validates within an epoch (``val_check_interval``).
        """
        trainer = self.trainer
        loop = trainer.fit_loop.epoch_loop
        # one batch a call under DDP, and where validation runs inside an epoch (a Trainer's
        # val_check_interval): Lightning decides it between calls
        check = trainer.val_check_batch  # None: validation on a wall-clock interval
        epoch_end = isinstance(check, int | float) and check >= trainer.num_training_batches
        calls = self.steps_per_call if trainer.world_size == 1 and epoch_end else 1
        limit = trainer.max_steps if trainer.max_steps >= 0 else math.inf
        self._fast = self._fast_path()
        self._direct = self._direct_transfer()
        first_step, loss, done = loop._batches_that_stepped, None, 0
        while done < calls and not dataloader_iter.done and trainer.global_step < limit:
            try:
                batch, batch_idx, _ = next(dataloader_iter)
            except StopIteration:  # an iterable without a length ends here
                break
            self._log_step = first_step + done  # the step Lightning's loggers would be given
            loss = self.train_batch(self._to_device(batch), batch_idx)
            done += 1
        if done > 1:  # Lightning counts one batch for this call; count the others
            loop.batch_progress.increment_by(done - 1)
            loop._batches_that_stepped += done - 1
        return loss

    def train_batch(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One optimizer step on one batch: forward, loss, zero_grad, backward, optimizer step,
        metrics, scheduler step (the order of Lightning's automatic optimization)."""
        x, y = batch
        step = self.global_step  # before the optimizer step, which advances it
        optimizer = self.optimizers()
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        if self._fast:  # what manual_backward and LightningOptimizer.step do here, minus hooks
            loss.backward()
            optimizer.optimizer.step()
            progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
            progress.increment_ready()
            progress.increment_completed()
        else:
            self.manual_backward(loss)
            optimizer.step()
        # no host sync: detached tensors wait for the next logging interval
        self._pending.append((loss.detach(), logits.detach(), y))
        if (step + 1) % self.log_every == 0:
            self._log_train_step(optimizer.param_groups[0]["lr"], len(y))
        self.lr_schedulers().step()  # per step, after logging the rate this step used
        return loss

    def _fast_path(self) -> bool:
        """Whether backward and optimizer step may skip Lightning's wrappers: one process,
        full precision, and no callback that listens to the hooks those wrappers call."""
        from lightning.pytorch.plugins.precision import Precision
        from lightning.pytorch.strategies import SingleDeviceStrategy
        from lightning.pytorch.utilities.model_helpers import is_overridden

        trainer = self.trainer
        if type(trainer.precision_plugin) is not Precision:
            return False
        if not isinstance(trainer.strategy, SingleDeviceStrategy):
            return False
        hooks = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")
        listeners = [*trainer.callbacks, self]
        return not any(
            is_overridden(hook, c, L.Callback if c is not self else L.LightningModule)
            for c in listeners
            for hook in hooks
        )

    def _direct_transfer(self) -> bool:
        """Whether a batch may go to the device through this module's own transfer hooks alone:
        the fast path, and no datamodule or subclass hook that Lightning would also call."""
        from lightning.pytorch.utilities.model_helpers import is_overridden

        datamodule = self.trainer.datamodule
        hooks = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")
        if datamodule is not None and any(
            is_overridden(hook, datamodule, L.LightningDataModule) for hook in hooks
        ):
            return False
        return self._fast and not is_overridden("on_before_batch_transfer", self, Classifier)

    def _to_device(self, batch):
        """What Lightning does to a batch before a step (its data iterator flavour leaves it to
        the step): precision conversion and the transfer hooks of module and datamodule; the
        module's own hooks directly where nothing else would run."""
        trainer = self.trainer
        if self._direct:
            batch = self.transfer_batch_to_device(batch, trainer.strategy.root_device, 0)
            return self.on_after_batch_transfer(batch, 0)
        batch = trainer.precision_plugin.convert_input(batch)
        batch = self._on_before_batch_transfer(batch, dataloader_idx=0)
        return trainer.strategy.batch_to_device(batch, dataloader_idx=0)

    def _flush(self) -> torch.Tensor | None:
        """Fold the steps waiting since the last flush into the epoch's tally; returns the
        number of correct predictions of the last of them (None if none waited)."""
        if not self._pending:
            return None
        losses, logits, labels = zip(*self._pending, strict=True)
        self._pending = []
        sizes = [len(y) for y in labels]
        hits = torch.cat(logits).argmax(1) == torch.cat(labels)
        loss_sum = (torch.stack(losses) * torch.tensor(sizes, device=hits.device)).sum()
        if self._tally is None:
            self._tally = torch.zeros(3, dtype=torch.float32, device=hits.device)
        seen = torch.tensor(sum(sizes), dtype=torch.float32, device=hits.device)
        self._tally.add_(torch.stack((loss_sum.float(), hits.sum().float(), seen)))
        return hits[-sizes[-1] :].sum()

    def _log_train_step(self, lr: float, batch_size: int) -> None:
        """Check the losses since the last check, and hand the step's loss, accuracy and
        learning rate to the loggers, as Lightning would at its ``log_every_n_steps``; one
        host sync for all of it."""
        loss = self._pending[-1][0]
        correct = self._flush()
        # float64 holds each value exactly as the float32 tensor Lightning would convert
        values = (self._tally[0], loss, correct / batch_size)
        total, loss_value, acc = torch.stack([v.double() for v in values]).tolist()
        self._check_finite(total)
        metrics = {
            "train/loss": loss_value,
            "train/acc": acc,
            "train/lr": lr,
            "epoch": self.current_epoch,
        }
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self._log_step)
            logger.save()

    def _check_finite(self, total: float | None = None) -> None:
        """Raise DivergedError if a loss since the last check was not finite: the epoch's loss
        sum is then not finite (NaN and inf propagate through the sum). The one host sync, at
        logging intervals and epoch end only (``total``: the loss sum, if already read)."""
        if total is None:
            self._flush()
            if self._tally is None:
                return
            total = float(self._tally[0])
        if not math.isfinite(total):
            raise DivergedError(
                f"loss became {total} at a step in {self._checked_step + 1}..{self.global_step}"
                f" (epoch {self.current_epoch});"
                " lower train.lr or use a batch-independent norm for this batch size"
            )
        self._checked_step = self.global_step

    def on_train_epoch_end(self) -> None:
        self._check_finite()
        if self._tally is not None:
            loss_sum, correct, seen = self._tally
            # one value per epoch (batch_size: nothing to average; the iterator flavour asks)
            self.log("train/epoch_loss", loss_sum / seen, batch_size=1)
            self.log("train/epoch_acc", correct / seen, batch_size=1)
            self._tally.zero_()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["checked_step"] = self._checked_step  # the divergence message's step range

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._checked_step = checkpoint.get("checked_step", 0)

    def on_validation_epoch_start(self) -> None:
        self._val_correct: torch.Tensor | int = 0
        self._val_loss: torch.Tensor | float = 0.0
        self._val_total = 0

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.model(x)
        self._val_correct = self._val_correct + (logits.argmax(1) == y).sum()
        self._val_loss = self._val_loss + F.cross_entropy(logits, y, reduction="sum")
        self._val_total += len(y)

    def on_validation_epoch_end(self) -> None:
        """The validation curve: accuracy and loss once per epoch (the store's curves table)."""
        total = max(self._val_total, 1)
        correct = torch.as_tensor(self._val_correct, dtype=torch.float32, device=self.device)
        loss = torch.as_tensor(self._val_loss, dtype=torch.float32, device=self.device)
        self.log("val/acc", correct / total)
        self.log("val/loss", loss / total)

    def configure_optimizers(self):
        cfg = self.train_config
        lr = self.lr
        decay = [p for p in self.model.parameters() if p.ndim > 1]
        no_decay = [p for p in self.model.parameters() if p.ndim <= 1]  # norm affine and biases
        groups = [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if cfg.optimizer == "sgd":
            optimizer = torch.optim.SGD(
                groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0
            )
        else:
            optimizer = torch.optim.AdamW(groups, lr=lr)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        if cfg.schedule == "cosine":
            factor = lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))  # noqa: E731
        elif cfg.schedule == "step":
            factor = lambda step: 0.1 ** ((step >= total // 2) + (step >= 3 * total // 4))  # noqa: E731
        else:
            factor = lambda step: 1.0  # noqa: E731
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


class CurveRecorder(Logger):
    """A Lightning logger that keeps every logged metric as a curve row for the results store.

    Rows are ``{step, epoch, metric, value}``; the parent process writes them to the store's
    ``curves`` table, so the curves exist with or without W&B.
    """

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict] = []

    @property
    def name(self) -> str:
        return "curves"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        """Inputs live in the runs table; nothing to record here."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        metrics = dict(metrics)
        epoch = metrics.pop("epoch", None)
        for metric, value in metrics.items():
            self.rows.append(
                {
                    "step": int(step or 0),
                    "epoch": None if epoch is None else int(epoch),
                    "metric": metric,
                    "value": float(value),
                }
            )


@dataclass
class TrainOutcome:
    """A trained model plus what training measured."""

    model: nn.Module
    val_accuracy: float
    seconds: float
    curves: list[dict] = field(default_factory=list)


def quiet_lightning() -> None:
    """Silence Lightning's per-fit banners (GPU available, model summary tips) inside workers."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*number of training batches.*")
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")
    # Classifier.training_step takes several batches per call from Lightning's data iterator
    warnings.filterwarnings("ignore", message=".*`dataloader_iter`.*")
    # DDP: every rank validates on the whole validation set, so there is nothing to sync
    warnings.filterwarnings("ignore", message=".*sync_dist=True.*")


def skip_nvml_cuda_check() -> bool:
    """Where no GPU is visible, answer torch's CUDA-availability checks from the CUDA runtime's
    cached device count instead of NVML; returns whether it did.

    Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` on import (so that the check does not
    initialise CUDA before a fork). torch then asks NVML on every call, and without an NVIDIA
    driver that is a failed ``dlopen`` each time: ~40 us per ``torch.cuda.is_available()``,
    which AdamW calls on every step (its graph-capture health check), 1-2% of a small-batch
    CPU step. With no GPU there is nothing a fork could poison, so the runtime's count (0,
    cached after the first call) answers instead. Unchanged where NVML sees a device."""
    if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") != "1" or torch.cuda.device_count() > 0:
        return False
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"
    return True


def build_run_model(run: Run, config: Config, datamodule: L.LightningDataModule) -> nn.Module:
    """The run's backbone with its norm, shaped for the datamodule's classes and channels."""
    from normzoo.models import build_model

    datamodule.setup("fit")
    return build_model(
        config.model.backbone,
        run.norm.name,
        datamodule.num_classes,
        datamodule.in_channels,
        run.norm.options,
        **config.model.options,
    )


def build_module(run: Run, config: Config, datamodule: L.LightningDataModule) -> Classifier:
    """Seed, and build the backbone with the run's norm inside a Classifier."""
    L.seed_everything(run.seed, workers=True, verbose=False)
    model = build_run_model(run, config, datamodule)
    return Classifier(model, config.train, run.train_batch_size, log_every=LOG_EVERY, lr=run.lr)


def build_trainer(config: Config, loggers: list[Logger], **overrides) -> L.Trainer:
    """The Trainer of a benchmark run: no bars or summaries, no checkpoints but the resumable
    ones of `EpochCheckpoint` (passed in ``callbacks``); ``loggers`` log."""
    max_steps = config.train.max_steps
    options = dict(
        accelerator="auto",
        devices=1,
        max_epochs=-1 if max_steps else config.train.epochs,
        max_steps=max_steps or -1,
        enable_checkpointing=False,
        logger=loggers or False,
        log_every_n_steps=LOG_EVERY,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic="warn",
    )
    options.update(overrides)
    return L.Trainer(**options)


def train_run(
    run: Run,
    config: Config,
    datamodule: L.LightningDataModule,
    loggers: list[Logger] = (),
    checkpoint: Path | None = None,
) -> TrainOutcome:
    """Seed, build the backbone with the run's norm, and fit it with Lightning.

    ``loggers`` (e.g. a ``WandbLogger``) receive the curves live, besides the store's recorder.
    With ``execution.ddp_devices`` > 1 the run trains with Lightning DDP (see bench/ddp.py).
    With a ``checkpoint`` path and ``execution.checkpoint_every_epochs`` an epoch-limited run
    writes a resumable checkpoint there every N epochs, and resumes from a checkpoint of this run
    found there: the result is bit-identical to an uninterrupted run (bench/checkpoint.py).
    """
    from normzoo.bench.execute.train import ddp
    from normzoo.bench.execute.train.checkpoint import EpochCheckpoint, resumable

    every = config.execution.checkpoint_every_epochs
    # Only epoch-limited fits: Lightning restores a step-limited fit as restarting mid-epoch and
    # shifts its logged steps and loop counters, so its resume would not be exact.
    checkpoint = checkpoint if every and not config.train.max_steps else None
    devices = config.execution.ddp_devices
    if devices > 1 and not ddp.inside():
        if checkpoint is not None:
            resumable(checkpoint, run.key)  # a stale one is removed before the ranks look
        rank = functools.partial(train_run, checkpoint=checkpoint)
        return ddp.launch(rank, devices, run, config, datamodule, loggers=loggers)
    quiet_lightning()
    skip_nvml_cuda_check()
    module = build_module(run, config, datamodule)
    built = describe(module.model)
    log.info("%s: built %s", run.name, describe_line(built))
    for logger in loggers:  # W&B config: what was built (the store's run keys stay as they are)
        logger.log_hyperparams(built_config(built))
    recorder = CurveRecorder()
    saver, resume_from = None, None
    if checkpoint is not None:
        resume_from = resumable(checkpoint, run.key)
        saver = EpochCheckpoint(checkpoint, every, run.key, recorder)
    trainer = build_trainer(
        config,
        [recorder, *loggers],
        callbacks=[saver] if saver else [],
        enable_checkpointing=saver is not None,
        **ddp.trainer_options(devices),
    )
    if resume_from is not None:
        log.info("%s: resuming from %s", run.name, resume_from)
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    seconds = time.perf_counter() - start + (saver.seconds_before if saver else 0.0)
    if "val/acc" not in trainer.callback_metrics:  # max_steps ended before the first epoch did
        trainer.validate(module, datamodule=datamodule, verbose=False)
    val = trainer.callback_metrics.get("val/acc")
    val_accuracy = float(val) if val is not None else float("nan")
    return TrainOutcome(module.model.cpu().eval(), val_accuracy, seconds, recorder.rows)
