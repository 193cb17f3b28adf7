"""Stacked training equals training one by one: K models folded into one, stepped by one
optimizer, against the same K models each stepped by its own run's optimizer, from the same
initial weights and batches, compared step by step (parameters and running statistics)."""

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import normzoo
from normzoo.bench.execute.train.module import Classifier
from normzoo.bench.execute.train.stack import _slot_losses, stacked_optimizer
from normzoo.bench.execute.train.stacked_model import (
    FOLDABLE_NORMS,
    NotStackable,
    StackedModel,
    stack_support,
)
from normzoo.bench.plan.config import parse_config
from normzoo.bench.plan.grid import expand_runs
from normzoo.bench.plan.tuning import effective_lr
from normzoo.models import build_model

K, BATCH, STEPS, CLASSES = 3, 4, 6, 5
WIDTHS = (8, 16, 16, 16)
# options that make each norm do its characteristic work within a few steps
OPTIONS = {
    "batch_renorm": {"warmup": 1, "r_ramp": 3, "d_ramp": 2, "rmax": 1.5, "dmax": 0.5},
    "ghost_batch": {"virtual_batch_size": 2},
    "group": {"groups": 4},
    "evonorm_s0": {"groups": 4},
}


def _config(norm: str, optimizer: str = "adamw"):
    return parse_config(
        {
            "model": {"backbone": "small_cnn", "options": {"widths": list(WIDTHS)}},
            "norms": [{"name": norm, "options": OPTIONS.get(norm, {})}],
            "train": {
                "batch_sizes": [BATCH],
                "optimizer": optimizer,
                "lr": 0.01,
                "weight_decay": 0.05,
                "momentum": 0.9,
                "schedule": "cosine",
                "seeds": K,
            },
            "execution": {"wandb": "disabled"},
        }
    )


def _run_optimizer(model, config, total: int):
    """The optimizer and schedule a run trained alone gets (`Classifier.configure_optimizers`)."""
    shim = SimpleNamespace(
        model=model,
        train_config=config.train,
        train_batch_size=BATCH,
        lr=effective_lr(config.train, BATCH),
        trainer=SimpleNamespace(estimated_stepping_batches=total),
    )
    configured = Classifier.configure_optimizers(shim)
    return configured["optimizer"], configured["lr_scheduler"]["scheduler"]


def _models(norm: str, dtype: torch.dtype) -> list[torch.nn.Module]:
    models = []
    for seed in range(K):
        torch.manual_seed(seed)
        model = build_model("small_cnn", norm, CLASSES, 3, OPTIONS.get(norm, {}), widths=WIDTHS)
        models.append(model.to(dtype).train())
    return models


def _batches(dtype: torch.dtype) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per step, one batch per model (each model its own data)."""
    generator = torch.Generator().manual_seed(123)
    return [
        [
            (
                torch.randn(BATCH, 3, 16, 16, generator=generator, dtype=dtype),
                torch.randint(0, CLASSES, (BATCH,), generator=generator),
            )
            for _ in range(K)
        ]
        for _ in range(STEPS)
    ]


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# A reordering of a batch of 4 that keeps every ghost batch of 2 together.
SWAPPED = [1, 0, 3, 2]


def train_one_by_one(models, config, batches, layout: str = "plain") -> list[list[dict]]:
    """Each model stepped by its own optimizer; states[step][k] after each step. ``layout``
    ``channels_last`` or ``swapped`` (samples reordered) changes only how the same math is laid
    out, so that the result differs from ``plain`` by floating-point rounding only."""
    models = copy.deepcopy(models)
    memory = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    optimizers = [_run_optimizer(m.to(memory_format=memory), config, STEPS) for m in models]
    states = []
    for step_batches in batches:
        for model, (optimizer, scheduler), (x, y) in zip(
            models, optimizers, step_batches, strict=True
        ):
            if layout == "swapped":
                x, y = x[SWAPPED], y[SWAPPED]
            loss = F.cross_entropy(model(x.contiguous(memory_format=memory)), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        states.append([_state(m) for m in models])
    return states


def train_stacked(models, config, batches) -> list[list[dict]]:
    """The same models folded into one and stepped by one (fused/foreach) optimizer."""
    stacked = StackedModel(copy.deepcopy(models)).train()
    run = expand_runs(config)[0]
    optimizer, scheduler = stacked_optimizer(stacked, config, run, STEPS)
    states = []
    for step_batches in batches:
        x = torch.cat([b[0] for b in step_batches], 1)
        y = torch.stack([b[1] for b in step_batches], 1)
        losses = _slot_losses(stacked(x), y)
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        optimizer.step()
        scheduler.step()
        states.append([stacked.slot_state(k) for k in range(K)])
    return states


def _differences(a: list[list[dict]], b: list[list[dict]]) -> list[float]:
    """Per step, the largest absolute difference of any parameter or buffer of any model."""
    return [
        max(
            float((sa[name].double() - sb[name].double()).abs().max())
            for sa, sb in zip(step_a, step_b, strict=True)
            for name in sa
        )
        for step_a, step_b in zip(a, b, strict=True)
    ]


STACKABLE = [n for n in normzoo.available() if n in FOLDABLE_NORMS]
NOT_STACKABLE = [n for n in normzoo.available() if n not in FOLDABLE_NORMS]


@pytest.mark.parametrize("norm", normzoo.available())
def test_float64_stacked_equals_one_by_one(norm):
    """Every step, every model's parameters and running statistics within 1e-12."""
    config = _config(norm)
    models, batches = _models(norm, torch.float64), _batches(torch.float64)
    if norm in NOT_STACKABLE:
        pytest.skip(f"{norm} is trained alone (test_unstackable_norms_train_alone)")
    differences = _differences(
        train_one_by_one(models, config, batches), train_stacked(models, config, batches)
    )
    assert max(differences) <= 1e-12, differences


@pytest.mark.parametrize("norm", STACKABLE)
def test_float32_stacked_within_layout_drift(norm):
    """In float32 the stacked step differs from the one-by-one step by rounding only: no more
    than a layout change alone causes (the same models one by one in channels_last memory)."""
    config = _config(norm)
    models, batches = _models(norm, torch.float32), _batches(torch.float32)
    alone = train_one_by_one(models, config, batches)
    drift = [
        max(a, b)
        for a, b in zip(
            _differences(alone, train_one_by_one(models, config, batches, "channels_last")),
            _differences(alone, train_one_by_one(models, config, batches, "swapped")),
            strict=True,
        )
    ]
    stacked = _differences(alone, train_stacked(models, config, batches))
    # measured (6 steps, this machine): layout drift 3e-7..2e-3, stacked/drift 0.1-2.0
    assert max(drift) > 0
    assert max(stacked) <= 4 * max(drift), (drift, stacked)


@pytest.mark.parametrize("norm", NOT_STACKABLE)
def test_unstackable_norms_train_alone(norm):
    """A norm whose statistics mix channels cannot be folded, and the engine plans it alone."""
    config = _config(norm)
    assert stack_support(config, expand_runs(config)[0]) is not None
    with pytest.raises(NotStackable):
        StackedModel(_models(norm, torch.float32))


# ---- the engine: data order, reproducibility, store ----------------------------------------


def _tiny(tiny_raw, norms, seeds=2, epochs=2):
    raw = copy.deepcopy(tiny_raw)
    raw["norms"], raw["train"]["seeds"], raw["train"]["epochs"] = norms, seeds, epochs
    raw["train"]["batch_sizes"] = [32]
    return parse_config(raw)


def test_each_slot_sees_the_batches_of_its_run_trained_alone(tiny_raw, monkeypatch):
    """Same labels at every step of every epoch as Lightning's loop feeds the run alone (the
    sampler's generator is never asked for a permutation Lightning does not draw)."""
    from normzoo.bench.execute.train import module, stack
    from normzoo.bench.execute.worker import _datamodule

    config = _tiny(tiny_raw, ["batch"])
    runs = expand_runs(config)
    alone: list[torch.Tensor] = []
    step = module.Classifier.train_batch
    monkeypatch.setattr(
        module.Classifier, "train_batch", lambda s, b, i: (alone.append(b[1]), step(s, b, i))[1]
    )
    module.train_run(runs[1], config, _datamodule(runs[1], config))
    stacked: list[torch.Tensor] = []
    cat = stack._cat_batches

    def record(batches, device):
        x, y = cat(batches, device)
        if torch.is_grad_enabled():
            stacked.append(y[:, 1])
        return x, y

    monkeypatch.setattr(stack, "_cat_batches", record)
    stack.train_stack(runs, config, [_datamodule(r, config) for r in runs])
    assert len(alone) == len(stacked) == 2 * 14
    assert all(torch.equal(a, b) for a, b in zip(alone, stacked, strict=True))


def test_a_run_retrained_in_its_slot_reproduces_its_weights(tiny_raw):
    """Slot 1 of a stack [a, b] trained again as slot 1 of [b, b] (what a retrain after lost
    weights does): bit-identical weights, so the weights hash and old evaluations stay valid."""
    from normzoo.bench.execute.train.stack import train_stack
    from normzoo.bench.execute.worker import _datamodule

    config = _tiny(tiny_raw, ["batch"], epochs=1)
    a, b = expand_runs(config)
    first = train_stack([a, b], config, [_datamodule(r, config) for r in (a, b)])[1]
    again = train_stack([b, b], config, [_datamodule(r, config) for r in (b, b)])[1]
    for name, value in first.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[name]), name
    assert first.curves == again.curves


def test_grid_stores_each_stacked_run_as_its_own(tiny_raw, tmp_path):
    """Rows with stack size and slot, one safetensors per run with the backbone's state-dict
    keys, and rms (not stackable) trained alone."""
    from safetensors.torch import load_file

    from normzoo.bench.execute.weights import weights_path
    from normzoo.bench.record.store import Store
    from normzoo.bench.run import run_grid

    raw = copy.deepcopy(tiny_raw)
    raw["eval"] = {**raw["eval"], "test_batch_sizes": [32], "shifts": ["clean"]}
    config = _tiny(raw, ["batch", "rms"], seeds=3, epochs=1)
    summary = run_grid(config, tmp_path, workers=1, show_progress=False)
    assert summary.ok == 6 and not summary.errors
    with Store(tmp_path, read_only=True) as store:
        runs = store.runs_frame()
    layout = {(r.norm, r.seed): (r.stack_size, r.stack_slot) for r in runs.itertuples()}
    assert layout == {
        **{("batch", s): (3, s) for s in range(3)},
        **{("rms", s): (1, 0) for s in range(3)},
    }
    reference = build_model("small_cnn", "batch", 10, 3, {}).state_dict()
    for row in runs[runs.norm == "batch"].itertuples():
        weights = load_file(str(weights_path(tmp_path, row.run_key)))
        assert {k: v.shape for k, v in weights.items()} == {
            k: v.shape for k, v in reference.items()
        }


def test_lost_weights_are_retrained_in_their_slot_and_reproduced(tiny_raw, tmp_path):
    """The grid retrains a stacked run whose weights file is gone as it was trained (its
    recorded stack size and slot) and gets the same bytes back."""
    from normzoo.bench.execute.weights import weights_path
    from normzoo.bench.record.store import Store
    from normzoo.bench.run import plan_grid, run_grid

    raw = copy.deepcopy(tiny_raw)
    raw["eval"] = {**raw["eval"], "test_batch_sizes": [32], "shifts": ["clean"]}
    config = _tiny(raw, ["batch"], seeds=3, epochs=1)
    run_grid(config, tmp_path, workers=1, show_progress=False)
    lost = expand_runs(config)[2]
    path = weights_path(tmp_path, lost.key)
    before = path.read_bytes()
    path.unlink()
    raw["eval"]["test_batch_sizes"] = [1, 32]  # a new test condition: weights are needed again
    config = _tiny(raw, ["batch"], seeds=3, epochs=1)
    with Store(tmp_path) as store:
        (task,) = [t for t in plan_grid(config, tmp_path, store).tasks if t.train]
    assert task.runs == (lost,) and task.stack == (lost,) * 3 and task.keep == (2,)
    run_grid(config, tmp_path, workers=1, show_progress=False)
    assert path.read_bytes() == before
    with Store(tmp_path, read_only=True) as store:
        row = store.run_row(lost.key)
    assert (row["status"], row["stack_size"], row["stack_slot"]) == ("ok", 3, 2)


def test_killed_stack_resumes_bit_identically(tiny_raw, tmp_path, monkeypatch):
    """A stack killed after its first epoch's checkpoint continues from it to the same weights
    and curves as an uninterrupted stack."""
    from normzoo.bench.execute.train import stack
    from normzoo.bench.execute.worker import _datamodule

    config = _tiny(tiny_raw, ["batch"], epochs=2)
    runs = expand_runs(config)
    path = tmp_path / "stack.ckpt"
    whole = stack.train_stack(runs, config, [_datamodule(r, config) for r in runs])
    save = stack._save_checkpoint

    def save_and_die(*args):
        save(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(stack, "_save_checkpoint", save_and_die)
    with pytest.raises(KeyboardInterrupt):
        stack.train_stack(runs, config, [_datamodule(r, config) for r in runs], path)
    monkeypatch.setattr(stack, "_save_checkpoint", save)
    validations, validate = [], stack._validate
    monkeypatch.setattr(stack, "_validate", lambda *a: validations.append(1) or validate(*a))
    resumed = stack.train_stack(runs, config, [_datamodule(r, config) for r in runs], path)
    assert len(validations) == 1  # only the second epoch was trained again
    for a, b in zip(whole, resumed, strict=True):
        assert a.curves == b.curves
        for name, value in a.model.state_dict().items():
            assert torch.equal(value, b.model.state_dict()[name]), name


def test_a_dead_stacked_task_fails_each_of_its_runs(tiny_raw, tmp_path):
    """A worker that dies in a stacked task records every run of the stack failed (and each is
    retried), also when the retry dies again; runs of the stack already finished stay as they
    are."""
    from normzoo.bench.execute.pool import WorkerDied
    from normzoo.bench.record.store import Store
    from normzoo.bench.run import Summary, Writer, plan_grid

    config = _tiny(tiny_raw, ["batch"], seeds=3, epochs=1)
    runs = {run.key: run for run in expand_runs(config)}
    with Store(tmp_path) as store:
        (task,) = plan_grid(config, tmp_path, store).tasks
        assert set(r.key for r in task.runs) == set(runs) and len(task.stack) == 3
        writer = Writer(store, config, Summary(total=3), None, runs)
        writer.handle(WorkerDied(task, -9))
        assert store.statuses() == dict.fromkeys(runs, "failed")
        assert writer.died == set(runs)
        writer.died.clear()  # the retry
        writer._ended(task.runs[0], "ok", None, wandb_logged=False)  # its first run finished
        writer.handle(WorkerDied(task, -9))
        assert writer.died == {r.key for r in task.runs[1:]}


def test_a_per_model_scalar_parameter_keeps_runs_alone():
    """Filter response norm with a learned eps (one scalar per layer and model) cannot share a
    stacked layer: the engine plans such runs alone and the fold refuses them."""
    options = {"learn_eps": True}
    config = parse_config(
        {
            "model": {"backbone": "small_cnn", "options": {"widths": list(WIDTHS)}},
            "norms": [{"name": "filter_response", "options": options}],
            "train": {"batch_sizes": [BATCH], "seeds": 2},
            "execution": {"wandb": "disabled"},
        }
    )
    assert "eps" in stack_support(config, expand_runs(config)[0])
    models = [build_model("small_cnn", "filter_response", CLASSES, 3, options) for _ in range(2)]
    with pytest.raises(NotStackable, match="eps_learned"):
        StackedModel(models)
