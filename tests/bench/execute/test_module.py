"""The training module's learning-rate rule and schedules, against their closed forms."""

import math

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from normzoo.bench.execute.train.module import Classifier
from normzoo.bench.plan.config import TrainSection


class _LearningRates(L.Callback):
    """The learning rate each optimizer step used (read before the step's scheduler update)."""

    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])


def _trainer(**options) -> L.Trainer:
    """A quiet CPU Trainer: no logger, checkpoints, progress bar or model summary."""
    quiet = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(**quiet, **options)


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y)


def _train(train: TrainSection, batch_size: int, steps: int) -> tuple[list[float], Classifier]:
    torch.manual_seed(0)
    x = torch.randn(batch_size * steps, 3, 4, 4)
    y = torch.randint(0, 4, (batch_size * steps,))
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 4))
    module = Classifier(model, train, batch_size, steps_per_call=1)  # a hook call per step
    rates = _LearningRates()
    trainer = _trainer(max_steps=steps, callbacks=[rates], limit_val_batches=0)
    trainer.fit(module, train_dataloaders=loader)
    return rates.rates, module


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("batch_size", [2, 64])
def test_linear_scaling_is_proportional_to_the_batch_size(optimizer, batch_size):
    """Goyal et al. 2017: lr = base_lr * batch / reference batch; 'none' keeps base_lr."""
    train = TrainSection(
        optimizer=optimizer,
        lr=0.1,
        lr_scaling="linear",
        lr_reference_batch_size=32,
        schedule="constant",
    )
    rates, _ = _train(train, batch_size, steps=3)
    assert rates == pytest.approx([0.1 * batch_size / 32] * 3)
    unscaled, _ = _train(TrainSection(optimizer=optimizer, lr=0.1, schedule="constant"), 8, 3)
    assert unscaled == pytest.approx([0.1] * 3)


def test_cosine_schedule_follows_the_closed_form():
    total = 12
    rates, _ = _train(TrainSection(lr=0.2, schedule="cosine"), 4, total)
    expected = [0.2 * 0.5 * (1 + math.cos(math.pi * t / total)) for t in range(total)]
    assert rates == pytest.approx(expected)


def test_step_schedule_divides_by_ten_at_half_and_three_quarters():
    total = 16
    rates, _ = _train(TrainSection(lr=0.4, schedule="step"), 4, total)
    expected = [0.4 * 0.1 ** ((t >= total // 2) + (t >= 3 * total // 4)) for t in range(total)]
    assert rates == pytest.approx(expected)


def test_weight_decay_spares_norm_affine_and_biases():
    train = TrainSection(optimizer="sgd", lr=0.1, weight_decay=0.01, schedule="constant")
    _, module = _train(train, 4, 1)
    optimizer = module.optimizers().optimizer
    decayed, spared = optimizer.param_groups
    assert decayed["weight_decay"] == 0.01 and spared["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"])
    assert all(p.ndim <= 1 for p in spared["params"])
    assert optimizer.defaults["nesterov"] and optimizer.defaults["momentum"] == 0.9


def test_skip_nvml_cuda_check_only_where_no_gpu_is_visible():
    """Lightning's NVML-based CUDA check makes every torch.cuda.is_available() a failed dlopen
    on a machine without a driver; without a GPU the runtime's cached count answers instead.
    In a child process: it changes the process's environment."""
    import subprocess
    import sys

    code = (
        "import os, lightning, torch\n"
        "from normzoo.bench.execute.train.module import skip_nvml_cuda_check\n"
        "assert os.environ['PYTORCH_NVML_BASED_CUDA_CHECK'] == '1'\n"
        "gpus = torch.cuda.device_count()\n"
        "print(skip_nvml_cuda_check(), gpus, os.environ['PYTORCH_NVML_BASED_CUDA_CHECK'],\n"
        "      torch.cuda.is_available(), skip_nvml_cuda_check())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    skipped, gpus, env, available, again = out.stdout.split()
    if gpus == "0":
        assert (skipped, env, available) == ("True", "0", "False")
    else:
        assert (skipped, env, available) == ("False", "1", "True")
    assert again == "False"  # nothing left to do the second time


def test_batch_transfer_keeps_a_batch_on_its_device_and_moves_others():
    """The (inputs, labels) batch stays as it is on its device (no copy, no Lightning walk);
    on another device each tensor moves, the collection type kept; other batches go through
    Lightning's generic transfer."""
    module = Classifier(nn.Linear(2, 2), TrainSection(), 4)
    cpu, meta = torch.device("cpu"), torch.device("meta")
    batch = [torch.randn(4, 2), torch.tensor([0, 1, 0, 1])]
    same = module.transfer_batch_to_device(batch, cpu, 0)
    assert same is batch
    moved = module.transfer_batch_to_device(tuple(batch), meta, 0)
    assert type(moved) is tuple and all(t.device == meta for t in moved)
    assert [t.shape for t in moved] == [t.shape for t in batch]
    nested = {"x": batch[0], "y": batch[1]}
    out = module.transfer_batch_to_device(nested, meta, 0)
    assert set(out) == {"x", "y"} and out["x"].device == meta


class _Listener(L.Callback):
    """Counts the per-batch hooks that Lightning's backward and optimizer wrappers call."""

    def __init__(self) -> None:
        self.calls = {"on_before_backward": 0, "on_before_optimizer_step": 0, "batch": 0}

    def on_before_backward(self, trainer, module, loss) -> None:
        self.calls["on_before_backward"] += 1

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        self.calls["on_before_optimizer_step"] += 1

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.calls["batch"] += 1


def _fit_steps(steps_per_call: int, callbacks: list, datamodule=None) -> Classifier:
    torch.manual_seed(0)
    x, y = torch.randn(40, 3, 4, 4), torch.randint(0, 4, (40,))
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 8), nn.BatchNorm1d(8), nn.Linear(8, 4))
    module = Classifier(model, TrainSection(schedule="cosine"), 4, steps_per_call=steps_per_call)
    trainer = _trainer(max_epochs=2, callbacks=callbacks, limit_val_batches=0)
    if datamodule is None:
        loader = DataLoader(TensorDataset(x, y), batch_size=4)
        trainer.fit(module, train_dataloaders=loader)
    else:
        trainer.fit(module, datamodule=datamodule(x, y))
    return module


def test_a_callback_on_the_backward_hooks_gets_them_per_step_with_the_same_numbers():
    """Where a callback listens to the hooks of Lightning's backward and optimizer wrappers,
    the step goes through them (a call per optimizer step) and trains the same numbers as the
    direct path; the per-batch hook runs once per call of Lightning's loop."""
    listener = _Listener()
    listened = _fit_steps(4, [listener])
    assert not listened._fast
    assert listener.calls == {"on_before_backward": 20, "on_before_optimizer_step": 20, "batch": 6}
    direct = _fit_steps(4, [])
    assert direct._fast
    _assert_same_state(listened, direct)


def test_a_datamodule_transfer_hook_still_runs_on_every_batch():
    """Lightning's data-iterator flavour leaves the batch transfer to the step; a datamodule's
    transfer hooks run on every batch as in Lightning's own loop."""
    seen = []

    class Zeroed(L.LightningDataModule):
        """The inputs zeroed in the dataset itself."""

        def __init__(self, x, y) -> None:
            super().__init__()
            self.x, self.y = x * 0, y

        def train_dataloader(self):
            return DataLoader(TensorDataset(self.x, self.y), batch_size=4)

    class Data(Zeroed):
        """The inputs zeroed by the transfer hook instead."""

        def __init__(self, x, y) -> None:
            super().__init__(x, y)
            self.x = x

        def on_before_batch_transfer(self, batch, dataloader_idx):
            seen.append(len(batch[1]))
            return [batch[0] * 0, batch[1]]  # every input zeroed: only the biases learn

    module = _fit_steps(4, [], datamodule=Data)
    assert seen == [4] * 20
    assert module.global_step == 20
    zeroed = _fit_steps(4, [], datamodule=Zeroed)
    _assert_same_state(module, zeroed)
    assert not torch.equal(module.model[1].weight, _fit_steps(4, []).model[1].weight)


def test_validation_within_an_epoch_runs_where_it_would_with_one_batch_per_call():
    """A Trainer that validates every 3 batches (val_check_interval) validates after the same
    steps, with the same weights, whatever ``steps_per_call``: such a fit takes a batch a call."""

    class Validations(L.Callback):
        def __init__(self) -> None:
            self.steps: list[int] = []

        def on_validation_end(self, trainer, module) -> None:
            self.steps.append(trainer.global_step)

    def fit(steps_per_call: int) -> tuple[list[int], Classifier]:
        torch.manual_seed(0)
        x, y = torch.randn(40, 3, 4, 4), torch.randint(0, 4, (40,))
        model = nn.Sequential(nn.Flatten(), nn.Linear(48, 4))
        module = Classifier(model, TrainSection(), 4, steps_per_call=steps_per_call)
        seen = Validations()
        trainer = _trainer(
            max_epochs=2, callbacks=[seen], val_check_interval=3, num_sanity_val_steps=0
        )
        loader = DataLoader(TensorDataset(x, y), batch_size=4)
        trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
        return seen.steps, module

    one, reference = fit(1)
    many, module = fit(16)
    assert one == [3, 6, 9, 10, 13, 16, 19, 20]  # every 3 batches, and at each epoch end
    assert many == one
    _assert_same_state(module, reference)
