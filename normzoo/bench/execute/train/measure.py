"""What training reached, measured once on the final model (issue 23's convergence contract).

A run's ``train_accuracy`` and ``train_loss`` are the accuracy and mean cross-entropy of the
final model in eval mode on a fixed training subset: the first `TRAIN_SUBSET` images of the
run's training split in index order (the split depends on the data and the seed only, so every
norm, batch size and learning rate of a seed sees the same images). For batch-dependent norms,
``train_accuracy_train_mode`` is the accuracy on the same subset in train mode, with batch
statistics over consecutive batches of the run's train batch size (a last partial batch is
dropped, as in training), without changing the model's running statistics.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from normzoo.data.stores import take

TRAIN_SUBSET = 1000  # training images measured per run
EVAL_BATCH = 256  # eval mode: per-sample predictions, any batch size gives the same numbers


def train_subset(datamodule) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed training subset ``(x, y)`` of a `NormzooDataModule`, normalized as in training."""
    datamodule.setup("fit")
    splits = datamodule.splits
    index = datamodule.train_index[:TRAIN_SUBSET]
    x = take(splits.train_images, index)  # a lazy store decodes only these images
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    shape = (1, len(splits.mean), 1, 1)
    mean = torch.tensor(splits.mean, dtype=torch.float32).reshape(shape)
    std = torch.tensor(splits.std, dtype=torch.float32).reshape(shape)
    return (x - mean) / std, splits.train_labels[index].clone()


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def train_mode_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int):
    """Accuracy with batch statistics of consecutive batches of ``batch_size`` (last partial
    batch dropped); a copy of ``model`` runs, with its buffers restored after every batch, so
    each batch sees the final running statistics and ``model`` is untouched."""
    copied = copy.deepcopy(model).train()
    buffers = {name: b.clone() for name, b in copied.named_buffers()}
    correct = total = 0
    for start in range(0, len(x) - batch_size + 1, batch_size):
        logits = copied(x[start : start + batch_size])
        correct += int((logits.argmax(1) == y[start : start + batch_size]).sum())
        total += batch_size
        for name, b in copied.named_buffers():
            b.copy_(buffers[name])
    return correct / total if total else float("nan")


def training_fit(model: nn.Module, datamodule, run, config) -> dict:
    """The run-row fields of what training reached: ``train_accuracy``, ``train_loss`` and
    ``train_accuracy_train_mode`` (None for batch-independent norms), measured on the device
    ``model`` is on; ``model`` is returned to the mode it came in and otherwise unchanged.

    ``run`` gives the train batch size; ``config`` is accepted for executors that measure
    differently per config (unused here).
    """
    from normzoo.models import has_batch_layers

    x, y = train_subset(datamodule)
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    was_training = model.training
    model.eval()
    logits = _logits(model, x, EVAL_BATCH)
    fields = {
        "train_accuracy": float((logits.argmax(1) == y).float().mean()),
        "train_loss": float(F.cross_entropy(logits, y)),
        "train_accuracy_train_mode": None,
    }
    if has_batch_layers(model):
        fields["train_accuracy_train_mode"] = train_mode_accuracy(model, x, y, run.train_batch_size)
    if was_training:
        model.train()
    return fields
