"""Training with Lightning: a LightningModule for any backbone, and `train_run` for one grid run."""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass, field

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from normzoo.bench.config import Config, TrainSection
from normzoo.bench.grid import Run

log = logging.getLogger(__name__)


class DivergedError(RuntimeError):
    """Training produced a non-finite loss; the run is recorded with status ``diverged``."""


class Classifier(L.LightningModule):
    """Cross-entropy training of ``model`` with the optimizer and schedule of a TrainSection."""

    def __init__(
        self, model: nn.Module, train: TrainSection, train_batch_size: int, log_every: int = 10
    ) -> None:
        super().__init__()
        self.model = model
        self.train_config = train
        self.train_batch_size = train_batch_size
        self.log_every = log_every
        self.history: list[dict] = []
        self._val_correct = 0
        self._val_total = 0
        self._epoch_loss = 0.0
        self._epoch_correct = 0
        self._epoch_total = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        if not torch.isfinite(loss):
            raise DivergedError(
                f"loss became {loss.item()} at step {self.global_step}"
                f" (epoch {self.current_epoch});"
                " lower train.lr or use a batch-independent norm for this batch size"
            )
        correct = (logits.argmax(1) == y).sum().item()
        self._epoch_loss += loss.item() * len(y)
        self._epoch_correct += correct
        self._epoch_total += len(y)
        if self.global_step % self.log_every == 0:
            self.history.append(
                {
                    "step": self.global_step,
                    "epoch": self.current_epoch,
                    "train/loss": loss.item(),
                    "train/acc": correct / len(y),
                    "train/lr": self.optimizers().param_groups[0]["lr"],
                }
            )
        return loss

    def on_train_epoch_end(self) -> None:
        if self._epoch_total:
            self.history.append(
                {
                    "step": self.global_step,
                    "epoch": self.current_epoch,
                    "train/epoch_loss": self._epoch_loss / self._epoch_total,
                    "train/epoch_acc": self._epoch_correct / self._epoch_total,
                }
            )
        self._epoch_loss, self._epoch_correct, self._epoch_total = 0.0, 0, 0

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self._val_correct += (self.model(x).argmax(1) == y).sum().item()
        self._val_total += len(y)

    def on_validation_epoch_end(self) -> None:
        accuracy = self._val_correct / max(self._val_total, 1)
        self.log("val_acc", accuracy)
        self.history.append(
            {"step": self.global_step, "epoch": self.current_epoch, "val/acc": accuracy}
        )
        self._val_correct, self._val_total = 0, 0

    def configure_optimizers(self):
        cfg = self.train_config
        lr = cfg.lr
        if cfg.lr_scaling == "linear":  # Goyal et al. 2017: lr proportional to batch size
            lr = cfg.lr * self.train_batch_size / cfg.lr_reference_batch_size
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


@dataclass
class TrainOutcome:
    """A trained model plus what training measured."""

    model: nn.Module
    val_accuracy: float
    seconds: float
    history: list[dict] = field(default_factory=list)


def quiet_lightning() -> None:
    """Silence Lightning's per-fit banners (GPU available, model summary tips) inside workers."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*number of training batches.*")
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")


def train_run(run: Run, config: Config, datamodule: L.LightningDataModule) -> TrainOutcome:
    """Seed, build the backbone with the run's norm, and fit it with Lightning."""
    from normzoo.models import build_model

    quiet_lightning()
    L.seed_everything(run.seed, workers=True, verbose=False)
    datamodule.setup("fit")
    model = build_model(
        config.model.backbone,
        run.norm.name,
        datamodule.num_classes,
        datamodule.in_channels,
        run.norm.options,
        **config.model.options,
    )
    module = Classifier(model, config.train, run.train_batch_size)
    max_steps = config.train.max_steps
    trainer = L.Trainer(
        accelerator="auto",
        devices=1,
        max_epochs=-1 if max_steps else config.train.epochs,
        max_steps=max_steps or -1,
        enable_checkpointing=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic="warn",
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    seconds = time.perf_counter() - start
    if "val_acc" not in trainer.callback_metrics:  # max_steps ended before the first epoch did
        trainer.validate(module, datamodule=datamodule, verbose=False)
    val = trainer.callback_metrics.get("val_acc")
    val_accuracy = float(val) if val is not None else float("nan")
    return TrainOutcome(model.cpu().eval(), val_accuracy, seconds, module.history)
