"""adapt(): AdaBN and TENT against statistics and gradient steps computed in the test."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import normzoo
from normzoo.testtime import adapt, stats_mode


def small_cnn(norm: str = "torch") -> nn.Module:
    torch.manual_seed(0)

    def bn(c):
        return nn.BatchNorm2d(c) if norm == "torch" else normzoo.create(norm, c)

    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        bn(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3),
        bn(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()


def shifted_batches(count: int, size: int = 16, seed: int = 0) -> list[tuple]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, 3, 6, 6, generator=gen) * 3 + 2, torch.zeros(size, dtype=torch.long))
        for _ in range(count)
    ]


def mean_entropy(logits: torch.Tensor) -> float:
    p = logits.softmax(1)
    return float(-(p * p.log()).sum(1).mean())


def snapshot(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_state_equal(model: nn.Module, before: dict) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("norm", ["torch", "batch", "batch_renorm"])
def test_adabn_sets_target_population_statistics(norm):
    model = small_cnn(norm)
    before = snapshot(model)
    batches = shifted_batches(3)
    adapted = adapt(model, batches, method="adabn")
    assert adapted is not model
    assert_state_equal(model, before)
    inputs = torch.cat([model[0](x).detach() for x, _ in batches])  # first layer's input
    flat = inputs.transpose(0, 1).reshape(8, -1).double()
    torch.testing.assert_close(adapted[1].running_mean.double(), flat.mean(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(adapted[1].running_var.double(), flat.var(1), rtol=1e-5, atol=1e-6)
    assert not adapted.training


def test_adabn_inplace_and_options():
    model = small_cnn()
    batches = shifted_batches(4)
    out = adapt(model, batches, method="adabn", inplace=True, num_batches=2)
    assert out is model
    flat = torch.cat([model[0](x).detach() for x, _ in batches[:2]]).transpose(0, 1)
    torch.testing.assert_close(
        model[1].running_mean, flat.reshape(8, -1).mean(1), rtol=1e-5, atol=1e-6
    )


def test_tent_step_matches_hand_computed_sgd_step():
    model = small_cnn()
    (x, _), lr = shifted_batches(1)[0], 0.5
    # reference: batch-statistics forward written out, entropy, one plain gradient step
    params = {
        name: p.detach().clone().requires_grad_(True)
        for name, p in model.named_parameters()
        if name.startswith(("1.", "4."))
    }

    def bn(h, index):
        flat = h.transpose(0, 1).reshape(h.shape[1], -1)
        mean, var = flat.mean(1).view(1, -1, 1, 1), flat.var(1, unbiased=False).view(1, -1, 1, 1)
        weight, bias = params[f"{index}.weight"], params[f"{index}.bias"]
        return (h - mean) / torch.sqrt(var + 1e-5) * weight.view(1, -1, 1, 1) + bias.view(
            1, -1, 1, 1
        )

    h = torch.relu(bn(model[0](x), 1))
    logits = model[8](torch.relu(bn(model[3](h), 4)).mean((2, 3)))
    p = logits.softmax(1)
    (-(p * p.log()).sum(1).mean()).backward()
    adapted = adapt(
        model, [x], method="tent", optimizer="sgd", lr=lr
    )  # first SGD step: no momentum
    for name, p in adapted.named_parameters():
        if name in params:
            torch.testing.assert_close(
                p, params[name] - lr * params[name].grad, rtol=1e-4, atol=1e-5
            )
        else:
            torch.testing.assert_close(p, dict(model.named_parameters())[name], rtol=0, atol=0)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_tent_reduces_entropy_on_a_shifted_stream(optimizer):
    model = small_cnn()
    model[0].bias.requires_grad_(False)
    before = snapshot(model)
    flags = [p.requires_grad for p in model.parameters()]
    held_out = shifted_batches(1, size=64, seed=1)[0][0]
    with torch.no_grad(), stats_mode(model, "batch"):  # unadapted model, batch statistics
        entropy_before = mean_entropy(model(held_out))
    lr = 3e-2 if optimizer == "adam" else 0.5
    adapted = adapt(model, shifted_batches(30), method="tent", optimizer=optimizer, lr=lr)
    with torch.no_grad():
        entropy_after = mean_entropy(adapted(held_out))
    assert entropy_after < 0.9 * entropy_before
    # original untouched; only affine parameters of the batch layers changed
    assert_state_equal(model, before)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert [p.requires_grad for p in adapted.parameters()] == flags
    for name, p in adapted.named_parameters():
        changed = not torch.equal(p, before[name])
        assert changed == name.startswith(("1.", "4.")), name
    # the adapted model normalizes with test-batch statistics, as in the TENT paper
    for layer in (adapted[1], adapted[4]):
        assert layer.running_mean is None and not layer.track_running_stats
    assert not adapted.training
    with torch.no_grad():
        assert not torch.allclose(adapted(held_out[:2]), adapted(held_out)[:2], atol=1e-4)


def test_tent_on_zoo_layers_changes_only_affine_parameters():
    model = small_cnn("batch")
    adapted = adapt(model, shifted_batches(2), method="tent", steps=2, inplace=True)
    assert adapted is model and model[1].running_var is None
    assert not torch.equal(model[1].weight, small_cnn("batch")[1].weight)
    assert torch.equal(model[0].weight, small_cnn("batch")[0].weight)


def test_adapt_errors():
    model = small_cnn()
    with pytest.raises(ValueError, match="adabn.*tent"):
        adapt(model, shifted_batches(1), method="memo")
    with pytest.raises(TypeError, match="unknown option.*allowed"):
        adapt(model, shifted_batches(1), method="tent", learning_rate=1.0)
    with pytest.raises(ValueError, match="optimizer"):
        adapt(model, shifted_batches(1), method="tent", optimizer="lbfgs")
    with pytest.raises(ValueError, match="no batch layers"):
        adapt(nn.Sequential(nn.Linear(2, 2)), [torch.randn(3, 2)], method="tent")
    with pytest.raises(ValueError, match="no batches"):
        adapt(copy.deepcopy(model), [], method="tent")
