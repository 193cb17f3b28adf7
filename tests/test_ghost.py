"""Ghost batch norm against nn.BatchNorm run on each chunk of the batch separately."""

import copy

import pytest
import torch
from torch import nn

import normzoo

C = 4


def bn_for(rank, **opts):
    cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[rank]
    return cls(C, **opts)


def randomize(*modules):
    g = torch.Generator().manual_seed(2)
    w, b = torch.rand(C, generator=g) + 0.5, torch.randn(C, generator=g)
    for m in modules:
        with torch.no_grad():
            m.weight.copy_(w)
            m.bias.copy_(b)


CASES = [  # (batch, virtual batch size, rank)
    (12, 4, 4),
    (12, 5, 4),  # remainder chunk of 2
    (8, 3, 2),  # (N, C) input, remainder 2
    (6, 2, 3),
    (4, 8, 5),  # one chunk: plain batch norm
]


@pytest.mark.parametrize("n,vbs,rank", CASES)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_equals_batch_norm_on_each_chunk(n, vbs, rank, momentum):
    ours = normzoo.create("ghost_batch", C, virtual_batch_size=vbs, momentum=momentum)
    ref = bn_for(rank, momentum=momentum)
    randomize(ours, ref)
    for i in range(3):
        x = torch.randn((n, C, 3, 2, 2)[:rank]) * 2 + i
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya = ours(xa)
        yb = torch.cat([ref(chunk) for chunk in xb.split(vbs)])
        torch.testing.assert_close(ya, yb)
        g = torch.randn_like(ya)
        ya.backward(g), yb.backward(g)
        torch.testing.assert_close(xa.grad, xb.grad)
        torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
        torch.testing.assert_close(ours.bias.grad, ref.bias.grad)
        for key, value in ref.state_dict().items():
            torch.testing.assert_close(ours.state_dict()[key], value, msg=key)
    assert int(ours.num_batches_tracked) == 3 * len(x.split(vbs))  # one update per chunk
    ours.eval(), ref.eval()
    x = torch.randn((n, C, 3, 2, 2)[:rank])
    torch.testing.assert_close(ours(x), ref(x))  # eval: running statistics, no chunks


def test_without_running_stats_eval_uses_the_whole_batch():
    ours = normzoo.create("gbn", C, virtual_batch_size=2, track_running_stats=False)
    ref = nn.BatchNorm2d(C, track_running_stats=False)
    x = torch.randn(6, C, 3, 3)
    torch.testing.assert_close(ours(x), torch.cat([ref(c) for c in x.split(2)]))
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x), ref(x))


def test_state_dict_is_batch_norms():
    ref = nn.BatchNorm2d(C)
    ref(torch.randn(4, C, 2, 2) + 3)
    ours = normzoo.create("ghost", C, virtual_batch_size=2)
    ours.load_state_dict(ref.state_dict())
    back = nn.BatchNorm2d(C)
    back.load_state_dict(copy.deepcopy(ours.state_dict()))
    x = torch.randn(3, C, 2, 2)
    ref.eval(), ours.eval(), back.eval()
    torch.testing.assert_close(ours(x), ref(x))
    torch.testing.assert_close(back(x), ref(x))


def test_bad_options_and_last_chunk_of_one():
    with pytest.raises(ValueError, match="virtual_batch_size=0 must be a positive int"):
        normzoo.create("ghost_batch", C, virtual_batch_size=0)
    layer = normzoo.create("ghost_batch", C, virtual_batch_size=4)
    with pytest.raises(ValueError, match="last chunk of 1 sample.*multiple of virtual_batch_size"):
        layer(torch.randn(5, C))
    layer(torch.randn(5, C, 2))  # spatial positions give the last chunk a variance
    assert normzoo.is_batch_dependent("ghost_batch")


# test-time statistics through the public API


def small_model(norm, **opts):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, C, 3, padding=1),
        normzoo.create(norm, C, **opts),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(C, 3),
    )


def trained(model, steps=5):
    model.train()
    with torch.no_grad():
        for i in range(steps):
            model(torch.randn(8, 3, 6, 6) + i * 0.1)
    return model.eval()


def test_stats_modes_on_ghost_batch_norm():
    model = trained(small_model("ghost_batch", virtual_batch_size=4))
    layer = model[1]
    before = copy.deepcopy(layer.state_dict())
    x = torch.randn(6, 3, 6, 6) + 1
    h = model[0](x).detach()
    bn = nn.BatchNorm2d(C, track_running_stats=False).eval()
    bn.load_state_dict({k: v for k, v in layer.state_dict().items() if k in ("weight", "bias")})
    with normzoo.stats_mode(model, "batch"):
        torch.testing.assert_close(layer(h), bn(h))  # the whole test batch, not chunks
    with normzoo.stats_mode(model, "running"):
        torch.testing.assert_close(layer(h), layer.eval()(h))
    prior, n = 16.0, h.shape[0]
    mean_b, var_b = h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=False)
    mean = (prior * layer.running_mean + n * mean_b) / (prior + n)
    var = (prior * layer.running_var + n * var_b) / (prior + n)
    expected = nn.functional.batch_norm(h, mean, var, layer.weight, layer.bias, False, 0, layer.eps)
    with normzoo.stats_mode(model, "mix", prior=prior):
        torch.testing.assert_close(layer(h), expected, atol=1e-5, rtol=1e-5)
    for key, value in layer.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_recompute_stats_and_adabn_on_ghost_batch_norm():
    model = trained(small_model("ghost_batch", virtual_batch_size=4))
    batches = [torch.randn(6, 3, 6, 6) * 2 + 1 for _ in range(3)]
    normzoo.recompute_stats(model, batches)
    h = torch.cat([model[0](b) for b in batches]).detach()
    torch.testing.assert_close(model[1].running_mean, h.mean((0, 2, 3)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model[1].running_var, h.var((0, 2, 3)), atol=1e-5, rtol=1e-5)
    adapted = normzoo.adapt(trained(small_model("ghost_batch", virtual_batch_size=4)), batches)
    torch.testing.assert_close(adapted[1].running_var, h.var((0, 2, 3)), atol=1e-5, rtol=1e-5)
    tented = normzoo.adapt(model, batches, method="tent", lr=0.1)
    assert not torch.equal(tented[1].weight, model[1].weight)
