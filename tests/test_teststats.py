"""stats_mode and recompute_stats against statistics computed directly in the test."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from timm.layers import BatchNormAct2d
from torch import nn

import normzoo
from normzoo.teststats import STATS_MODES, recompute_stats, stats_mode

SHAPES = [(8, 3), (8, 3, 5), (4, 3, 4, 5), (2, 3, 3, 2, 4)]
KINDS = ["torch", "zoo_batch", "zoo_renorm", "sync"]


def make_layer(kind: str, channels: int, dim: int, **kwargs) -> nn.Module:
    """A batch layer with non-trivial affine parameters and running statistics."""
    if kind == "torch":
        cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[dim]
        layer = cls(channels, **kwargs)
    elif kind == "zoo_batch":
        layer = normzoo.create("batch", channels, **kwargs)
    elif kind == "zoo_renorm":
        layer = normzoo.create("batch_renorm", channels, **kwargs)
    else:
        layer = nn.SyncBatchNorm(channels, **kwargs)
    gen = torch.Generator().manual_seed(channels * 7 + dim)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(channels, generator=gen) + 0.5)
        layer.bias.copy_(torch.randn(channels, generator=gen))
        if layer.running_mean is not None:
            layer.running_mean.copy_(torch.randn(channels, generator=gen))
            layer.running_var.copy_(torch.rand(channels, generator=gen) + 0.5)
            layer.num_batches_tracked.fill_(5)
    return layer


def per_channel(x: torch.Tensor) -> torch.Tensor:
    """(C, values) view of a channels-first tensor."""
    return x.transpose(0, 1).reshape(x.shape[1], -1)


def normalize(x, mean, var, layer) -> torch.Tensor:
    shape = (1, -1) + (1,) * (x.dim() - 2)
    x_hat = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + layer.eps)
    return x_hat * layer.weight.view(shape) + layer.bias.view(shape)


def state(layer: nn.Module) -> dict:
    return {k: v.clone() for k, v in layer.state_dict().items()}


def assert_same_state(before: dict, layer: nn.Module) -> None:
    after = layer.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_running_and_batch_modes(kind, shape, training):
    layer = make_layer(kind, shape[1], len(shape)).train(training)
    x = torch.randn(shape) * 2 + 1
    before = state(layer)
    with torch.no_grad():
        with stats_mode(layer, "running"):
            out_running = layer(x)
        with stats_mode(layer, "batch"):
            out_batch = layer(x)
    expect_running = normalize(x, layer.running_mean, layer.running_var, layer)
    flat = per_channel(x)
    expect_batch = normalize(x, flat.mean(1), flat.var(1, unbiased=False), layer)
    torch.testing.assert_close(out_running, expect_running, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_batch, expect_batch, rtol=1e-4, atol=1e-4)
    assert_same_state(before, layer)
    assert layer.training is training


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [*SHAPES, (1, 3), (1, 3, 4, 4)])
def test_mix_mode_formula(kind, shape):
    layer = make_layer(kind, shape[1], len(shape)).eval()
    x = torch.randn(shape) * 3 - 2
    prior = 16
    before = state(layer)
    with torch.no_grad(), stats_mode(layer, "mix", prior=prior):
        out = layer(x)
    flat = per_channel(x)
    n = shape[0]  # samples in the batch, not values per channel (Schneider et al. 2020)
    mean = (prior * layer.running_mean + n * flat.mean(1)) / (prior + n)
    var = (prior * layer.running_var + n * flat.var(1, unbiased=False)) / (prior + n)
    torch.testing.assert_close(out, normalize(x, mean, var, layer), rtol=1e-4, atol=1e-4)
    assert_same_state(before, layer)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("momentum", [None, 0.3])
def test_online_mode_ema_and_restore(kind, momentum):
    layer = make_layer(kind, 3, 4).eval()
    before = state(layer)
    mean, var = layer.running_mean.clone(), layer.running_var.clone()
    rate = 0.1 if momentum is None else momentum  # layer default momentum is 0.1
    with torch.no_grad(), stats_mode(layer, "online", momentum=momentum):
        for step in range(3):
            x = torch.randn(4, 3, 3, 3) + step
            out = layer(x)
            flat = per_channel(x)
            mean = (1 - rate) * mean + rate * flat.mean(1)
            var = (1 - rate) * var + rate * flat.var(1, unbiased=True)
            torch.testing.assert_close(out, normalize(x, mean, var, layer), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(layer.running_mean, mean)
            assert int(layer.num_batches_tracked) == 5 + step + 1
    assert_same_state(before, layer)


def test_batch_of_one_value_per_channel_is_a_clear_error():
    layer = make_layer("torch", 3, 2).eval()
    with pytest.raises(ValueError, match="one value per channel.*'mix' with a prior"):
        with stats_mode(layer, "batch"):
            layer(torch.randn(1, 3))
    # the failed forward left nothing behind
    assert layer.running_mean is not None and not layer._forward_hooks


@pytest.mark.parametrize("kind", ["torch", "zoo_batch"])
def test_batch_mode_at_batch_size_one_uses_spatial_statistics(kind):
    layer = make_layer(kind, 3, 4).eval()
    x = torch.randn(1, 3, 4, 4)
    with torch.no_grad(), stats_mode(layer, "batch"):
        out = layer(x)
    flat = per_channel(x)
    torch.testing.assert_close(out, normalize(x, flat.mean(1), flat.var(1, unbiased=False), layer))
    with torch.no_grad(), stats_mode(layer, "running"):
        out = layer(torch.ones(1, 3, 4, 4))
    expect = normalize(torch.ones(1, 3, 4, 4), layer.running_mean, layer.running_var, layer)
    torch.testing.assert_close(out, expect)


@pytest.mark.parametrize("kind", ["torch", "zoo_batch", "sync"])
def test_layer_without_running_stats(kind):
    layer = make_layer(kind, 3, 3, track_running_stats=False)
    model = nn.Sequential(nn.Identity(), layer)
    for mode, opts in [("running", {}), ("mix", {"prior": 4}), ("online", {})]:
        with pytest.raises(ValueError, match="'1'.*track_running_stats=False"):
            with stats_mode(model, mode, **opts):
                pass
    x = torch.randn(4, 3, 6)
    with torch.no_grad(), stats_mode(model, "batch"):
        out = model(x)
    flat = per_channel(x)
    torch.testing.assert_close(out, normalize(x, flat.mean(1), flat.var(1, unbiased=False), layer))


@pytest.mark.parametrize(
    ("mode", "opts", "match"),
    [
        ("mix", {}, "needs prior"),
        ("mix", {"prior": 0}, "> 0"),
        ("mix", {"prior": float("nan")}, "> 0"),
        ("batch", {"prior": 3}, "only applies"),
        ("online", {"momentum": 1.5}, r"\(0, 1\]"),
        ("averaged", {}, "running, batch, mix, online"),
    ],
)
def test_bad_arguments(mode, opts, match):
    with pytest.raises(ValueError, match=match):
        with stats_mode(nn.BatchNorm1d(2), mode, **opts):
            pass


def test_restored_on_exception_and_nesting():
    layer = make_layer("torch", 3, 4).train()
    x = torch.randn(4, 3, 2, 2)
    flat = per_channel(x)
    batch_expect = normalize(x, flat.mean(1), flat.var(1, unbiased=False), layer)
    running_expect = normalize(x, layer.running_mean, layer.running_var, layer)
    before = state(layer)
    with pytest.raises(RuntimeError, match="boom"):
        with stats_mode(layer, "online", momentum=0.5):
            layer(x)
            raise RuntimeError("boom")
    assert_same_state(before, layer)
    assert not layer._forward_hooks and not layer._forward_pre_hooks
    with torch.no_grad(), stats_mode(layer, "batch"):
        torch.testing.assert_close(layer(x), batch_expect)
        with stats_mode(layer, "running"):
            torch.testing.assert_close(layer(x), running_expect)
            with stats_mode(layer, "batch"):
                torch.testing.assert_close(layer(x), batch_expect)
            torch.testing.assert_close(layer(x), running_expect)
        torch.testing.assert_close(layer(x), batch_expect)
    assert_same_state(before, layer)
    assert layer.training and not layer._forward_hooks
    # a forward that fails inside the context (wrong channel count) leaves the layer intact
    with stats_mode(layer, "running"), pytest.raises(RuntimeError):
        layer(torch.randn(4, 5, 2, 2))
    assert layer.training and torch.equal(layer.running_mean, before["running_mean"])


def test_hooks_requires_grad_and_flags_untouched():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Dropout(0.5), nn.ReLU())
    model[0].weight.requires_grad_(False)
    model[1].eval()
    calls = []
    model[1].register_forward_pre_hook(lambda m, a: calls.append(("pre", m.training)))
    model[1].register_forward_hook(lambda m, a, o: calls.append(("post", m.running_mean)))
    pre, post = dict(model[1]._forward_pre_hooks), dict(model[1]._forward_hooks)
    flags = [m.training for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]
    with stats_mode(model, "mix", prior=8):
        model(torch.randn(2, 2, 5, 5)).sum().backward()
        assert [m.training for m in model.modules()] == flags
    assert calls == [("pre", False), ("post", model[1].running_mean)]  # user hook sees buffers
    assert [m.training for m in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == grads
    assert model[1].weight.grad is not None and model[0].weight.grad is None
    assert model[1]._forward_pre_hooks == pre and model[1]._forward_hooks == post


def test_batch_independent_norms_are_a_noop():
    model = nn.Sequential(nn.Conv2d(2, 4, 1), nn.GroupNorm(2, 4), nn.LayerNorm([4, 3, 3]))
    x = torch.randn(2, 2, 3, 3)
    expect = model(x)
    for mode in STATS_MODES:
        with stats_mode(model, mode, prior=4 if mode == "mix" else None):
            torch.testing.assert_close(model(x), expect)


@pytest.mark.parametrize("mode", ["batch", "running", "mix"])
def test_timm_batchnorm_act_still_applies_activation(mode):
    layer = BatchNormAct2d(3, act_layer=nn.ReLU)
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        layer.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    layer.train()
    x = torch.randn(4, 3, 3, 3)
    flat = per_channel(x)
    batch = (flat.mean(1), flat.var(1, unbiased=False))
    running = (layer.running_mean, layer.running_var)
    stats = {"batch": batch, "running": running}.get(mode)
    if mode == "mix":
        stats = tuple((4 * r + 4 * b) / 8 for r, b in zip(running, batch, strict=True))
    before = state(layer)
    with torch.no_grad(), stats_mode(layer, mode, prior=4 if mode == "mix" else None):
        out = layer(x)
    expect = torch.relu(normalize(x, *stats, layer))
    torch.testing.assert_close(out, expect, rtol=1e-4, atol=1e-4)
    assert (out >= 0).all() and (out == 0).any()
    assert_same_state(before, layer)


# ------------------------------------------------------------------------------------------
# recompute_stats


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
        assert int(layer.num_batches_tracked) == 3
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
    for batches, opts, used, count in cases:
        layer = nn.BatchNorm1d(3, dtype=torch.float64)
        recompute_stats(nn.Sequential(layer), batches, **opts)
        mean, var = population([used])
        torch.testing.assert_close(layer.running_mean, mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.running_var, var, rtol=1e-5, atol=1e-6)
        assert layer.running_var.dtype == torch.float64 and int(layer.num_batches_tracked) == count


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


def test_timm_batchnorm_act_drop_still_runs_in_training():
    layer = BatchNormAct2d(3, act_layer=nn.ReLU, drop_layer=partial(nn.Dropout, 0.5)).train()
    x = torch.randn(8, 3, 4, 4)
    with torch.no_grad(), stats_mode(layer, "running"):
        out = layer(x)
    kept = torch.relu(normalize(x, layer.running_mean, layer.running_var, layer)) * 2
    dropped = (out == 0) & (kept > 0)
    assert dropped.any() and layer.drop.training
    torch.testing.assert_close(out[~dropped], kept[~dropped])
