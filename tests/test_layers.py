"""Every zoo layer against its torch reference: forward, gradients, buffers, eval."""

import copy

import pytest
import torch
from torch import nn

import normzoo

C = 8
RANKS = [2, 3, 4, 5]
# references that are not torch modules (timm's layers, the papers' equations): own test files
OWN_TESTS = {"none", "filter_response", "evonorm_b0", "evonorm_s0", "rms"}  # test_frn.py, ...


def shape_for(rank: int, n: int = 6) -> tuple[int, ...]:
    return (n, C, 5, 4, 3)[:rank]


def reference(name: str, rank: int, **opts) -> nn.Module:
    """The independent torch module that defines each zoo layer's semantics."""
    eps = opts.get("eps", 1e-5)
    affine = opts.get("affine", True)
    if name in ("batch", "batch_renorm", "ghost_batch"):  # ghost: one chunk at these batch sizes
        cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[rank]
        return cls(
            C,
            eps=eps,
            momentum=opts.get("momentum", 0.1),
            affine=affine,
            track_running_stats=opts.get("track_running_stats", True),
        )
    groups = {"layer": 1, "instance": C, "group": opts.get("groups", 4)}[name]
    return nn.GroupNorm(groups, C, eps=eps, affine=affine)


def zoo(name: str, **opts) -> nn.Module:
    if name == "group":
        opts.setdefault("groups", 4)
    if name == "batch_renorm":
        # r = 1, d = 0 for the steps these tests take, and batch norm's update of the running
        # statistics (not the paper's, tested in test_renorm.py): must then equal batch norm exactly
        opts.setdefault("warmup", 100)
        opts.setdefault("sigma_update", "variance_ema")
    return normzoo.create(name, C, **opts)


def ranks_for(name: str) -> list[int]:
    return [r for r in RANKS if not (name == "instance" and r < 3)]


def cases():
    for name in normzoo.available():
        if name in OWN_TESTS:
            continue
        for rank in ranks_for(name):
            yield pytest.param(name, rank, id=f"{name}-rank{rank}")


def randomize_affine(*modules: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    w, b = torch.rand(C, generator=g) + 0.5, torch.randn(C, generator=g)
    for m in modules:
        with torch.no_grad():
            if getattr(m, "weight", None) is not None:
                m.weight.copy_(w)
                m.bias.copy_(b)


def assert_same_state(a: nn.Module, b: nn.Module, atol=1e-6) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        torch.testing.assert_close(sa[k].double(), sb[k].double(), atol=atol, rtol=1e-5, msg=k)


OPTIONS = {
    "default": {},
    "cumulative": {"momentum": None},
    "no-affine": {"affine": False},
    "no-running": {"track_running_stats": False},
    "eps": {"eps": 1e-3},
}


def option_cases():
    for case in cases():
        name, rank = case.values
        for label, opts in OPTIONS.items():
            if not normzoo.is_batch_dependent(name) and {"momentum", "track_running_stats"} & set(
                opts
            ):
                continue  # batch-independent norms take no running-statistics options
            yield pytest.param(name, rank, opts, id=f"{name}-rank{rank}-{label}")


@pytest.mark.parametrize("name,rank,opts", option_cases())
def test_matches_torch_train_and_eval(name, rank, opts):
    ours, ref = zoo(name, **opts), reference(name, rank, **opts)
    randomize_affine(ours, ref)
    for step in range(3):
        x = torch.randn(shape_for(rank)) * 3 + step
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa), ref(xb)
        torch.testing.assert_close(ya, yb, atol=1e-5, rtol=1e-5)
        grad = torch.randn_like(ya)
        ya.backward(grad)
        yb.backward(grad)
        torch.testing.assert_close(xa.grad, xb.grad, atol=1e-5, rtol=1e-4)
        for pa, pb in zip(ours.parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(pa.grad, pb.grad, atol=1e-5, rtol=1e-4)
        assert_same_state(ours, ref)
    ours.eval(), ref.eval()
    x = torch.randn(shape_for(rank)) * 2 - 1
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
    assert_same_state(ours, ref)


@pytest.mark.parametrize("name,rank", cases())
def test_state_dict_loads_both_ways(name, rank):
    ours, ref = zoo(name), reference(name, rank)
    ref.train()
    for _ in range(2):
        ref(torch.randn(shape_for(rank)) + 2)
    randomize_affine(ref)
    ours.load_state_dict(ref.state_dict())
    back = copy.deepcopy(reference(name, rank))
    back.load_state_dict(ours.state_dict())
    ours.eval(), ref.eval(), back.eval()
    x = torch.randn(shape_for(rank))
    torch.testing.assert_close(ours(x), ref(x))
    torch.testing.assert_close(back(x), ref(x))


@pytest.mark.parametrize("name", [n for n in normzoo.available() if n not in OWN_TESTS])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dtypes(name, dtype):
    ours = zoo(name, dtype=dtype)
    ref = reference(name, 4).to(dtype)
    x = torch.randn(4, C, 6, 6, dtype=dtype) * 2 + 1
    ya, yb = ours(x), ref(x)
    assert ya.dtype == dtype
    tol = 1e-10 if dtype == torch.float64 else 3e-2
    torch.testing.assert_close(ya, yb, atol=tol, rtol=tol)
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x), ref(x), atol=tol, rtol=tol)


@pytest.mark.parametrize("name", [n for n in normzoo.available() if n not in OWN_TESTS])
def test_channels_last(name):
    ours, ref = zoo(name), reference(name, 4)
    x = torch.randn(4, C, 6, 5).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ours(x), ref(x.contiguous()), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", [n for n in normzoo.available() if n not in OWN_TESTS])
def test_large_offset(name):
    """Inputs around 1e4 with unit spread: float64 reference, no catastrophic cancellation."""
    ours = zoo(name, dtype=torch.float64)
    ref = reference(name, 4).double()
    x = torch.randn(8, C, 5, 5, dtype=torch.float64) + 1e4
    torch.testing.assert_close(ours(x), ref(x), atol=1e-8, rtol=1e-8)
    ours32 = zoo(name)
    y32 = ours32(x.float())
    assert torch.isfinite(y32).all()
    torch.testing.assert_close(y32.double(), ref(x), atol=2e-2, rtol=0)


def test_none_is_identity():
    layer = normzoo.create("none", C)
    x = torch.randn(3, C, 4)
    assert layer(x) is x
    assert list(layer.parameters()) == [] and list(layer.buffers()) == []


def test_eval_does_not_touch_buffers():
    for name in ("batch", "batch_renorm", "ghost_batch", "evonorm_b0"):
        layer = zoo(name).eval()
        before = copy.deepcopy(layer.state_dict())
        layer(torch.randn(4, C, 3, 3) + 5)
        for k, v in layer.state_dict().items():
            assert torch.equal(v, before[k]), (name, k)


def test_batch_is_a_torch_batchnorm():
    """Tools that look for batch norm layers (timm, stats_mode, SyncBN conversion) find ours."""
    from torch.nn.modules.batchnorm import _BatchNorm

    assert isinstance(normzoo.create("batch", C), _BatchNorm)
    assert isinstance(normzoo.create("batch_renorm", C), _BatchNorm)
    assert isinstance(normzoo.create("ghost_batch", C), _BatchNorm)
    assert isinstance(normzoo.create("evonorm_b0", C), _BatchNorm)
    assert isinstance(normzoo.create("group", C, groups=2), nn.GroupNorm)


def test_device_argument_and_meta():
    layer = normzoo.create("batch", C, device="meta")
    assert layer.weight.device.type == "meta"
    layer = normzoo.create("group", C, groups=2, device="cpu", dtype=torch.float64)
    assert layer.weight.dtype == torch.float64


# every zoo layer's forward compiles without graph breaks (batch_renorm's docstrings claim it:
# the schedule is tensor math), so fullgraph=True, where a graph break raises
@pytest.mark.parametrize("name", ["batch", "batch_renorm", "group", "layer", "instance"])
def test_torch_compile(name):
    torch._dynamo.reset()
    renorm = {"warmup": 2, "r_ramp": 2, "d_ramp": 3, "sigma_update": "paper"}
    eager = zoo(name, **(renorm if name == "batch_renorm" else {}))
    compiled_layer = copy.deepcopy(eager)
    compiled = torch.compile(compiled_layer, backend="eager", fullgraph=True)
    for _ in range(5):
        x = torch.randn(4, C, 5, 5)
        torch.testing.assert_close(compiled(x), eager(x), atol=1e-5, rtol=1e-5)
    assert_same_state(compiled_layer, eager)
