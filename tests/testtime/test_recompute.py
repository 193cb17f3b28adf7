"""recompute_stats against population statistics computed layer by layer in the test."""

from __future__ import annotations

import pytest
import torch
from batch_layer_reference import make_layer, normalize, per_channel
from timm.layers import BatchNormAct2d
from torch import nn

import normzoo
from normzoo.testtime import recompute_stats


class SmallCNN(nn.Module):
    """conv-bn-relu-conv-bn-relu-dropout-pool-bn1d-linear, with any batch layer factory."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = make_layer(kind, 4, 4)
        self.conv2 = nn.Conv2d(4, 5, 3)
        self.bn2 = make_layer(kind, 5, 4)
        self.drop = nn.Dropout(0.5)
        self.bn3 = make_layer(kind, 5, 2)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = self.drop(torch.relu(self.bn2(self.conv2(h)))).mean((2, 3))
        return self.head(self.bn3(h))


def population(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    flat = torch.cat([per_channel(t).double() for t in tensors], dim=1)
    return flat.mean(1), flat.var(1, unbiased=True)


def manual_stats(model: SmallCNN, batches, method: str) -> list[tuple]:
    """Per-layer population statistics, computed by running the layers one by one by hand."""
    layers = [model.bn1, model.bn2, model.bn3]
    stats: list[tuple] = []

    def norm(h, index):
        if method == "precise":  # every layer normalizes with its batch statistics
            flat = per_channel(h)
            return normalize(h, flat.mean(1), flat.var(1, unbiased=False), layers[index])
        mean, var = stats[index]  # sequential: upstream layers already recomputed, in eval
        return normalize(h, mean.float(), var.float(), layers[index])

    def layer_input(x, k):
        h = model.conv1(x)
        if k == 0:
            return h
        h = model.conv2(torch.relu(norm(h, 0)))
        if k == 1:
            return h
        return torch.relu(norm(h, 1)).mean((2, 3))  # dropout is off (eval)

    with torch.no_grad():
        for k in range(3):
            stats.append(population([layer_input(x, k) for x in batches]))
    return stats


@pytest.mark.parametrize("kind", ["torch", "zoo_batch", "zoo_renorm"])
@pytest.mark.parametrize("method", ["precise", "sequential"])
def test_recompute_matches_layer_by_layer_reference(kind, method):
    torch.manual_seed(0)
    model = SmallCNN(kind).train()
    batches = [torch.randn(n, 3, 6, 6) * 2 + 1 for n in (8, 5, 11)]
    expect = manual_stats(model, batches, method)
    out = recompute_stats(model, [(x, torch.zeros(len(x))) for x in batches], method=method)
    assert out is model and not any(m.training for m in model.modules())
    for layer, (mean, var) in zip([model.bn1, model.bn2, model.bn3], expect, strict=True):
        torch.testing.assert_close(layer.running_mean.double(), mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer.running_var.double(), var, rtol=1e-5, atol=1e-5)
        assert int(layer.num_batches_tracked) == 5  # the step counter is left alone (issue 11)
        assert layer.running_mean.dtype == torch.float32


def test_precise_and_sequential_differ_on_a_deep_model():
    torch.manual_seed(1)
    model = SmallCNN("torch")
    batches = [torch.randn(4, 3, 6, 6) for _ in range(2)]
    precise, sequential = (
        manual_stats(model, batches, "precise"),
        manual_stats(model, batches, "sequential"),
    )
    assert not torch.allclose(precise[1][1], sequential[1][1], rtol=1e-3)


def test_recompute_sync_and_timm_layers():
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.SyncBatchNorm(3), nn.Conv2d(3, 4, 1), BatchNormAct2d(4)
    ).train()
    batches = [torch.randn(6, 2, 5, 5) for _ in range(3)]
    with torch.no_grad():
        first = [model[0](x) for x in batches]
        second = []
        for h in first:
            flat = per_channel(h)
            second.append(
                model[2](normalize(h, flat.mean(1), flat.var(1, unbiased=False), model[1]))
            )
    recompute_stats(model, batches)
    for layer, inputs in [(model[1], first), (model[3], second)]:
        mean, var = population(inputs)
        torch.testing.assert_close(layer.running_mean.double(), mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer.running_var.double(), var, rtol=1e-5, atol=1e-5)


def test_recompute_is_stable_at_large_offsets():
    gen = torch.Generator().manual_seed(3)
    batches = [(1e4 + torch.randn(256, 3, generator=gen) * 0.5).float() for _ in range(4)]
    mean, var = population(batches)
    data = torch.cat(batches)
    naive = (data * data).mean(0) - data.mean(0) ** 2  # float32 E[x^2]-E[x]^2 cancels
    assert not torch.allclose(naive.double(), var, rtol=0.05)
    layer = nn.BatchNorm1d(3)
    recompute_stats(nn.Sequential(layer), batches)
    torch.testing.assert_close(layer.running_mean.double(), mean, rtol=1e-6, atol=0)
    torch.testing.assert_close(layer.running_var.double(), var, rtol=1e-5, atol=0)


def test_recompute_inputs_and_limits():
    data = torch.randn(20, 3, 4, dtype=torch.float64) + 3
    labels = torch.arange(20)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data, labels), batch_size=5)
    cases = [
        (data, {}, data, 1),
        ((data, labels), {}, data, 1),
        (loader, {}, data, 4),
        (loader, {"num_batches": 2}, data[:10], 2),
        ((x for x in data.split(4)), {}, data, 5),
    ]
    for batches, opts, used, _count in cases:
        layer = nn.BatchNorm1d(3, dtype=torch.float64)
        recompute_stats(nn.Sequential(layer), batches, **opts)
        mean, var = population([used])
        torch.testing.assert_close(layer.running_mean, mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.running_var, var, rtol=1e-5, atol=1e-6)
        # the step counter stays 0 whatever the number of batches (issue 11)
        assert layer.running_var.dtype == torch.float64 and int(layer.num_batches_tracked) == 0


def test_recompute_errors():
    model = nn.Sequential(nn.BatchNorm1d(3))
    with pytest.raises(ValueError, match="no batch layers"):
        recompute_stats(nn.Sequential(nn.Linear(3, 3), nn.GroupNorm(1, 3)), [torch.randn(4, 3)])
    with pytest.raises(ValueError, match="no batches"):
        recompute_stats(model, [])
    with pytest.raises(ValueError, match="empty"):
        recompute_stats(model, [torch.randn(0, 3)])
    with pytest.raises(ValueError, match="unknown method"):
        recompute_stats(model, [torch.randn(4, 3)], method="ema")
    with pytest.raises(ValueError, match="num_batches"):
        recompute_stats(model, [torch.randn(4, 3)], num_batches=0)
    with pytest.raises(TypeError, match="re-iterable|one-shot"):
        recompute_stats(model, iter([torch.randn(4, 3)]), method="sequential")
    with pytest.raises(TypeError, match="as a tuple"):
        recompute_stats(model, [torch.randn(4, 3), torch.arange(4)])
    with pytest.raises(ValueError, match="one value per channel"):
        recompute_stats(model, [torch.randn(1, 3)])
    with pytest.raises(ValueError, match="'0'.*no running buffers"):
        recompute_stats(
            nn.Sequential(nn.BatchNorm1d(3, track_running_stats=False)), torch.ones(4, 3)
        )


@pytest.mark.parametrize("kind", ["zoo_renorm", "torch"])
def test_recompute_never_touches_the_step_counter(kind):
    """Batch renorm counts its schedule in ``num_batches_tracked``: after 300 training steps and
    recompute_stats on 5 batches, the next training step is still past warmup."""
    torch.manual_seed(4)
    layer = (
        normzoo.create("batch_renorm", 4, warmup=100)
        if kind == "zoo_renorm"
        else (nn.BatchNorm2d(4))
    )
    layer.train()
    for _ in range(300):
        layer(torch.randn(8, 4, 3, 3))
    recompute_stats(nn.Sequential(layer), [torch.randn(8, 4, 3, 3) * 3 + 2 for _ in range(5)])
    assert int(layer.num_batches_tracked) == 300
    layer.train()
    x = torch.randn(8, 4, 3, 3) * 0.5
    with torch.no_grad():
        out = layer(x)
    assert int(layer.num_batches_tracked) == 301
    plain = nn.functional.batch_norm(x, None, None, layer.weight, layer.bias, True, 0.0, layer.eps)
    if kind == "zoo_renorm":  # past warmup: r and d correct towards the recomputed statistics
        assert not torch.allclose(out, plain, atol=1e-4)
    else:
        torch.testing.assert_close(out, plain)
