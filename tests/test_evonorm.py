"""EvoNorm-B0 and -S0 against timm's EvoNorm2dB0 / EvoNorm2dS0 and the paper's equations."""

import copy

import pytest
import torch
from timm.layers import EvoNorm2dB0, EvoNorm2dS0
from torch.nn.modules.batchnorm import _BatchNorm

import normzoo

C = 8


def randomize(*modules):
    g = torch.Generator().manual_seed(5)
    values = {
        "weight": torch.rand(C, generator=g) + 0.5,
        "bias": torch.randn(C, generator=g),
        "v": torch.randn(C, generator=g),
    }
    for m in modules:
        with torch.no_grad():
            for name, value in values.items():
                getattr(m, name).copy_(value)


def step(ours, ref, x, atol=1e-6):
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), ref(xb)
    torch.testing.assert_close(ya, yb, atol=atol, rtol=1e-5)
    g = torch.randn_like(ya)
    ya.backward(g), yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-5, rtol=1e-4)
    for (name, pa), pb in zip(ours.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-5, rtol=1e-4, msg=name)


def b0_paper(x, running_var, weight, bias, v, eps, training):
    """EvoNorm-B0 (Liu et al. 2020, Table 1) in float64 with the running-variance EMA."""
    x = x.double()
    shape = (1, -1, 1, 1)
    if training:
        var = x.var(dim=(0, 2, 3), unbiased=False)
    else:
        var = running_var.double()
    s2_i = x.var(dim=(2, 3), unbiased=False, keepdim=True)
    denom = torch.max(
        torch.sqrt(var.view(shape) + eps), v.double().view(shape) * x + torch.sqrt(s2_i + eps)
    )
    return x / denom * weight.double().view(shape) + bias.double().view(shape)


@pytest.mark.parametrize("eps", [1e-3, 1e-5])
def test_b0_matches_timm_train_eval_and_running_var(eps):
    ours = normzoo.create("evonorm_b0", C, eps=eps, momentum=0.2)
    ref = EvoNorm2dB0(C, eps=eps, momentum=0.2)
    randomize(ours, ref)
    for i in range(3):
        step(ours, ref, torch.randn(5, C, 4, 3) * 2 + i)
        torch.testing.assert_close(ours.running_var, ref.running_var)
    ours.eval(), ref.eval()
    step(ours, ref, torch.randn(3, C, 4, 3) + 1)
    torch.testing.assert_close(ours.running_var, ref.running_var)


def test_b0_matches_the_paper_equation():
    layer = normzoo.create("evonorm_b0", C, dtype=torch.float64)
    randomize(layer)
    x = torch.randn(4, C, 5, 5, dtype=torch.float64) * 3
    expected = b0_paper(x, None, layer.weight, layer.bias, layer.v, 1e-3, True)
    torch.testing.assert_close(layer(x), expected)
    n = 4 * 25
    expected_var = 0.9 + 0.1 * x.var(dim=(0, 2, 3), unbiased=False) * n / (n - 1)
    torch.testing.assert_close(layer.running_var, expected_var)
    layer.eval()
    expected = b0_paper(x, layer.running_var, layer.weight, layer.bias, layer.v, 1e-3, False)
    torch.testing.assert_close(layer(x), expected)


def test_b0_state_dict_loads_both_ways_with_timm():
    ref = EvoNorm2dB0(C)
    randomize(ref)
    ref(torch.randn(4, C, 3, 3) * 2)  # running_var away from its init
    ours = normzoo.create("evonorm_b0", C)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    ours.load_state_dict(ref.state_dict())
    back = EvoNorm2dB0(C)
    back.load_state_dict(copy.deepcopy(ours.state_dict()))
    ours.eval(), ref.eval(), back.eval()
    x = torch.randn(2, C, 3, 3)
    torch.testing.assert_close(ours(x), ref(x))
    torch.testing.assert_close(back(x), ref(x))


def test_b0_is_a_batch_layer_with_torch_options():
    layer = normzoo.create("evonorm_b0", C, momentum=None)
    assert isinstance(layer, _BatchNorm) and normzoo.is_batch_dependent("evonorm_b0")
    xs = [torch.randn(4, C, 3, 3) * (i + 1) for i in range(3)]
    for x in xs:
        layer(x)
    n = 4 * 9
    expected = torch.stack([x.var(dim=(0, 2, 3), unbiased=False) * n / (n - 1) for x in xs])
    torch.testing.assert_close(layer.running_var, expected.mean(0))  # cumulative average
    free = normzoo.create("evonorm_b0", C, track_running_stats=False).eval()
    assert free.running_var is None
    x = torch.randn(4, C, 3, 3)
    torch.testing.assert_close(
        free(x), b0_paper(x, None, free.weight, free.bias, free.v, 1e-3, True).float()
    )
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        normzoo.create("evonorm_b0", C)(torch.randn(1, C))


def test_b0_eval_does_not_touch_buffers():
    layer = normzoo.create("evonorm_b0", C).eval()
    before = copy.deepcopy(layer.running_var)
    layer(torch.randn(3, C, 2, 2) + 4)
    assert torch.equal(layer.running_var, before)


@pytest.mark.parametrize("groups", [1, 2, 8])
@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_s0_matches_timm(groups, eps):
    ours = normzoo.create("evonorm_s0", C, groups=groups, eps=eps)
    ref = EvoNorm2dS0(C, groups=groups, eps=eps)
    randomize(ours, ref)
    step(ours, ref, torch.randn(3, C, 5, 4) * 2 + 1)


def test_s0_group_size_state_dict_and_paper():
    ref = EvoNorm2dS0(C, group_size=4)
    randomize(ref)
    ours = normzoo.create("evos0", C, group_size=4)
    assert ours.groups == 2 and ours.state_dict().keys() == ref.state_dict().keys()
    ours.load_state_dict(ref.state_dict())
    back = EvoNorm2dS0(C, group_size=4)
    back.load_state_dict(ours.state_dict())
    x = torch.randn(2, C, 3, 3, dtype=torch.float64)
    # Table 1: x * sigmoid(v x) / sqrt(group var + eps) * gamma + beta, written out
    xg = x.view(2, 2, 4, 3, 3)
    std = (xg.var(dim=(2, 3, 4), unbiased=False, keepdim=True) + 1e-5).sqrt().expand_as(xg)
    v, w, b = (
        ref.v.double().view(1, -1, 1, 1),
        ref.weight.double().view(1, -1, 1, 1),
        ref.bias.double().view(1, -1, 1, 1),
    )
    expected = x * torch.sigmoid(v * x) / std.reshape(x.shape) * w + b
    torch.testing.assert_close(ours.double()(x), expected)
    torch.testing.assert_close(back(x.float()), ours.float()(x.float()))


def test_s0_rejects_groups_not_dividing():
    with pytest.raises(
        ValueError, match=r"^evonorm_s0: groups=3 does not divide num_features=8.*\[1, 2, 4, 8\]"
    ):
        normzoo.create("evonorm_s0", C, groups=3)


@pytest.mark.parametrize(("name", "layer"), [("evonorm_s0", "evonorm_s0"), ("group", "group norm")])
@pytest.mark.parametrize(
    ("opts", "problem"),
    [
        ({"groups": 7}, "groups=7 does not divide num_features=30"),
        ({"group_size": 7}, "group_size=7 must divide num_features=30"),
        ({"groups": 3, "group_size": 10}, "pass either groups=3 or group_size=10"),
    ],
)
def test_group_errors_name_the_layer_being_built(name, layer, opts, problem):
    with pytest.raises(ValueError, match=rf"^{layer}: {problem}"):
        normzoo.create(name, 30, **opts)


@pytest.mark.parametrize("name", ["evonorm_b0", "evonorm_s0"])
@pytest.mark.parametrize("shape", [(4, C), (3, C, 6), (2, C, 3, 2, 2)])
def test_any_rank(name, shape):
    layer = normzoo.create(name, C, **({"groups": 4} if name == "evonorm_s0" else {}))
    x = torch.randn(shape)
    y = layer(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    if len(shape) > 2:  # a 3-d/5-d input equals its 4-d fold (same statistics)
        folded = x.reshape(shape[0], C, -1, 1)
        layer2 = copy.deepcopy(layer)
        layer2.load_state_dict(layer.state_dict())
        torch.testing.assert_close(layer.eval()(x).reshape(folded.shape), layer2.eval()(folded))


# test-time statistics through the public API: B0's batch statistic is its variance


def b0_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, C, 3, padding=1),
        normzoo.create("evonorm_b0", C),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(C, 3),
    )
    randomize(model[1])
    model.train()
    with torch.no_grad():
        for i in range(4):
            model(torch.randn(8, 3, 6, 6) + i)
    return model.eval()


def test_b0_stats_modes():
    model = b0_model()
    layer = model[1]
    before = copy.deepcopy(layer.state_dict())
    x = torch.randn(5, 3, 6, 6) * 2
    h = model[0](x).detach()
    args = (layer.weight, layer.bias, layer.v, layer.eps)
    with torch.no_grad(), normzoo.stats_mode(model, "batch"):
        expected = b0_paper(h, None, *args[:3], args[3], training=True)
        torch.testing.assert_close(layer(h).double(), expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad(), normzoo.stats_mode(model, "running"):
        expected = b0_paper(h, layer.running_var, *args[:3], args[3], training=False)
        torch.testing.assert_close(layer(h).double(), expected, atol=1e-5, rtol=1e-5)
    prior, n = 4.0, h.shape[0]
    var = (prior * layer.running_var + n * h.var((0, 2, 3), unbiased=False)) / (prior + n)
    with torch.no_grad(), normzoo.stats_mode(model, "mix", prior=prior):
        expected = b0_paper(h, var, *args[:3], args[3], training=False)
        torch.testing.assert_close(layer(h).double(), expected, atol=1e-5, rtol=1e-5)
    for key, value in layer.state_dict().items():
        assert torch.equal(value, before[key]), key
    with torch.no_grad(), normzoo.stats_mode(model, "online", momentum=0.5):
        model(x)
        inside = layer.running_var.clone()
    nh = h.numel() // C
    expected_var = 0.5 * before["running_var"] + 0.5 * h.var((0, 2, 3), unbiased=False) * nh / (
        nh - 1
    )
    torch.testing.assert_close(inside, expected_var, atol=1e-5, rtol=1e-5)
    assert torch.equal(layer.running_var, before["running_var"])  # restored on exit


def test_b0_recompute_stats_adabn_and_tent():
    model = b0_model()
    batches = [torch.randn(6, 3, 6, 6) * 3 - 1 for _ in range(3)]
    normzoo.recompute_stats(model, batches)
    h = torch.cat([model[0](b) for b in batches]).detach()
    torch.testing.assert_close(model[1].running_var, h.var((0, 2, 3)), atol=1e-5, rtol=1e-5)
    adapted = normzoo.adapt(b0_model(), batches, method="adabn")
    torch.testing.assert_close(adapted[1].running_var, h.var((0, 2, 3)), atol=1e-5, rtol=1e-5)
    tented = normzoo.adapt(model, batches, method="tent", lr=0.1)
    assert not torch.equal(tented[1].weight, model[1].weight)
    assert tented[1].running_var is None  # TENT normalizes with test-batch statistics


def test_batch_independent_new_layers_have_no_batch_statistics():
    model = torch.nn.Sequential(normzoo.create("evonorm_s0", C, groups=2), normzoo.create("frn", C))
    with pytest.raises(ValueError, match="no batch layers"):
        normzoo.recompute_stats(model, [torch.randn(2, C, 3, 3)])
    x = torch.randn(2, C, 3, 3)
    with normzoo.stats_mode(model, "batch"):  # a no-op for batch-independent norms
        torch.testing.assert_close(model(x), model.eval()(x))


def test_sync_batch_stats_syncs_evonorm_b0_and_keeps_ghost_batch():
    from normzoo.distributed import SyncEvoNormB0, sync_batch_stats
    from normzoo.layers import GhostBatchNorm

    model = torch.nn.Sequential(normzoo.create("evonorm_b0", C), normzoo.create("ghost_batch", C))
    sync_batch_stats(model)
    assert type(model[0]) is SyncEvoNormB0 and type(model[1]) is GhostBatchNorm
