"""The benchmark's training step never waits for the device: its code converts a tensor to a
Python value (a host sync on an accelerator) only at logging intervals."""

import math
import sys

import pytest
import torch

from normzoo.bench.execute.train import module as bench_module
from normzoo.bench.execute.worker import _datamodule
from normzoo.bench.plan.config import load_config
from normzoo.bench.plan.grid import expand_runs

SYNCS = ("item", "__bool__", "__float__", "__int__", "tolist")


def test_training_step_syncs_only_at_logging_intervals(tiny_config_path, monkeypatch):
    steps = 40
    config = load_config(tiny_config_path, [f"train.max_steps={steps}", "norms=[batch]"])
    run = expand_runs(config)[0]
    counts = {"step": 0, "syncs": 0}
    inside = [False]
    for name in SYNCS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            # the step's own code; the model's layers have their own (device-free) policy
            caller = sys._getframe(1).f_code.co_filename
            counts["syncs"] += inside[0] and caller == bench_module.__file__
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    step = bench_module.Classifier.train_batch

    def train_batch(self, batch, batch_idx):
        counts["step"] += 1
        inside[0] = True
        try:
            return step(self, batch, batch_idx)
        finally:
            inside[0] = False

    monkeypatch.setattr(bench_module.Classifier, "train_batch", train_batch)
    outcome = bench_module.train_run(run, config, _datamodule(run, config))
    assert counts["step"] == steps
    intervals = steps // bench_module.LOG_EVERY
    # one divergence check per logging interval, none in the other steps (was 3 per step)
    assert counts["syncs"] == intervals
    losses = [c for c in outcome.curves if c["metric"] == "train/loss"]
    assert [c["step"] for c in losses] == [9, 19, 29, 39]


def test_lightning_step_computes_exactly_what_a_plain_torch_loop_computes(tiny_config_path):
    """The Classifier drives its optimizer (manual optimization); its training must be the
    plain loop forward -> zero_grad -> backward -> optimizer step -> scheduler step, bit for bit
    (weights, running statistics, optimizer state), as Lightning's automatic optimization did."""
    import torch.nn.functional as F

    steps = 23
    config = load_config(tiny_config_path, [f"train.max_steps={steps}", "norms=[batch]"])
    run = expand_runs(config)[0]
    trained = {}
    build = bench_module.build_module

    def keep(*args, **kwargs):
        trained["module"] = build(*args, **kwargs)
        return trained["module"]

    bench_module.build_module = keep
    try:
        bench_module.train_run(run, config, _datamodule(run, config))
    finally:
        bench_module.build_module = build
    ours = trained["module"]

    datamodule = _datamodule(run, config)
    datamodule.setup("fit")
    plain = build(run, config, datamodule)
    plain.trainer = type("T", (), {"estimated_stepping_batches": steps})()
    conf = plain.configure_optimizers()
    optimizer, scheduler = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    done = 0
    while done < steps:
        for x, y in datamodule.train_dataloader():
            loss = F.cross_entropy(plain.model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            done += 1
            if done == steps:
                break
    state, reference = ours.model.state_dict(), plain.model.state_dict()
    assert state.keys() == reference.keys()
    for name in state:
        assert torch.equal(state[name], reference[name]), name
    assert int(state["features.1.num_batches_tracked"]) == steps
    ours_opt = ours.trainer.optimizers[0].state_dict()["state"]
    plain_opt = optimizer.state_dict()["state"]
    for key in plain_opt:
        for field_name, value in plain_opt[key].items():
            assert torch.equal(ours_opt[key][field_name], value), (key, field_name)


def _fit(config, monkeypatch, steps_per_call: int) -> tuple:
    """train_run with ``steps_per_call`` batches per call of Lightning's loop: the outcome, the
    trained Classifier and the loop's counters at the end."""
    monkeypatch.setattr(bench_module, "STEPS_PER_CALL", steps_per_call)
    kept = {}
    build = bench_module.build_module

    def keep(*args, **kwargs):
        kept["module"] = build(*args, **kwargs)
        return kept["module"]

    monkeypatch.setattr(bench_module, "build_module", keep)
    calls = []
    training_step = bench_module.Classifier.training_step

    def counted(self, dataloader_iter):
        calls.append(self.global_step)
        return training_step(self, dataloader_iter)

    monkeypatch.setattr(bench_module.Classifier, "training_step", counted)
    run = expand_runs(config)[0]
    outcome = bench_module.train_run(run, config, _datamodule(run, config))
    module = kept["module"]
    assert module.steps_per_call == steps_per_call
    # a call starts every steps_per_call steps, and at each epoch's first batch (28 per epoch)
    assert calls == sorted(
        {s for s in range(module.trainer.global_step) if s % 28 % steps_per_call == 0}
    )
    loop = module.trainer.fit_loop
    counters = (
        module.trainer.global_step,
        loop.epoch_loop._batches_that_stepped,
        loop.epoch_loop.batch_progress.state_dict(),
        loop.epoch_progress.state_dict(),
        loop.epoch_loop.manual_optimization.optim_step_progress.state_dict(),
    )
    return outcome, module, counters


@pytest.mark.parametrize(
    "overrides",
    [["train.epochs=2"], ["train.max_steps=22"]],  # 28 batches per epoch; 22 ends mid-call
    ids=["epochs", "max_steps"],
)
def test_several_steps_per_call_train_exactly_as_one_step_per_call(
    tiny_config_path, monkeypatch, overrides
):
    """Taking several batches per call of Lightning's loop changes no number: weights and
    buffers, optimizer state, every logged curve point (step, epoch, value), the validation
    accuracy and Lightning's counters (global step, logged steps, batch and epoch progress) are
    those of one batch per call, bit for bit."""
    config = load_config(tiny_config_path, [*overrides, "norms=[batch]"])
    one, one_module, one_counters = _fit(config, monkeypatch, 1)
    for steps_per_call in (4, 16):
        many, module, counters = _fit(config, monkeypatch, steps_per_call)
        assert counters == one_counters
        assert many.curves == one.curves
        assert many.val_accuracy == one.val_accuracy or (
            math.isnan(many.val_accuracy) and math.isnan(one.val_accuracy)
        )
        state, reference = many.model.state_dict(), one.model.state_dict()
        assert state.keys() == reference.keys()
        for name in state:
            assert torch.equal(state[name], reference[name]), name
        ours = module.trainer.optimizers[0].state_dict()["state"]
        theirs = one_module.trainer.optimizers[0].state_dict()["state"]
        for key in theirs:
            for field_name, value in theirs[key].items():
                assert torch.equal(ours[key][field_name], value), (key, field_name)
    steps = one_counters[0]
    assert steps == (56 if overrides == ["train.epochs=2"] else 22)
    losses = [c["step"] for c in one.curves if c["metric"] == "train/loss"]
    assert losses == list(range(9, steps, 10))


def test_epoch_loss_and_accuracy_are_those_of_the_epochs_training_batches(
    tiny_config_path, monkeypatch
):
    """train/epoch_loss and train/epoch_acc against the batches' own logits and labels, recorded
    at the model's forward: the sample-weighted mean cross-entropy and the fraction correct over
    each epoch (float32 sums: relative tolerance 1e-5)."""
    import torch.nn.functional as F

    config = load_config(tiny_config_path, ["train.epochs=2", "norms=[batch]"])
    run = expand_runs(config)[0]
    seen: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    build = bench_module.build_module
    train_batch = bench_module.Classifier.train_batch

    def hook(model, inputs, out) -> None:
        if model.training:  # not validation's forwards
            seen.append([out.detach()])

    def keep(*args, **kwargs):
        module = build(*args, **kwargs)
        module.model.register_forward_hook(hook)
        return module

    def recording(self, batch, batch_idx):
        loss = train_batch(self, batch, batch_idx)
        seen[-1] += [batch[1], self.current_epoch]
        return loss

    monkeypatch.setattr(bench_module, "build_module", keep)
    monkeypatch.setattr(bench_module.Classifier, "train_batch", recording)
    outcome = bench_module.train_run(run, config, _datamodule(run, config))
    curves = {(c["metric"], c["epoch"]): c["value"] for c in outcome.curves}
    for epoch in (0, 1):
        steps = [(logits, y) for logits, y, e in seen if e == epoch]
        n = sum(len(y) for _, y in steps)
        loss = sum(float(F.cross_entropy(lg.double(), y, reduction="sum")) for lg, y in steps)
        correct = sum(int((lg.argmax(1) == y).sum()) for lg, y in steps)
        assert curves["train/epoch_acc", epoch] == pytest.approx(correct / n, rel=1e-6)
        assert curves["train/epoch_loss", epoch] == pytest.approx(loss / n, rel=1e-5)
